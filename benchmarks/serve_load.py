"""Bounded load test of ``defectlite serve`` on loopback: throughput, latency, errors, memory, vs batched ONNX Runtime.

Starts ``defectlite serve MODEL`` (one worker per core, 127.0.0.1 only) as a subprocess, warms it up, then for
1, 8 and 32 concurrent clients sends a fixed number of ``POST /v1/predict`` requests (one real image
each, keep-alive connections) and stops. Reports per level: throughput (requests/s = images/s),
p50 / p99 latency in ms (client side, request sent -> response read), errors (non-200 or transport
errors), lost responses (sent but never answered, or answered for another image), and the mean
ONNX Runtime batch size (from the ``batch_size`` each answer carries: with one image per request, a
call of b images answers b requests, so calls = sum of 1/b over answers; ``/v1/stats`` would only
describe whichever worker process answers it). Also reports the server's resident memory (VmRSS from
``/proc/<pid>/status``) after the first 100 and after 2,000 requests of the 32-client level. The
32-client level runs in ``--rounds`` rounds, each between two timings of the ONNX Runtime batch-64
throughput of the same model on all cores (as the run report measures it; the higher of the two is
the round's reference, since a shared machine's speed drifts); the ratio of the 32-client throughput
to it is the median over rounds. Also ONNX Runtime images/s at batch 1, 8, 16 and 64 with
one worker's threads (what bounds a worker, and the evidence for the server's ``--max-batch``).

``--mixed`` runs another experiment (written to ``serve_load_mixed.json`` / ``.md``): in each of
``--rounds`` rounds, ``--clients`` well-behaved clients send ``--requests`` requests (in all) once alone
and once while ``--slow-clients`` slow clients (half trickle a request head, half a body, one byte
every 0.2 s, reconnecting when closed) and one client sending costly uploads (a PNG whose header
announces 40,000 x 40,000 pixels, and 32 PNGs of 6,000 x 6,000 pixels in one request) run; the
server gets short ``--header-timeout`` / ``--body-timeout`` so that every slow connection is closed
within the run. It reports the good clients' errors, lost answers and p50 / p99 latency both ways,
how long each slow connection stayed open against its timeout, the answers to the costly uploads,
and the server's RSS before and after.

The clients speak plain HTTP/1.1 over asyncio streams (a few lines, like wrk) instead of a full client
library, so that the load generator takes as little of the shared CPU as possible.

Writes ``<out>/serve_load.json`` and ``<out>/serve_load.md``.

Usage::

    python benchmarks/serve_load.py runs/RUN/model.onnx                     # 2,000 requests per level
    python benchmarks/serve_load.py runs/RUN/model.onnx --requests 200      # smoke
    python benchmarks/serve_load.py runs/RUN/model.onnx --mixed              # good clients among slow and costly ones
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from defectlite.cpus import available_cpus
from defectlite.data.locate import default_data_root
from defectlite.data.readers import is_image
from defectlite.deploy.predictor import resolve_model_path
from defectlite.evaluate.profile import machine, ort_timing
from defectlite.onnx_file import read_metadata
from defectlite.utils import atomic_write_json, atomic_write_text

HOST = "127.0.0.1"  # loopback only, by design
LEVELS = (1, 8, 32)
SWEEP = (1, 8, 16, 64)  # batch sizes of the ONNX Runtime sweep
RSS_EARLY = 100  # requests of the 32-client level after which memory is read first
SLOW_GAP_S = 0.2  # a slow client sends one byte this often (below any idle timeout: the total deadline applies)
CLOSE_SLACK_S = 1.0  # a slow connection counts as closed in time within its timeout + this (a loaded machine)
BOMB_SIDE, MANY_SIDE, MANY_COUNT = 40_000, 6_000, 32  # costly uploads: 1.6 G pixels by header; 32 x 36 M pixels


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident memory in kB (VmRSS of /proc/<pid>/status) of a process and all its descendants
    (uvicorn's worker processes, with --workers > 1)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split() if (task / "children").is_file() else []
        total += sum(rss_kb(int(c)) for c in children)
    return total


def multipart_request(path: str, name: str, data: bytes) -> bytes:
    """A complete HTTP/1.1 POST with one image in multipart field ``files``."""
    return multipart_files(path, [(name, data)])


def multipart_files(path: str, files: list[tuple[str, bytes]]) -> bytes:
    """A complete HTTP/1.1 POST with images (name, bytes) in multipart field ``files``."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (v for k, _, v in (h.partition(":") for h in lines[1:]) if k.strip().lower() == "content-length"), None
    )
    if length is None:
        raise ValueError("response without Content-Length")
    return status, await reader.readexactly(int(length))


async def run_level(port: int, requests: list[tuple[str, bytes]], clients: int, n: int, on_done=None) -> dict:
    """Send ``n`` requests from ``clients`` keep-alive connections; latency in ms per answered request."""
    latencies, counters = [], {"sent": 0, "ok": 0, "errors": 0, "mismatched": 0, "done": 0, "calls": 0.0}

    async def client() -> None:
        reader = writer = None
        while counters["sent"] < n:
            i = counters["sent"]
            counters["sent"] += 1
            name, raw = requests[i % len(requests)]
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(raw)
                await writer.drain()
                status, body = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counters["errors"] += 1  # and no answer: counted as lost below
                writer = None
                continue
            latencies.append((time.perf_counter() - t0) * 1e3)
            counters["done"] += 1
            result = json.loads(body)["results"][0] if status == 200 else None
            if result is None:
                counters["errors"] += 1
            elif result["file"] != name:
                counters["mismatched"] += 1  # an answer, but not to this request: lost
            else:
                counters["ok"] += 1
                counters["calls"] += 1 / result["batch_size"]
            if on_done is not None:
                on_done(counters["done"])
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "clients": clients,
        "requests": n,
        "answered": counters["done"],
        "ok": counters["ok"],
        "errors": counters["errors"],
        "lost": (n - counters["done"]) + counters["mismatched"],
        "wall_s": round(wall, 3),
        "throughput_per_s": round(counters["ok"] / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "mean_batch": round(counters["ok"] / counters["calls"], 2) if counters["calls"] else 0.0,
    }


def get_json(port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as r:  # noqa: S310 (loopback)
        return json.loads(r.read())


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if get_json(port, "/healthz").get("status") == "ok":
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start (exit code {proc.poll()})")
        time.sleep(0.25)


def load_images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    files = sorted(f for f in folder.rglob("*") if is_image(f))[:count]
    if not files:
        raise SystemExit(f"no images in {folder}")
    return [(f.name, f.read_bytes()) for f in files]


def png_bomb(side: int) -> bytes:
    """A PNG whose header announces side x side grey pixels, with almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def costly_uploads() -> dict[str, bytes]:
    """The costly requests of the mixed run: name -> complete HTTP request."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (MANY_SIDE, MANY_SIDE)).save(buf, format="PNG")  # ~35 kB each: zeros compress well
    many = [(f"many{i}.png", buf.getvalue()) for i in range(MANY_COUNT)]
    return {
        "bomb": multipart_request("/v1/predict", "bomb.png", png_bomb(BOMB_SIDE)),
        f"{MANY_COUNT}x{MANY_SIDE * MANY_SIDE // 10**6}MP": multipart_files("/v1/predict", many),
    }


async def slow_connection(port: int, kind: str, give_up_s: float) -> dict:
    """One connection that trickles a request head (``kind`` "head") or body ("body"), one byte every
    ``SLOW_GAP_S``, until the server closes it (or ``give_up_s``); how long it stayed open and the answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    t0 = time.perf_counter()
    closed_at: list[float] = []
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    writer.write(head.encode() + (b"Content-Length: 1000000\r\n\r\n" if kind == "body" else b"X-Slow: "))
    answer = asyncio.create_task(reader.read())  # everything until the server closes
    answer.add_done_callback(lambda _: closed_at.append(time.perf_counter()))
    while not answer.done() and time.perf_counter() - t0 < give_up_s:
        try:
            writer.write(b"x")
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.wait([answer], timeout=SLOW_GAP_S)
    await asyncio.wait([answer], timeout=1.0)
    raw = answer.result() if answer.done() and answer.exception() is None else b""
    if not answer.done():
        answer.cancel()
    writer.close()
    status = int(raw.split()[1]) if raw.startswith(b"HTTP/") else None
    open_s = (closed_at[0] if closed_at else time.perf_counter()) - t0
    return {"kind": kind, "open_s": round(open_s, 3), "closed_by_server": bool(closed_at), "status": status}


async def slow_client(port: int, kind: str, timeout_s: float, stop: asyncio.Event) -> list[dict]:
    """Slow connections one after another until ``stop``; the last one is let run to its end."""
    out = []
    while not stop.is_set():
        out.append(await slow_connection(port, kind, give_up_s=timeout_s + 5 * CLOSE_SLACK_S))
    return out


async def costly_client(port: int, uploads: dict[str, bytes], stop: asyncio.Event) -> dict[str, dict[str, int]]:
    """Send the costly uploads in turn on one keep-alive connection until ``stop``; answers per upload."""
    counts: dict[str, dict[str, int]] = {name: {} for name in uploads}
    reader = writer = None
    while not stop.is_set():
        for name, raw in uploads.items():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(raw)
                await writer.drain()
                status = str((await read_response(reader))[0])
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                status, writer = type(e).__name__, None
            counts[name][status] = counts[name].get(status, 0) + 1
    if writer is not None:
        writer.close()
    return counts


async def run_mixed(port: int, requests: list, clients: int, n: int, slow: int, timeouts: dict, uploads: dict) -> dict:
    """The good clients' level (:func:`run_level`) while slow clients and a costly client run."""
    stop = asyncio.Event()
    kinds = [("head", timeouts["header_timeout_s"]), ("body", timeouts["body_timeout_s"])]
    attackers = [asyncio.create_task(slow_client(port, *kinds[i % 2], stop)) for i in range(slow)]
    costly = asyncio.create_task(costly_client(port, uploads, stop))
    await asyncio.sleep(SLOW_GAP_S * 2)  # the attackers are connected before the first good request
    good = await run_level(port, requests, clients, n)
    stop.set()
    connections = [c for cs in await asyncio.gather(*attackers) for c in cs]
    limit = {k: t + CLOSE_SLACK_S for k, t in kinds}
    late = [c for c in connections if not c["closed_by_server"] or c["open_s"] > limit[c["kind"]]]
    by_kind = {k: [c["open_s"] for c in connections if c["kind"] == k] for k, _ in kinds}
    return {
        **good,
        "slow_connections": len(connections),
        "slow_closed_in_time": len(connections) - len(late),
        "slow_open_s_max": {k: max(v, default=0.0) for k, v in by_kind.items()},
        "slow_statuses": sorted({str(c["status"]) for c in connections}),
        "costly_answers": await costly,
    }


@contextmanager
def serving(model: Path, args: argparse.Namespace, log_path: Path, extra: list[str] = ()):
    """``defectlite serve MODEL`` on a free loopback port as a subprocess; yields (port, process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "defectlite.cli.main", "-q", "serve", str(model), "--host", HOST, "--port", str(port)]
    cmd += ["--workers", str(args.workers), "--log-level", "warning", *extra]
    for opt in ("max_batch", "max_wait_ms", "threads"):
        if getattr(args, opt) is not None:
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, proc)
            yield port, proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="model.onnx (or its run folder) to serve")
    ap.add_argument("--images", type=Path, help="folder of request images (default: NEU-CLS under the data root)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (default 2000)")
    ap.add_argument("--max-batch", type=int, help="server --max-batch (default: the server's)")
    ap.add_argument("--max-wait-ms", type=float, help="server --max-wait-ms (default: the server's)")
    ap.add_argument("--threads", type=int, default=1, help="server --threads per worker")
    ap.add_argument(
        "--workers",
        type=int,
        default=available_cpus(),
        help="server --workers (processes; default: one per usable CPU, each with 1 ONNX Runtime thread)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the 32-client level, each between two batch-64 timings; the ratio is their median "
        "(--mixed: rounds of good clients alone, then among bad ones)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the result files")
    mixed = ap.add_argument_group("mixed mode")
    mixed.add_argument("--mixed", action="store_true", help="good clients among slow and costly ones (see above)")
    mixed.add_argument("--clients", type=int, default=32, help="well-behaved clients (default 32)")
    mixed.add_argument("--slow-clients", type=int, default=20, help="slow clients (default 20)")
    mixed.add_argument("--header-timeout", type=float, default=2.0, help="server --header-timeout (default 2 s)")
    mixed.add_argument("--body-timeout", type=float, default=4.0, help="server --body-timeout (default 4 s)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.requests < RSS_EARLY:
        raise SystemExit(f"--requests must be at least {RSS_EARLY}")

    model = resolve_model_path(args.model)
    meta = read_metadata(model)
    root = default_data_root()
    folder = args.images or (root / "neu-surface-defect" / "images" if root else None)
    if folder is None or not folder.is_dir():
        raise SystemExit("give --images FOLDER (the NEU-CLS data set was not found under the data root)")
    images = load_images(folder, 64)
    requests = [(name, multipart_request("/v1/predict", name, data)) for name, data in images]
    args.out.mkdir(parents=True, exist_ok=True)
    common = {
        "model": str(model),
        "model_meta": {k: meta.get(k) for k in ("model", "input_size", "channels", "num_params", "defectlite_version")},
        "images": {"folder": str(folder), "count": len(images)},
        "machine": machine(),
    }
    if args.mixed:
        report = {**common, **mixed_experiment(model, args, requests)}
        name, text = "serve_load_mixed", render_mixed(report)
    else:
        report = {**common, **levels_experiment(model, meta, args, requests)}
        name, text = "serve_load", render(report)
    atomic_write_json(args.out / f"{name}.json", report)
    atomic_write_text(args.out / f"{name}.md", text)
    print(text)
    return 0


def mixed_experiment(model: Path, args: argparse.Namespace, requests: list) -> dict:
    """``--rounds`` x (good clients alone, good clients among slow and costly ones) on one server."""
    timeouts = {"header_timeout_s": args.header_timeout, "body_timeout_s": args.body_timeout}
    extra = ["--header-timeout", str(args.header_timeout), "--body-timeout", str(args.body_timeout)]
    uploads = costly_uploads()
    with serving(model, args, args.out / "serve_load_mixed.server.log", extra) as (port, proc):
        info = get_json(port, "/v1/model")
        asyncio.run(run_level(port, requests, 4, 40))  # warm-up, not counted
        rss, rounds = {"before_kb": rss_kb(proc.pid)}, []
        for _ in range(args.rounds):
            alone = asyncio.run(run_level(port, requests, args.clients, args.requests))
            among = asyncio.run(
                run_mixed(port, requests, args.clients, args.requests, args.slow_clients, timeouts, uploads)
            )
            rounds.append({"alone": alone, "mixed": among, "p99_ratio": round(among["p99_ms"] / alone["p99_ms"], 3)})
            print(json.dumps(rounds[-1]), flush=True)
        rss["after_kb"] = rss_kb(proc.pid)
    mixed = [r["mixed"] for r in rounds]
    ratio = float(np.median([r["p99_ratio"] for r in rounds]))
    costly_ok = all(set(c) == {"413"} for r in mixed for c in r["costly_answers"].values())
    return {
        "what": "defectlite serve: well-behaved clients among slow and costly ones (benchmarks/serve_load.py --mixed)",
        "server": {"workers": args.workers, **info["limits"], "ort_threads": info["onnxruntime_threads"]},
        "clients": args.clients,
        "slow_clients": args.slow_clients,
        "requests_per_run": args.requests,
        "costly_uploads": list(uploads),
        "rounds": rounds,
        "p99_ratio_median": ratio,
        "rss": rss,
        "targets": {
            "zero_errors_and_lost_among_bad_clients": all(r["errors"] == 0 and r["lost"] == 0 for r in mixed),
            "p99_among_bad_clients_within_2x": ratio <= 2.0,
            "slow_clients_closed_within_timeout": all(r["slow_closed_in_time"] == r["slow_connections"] for r in mixed),
            "costly_uploads_all_413": costly_ok,
        },
    }


def levels_experiment(model: Path, meta: dict, args: argparse.Namespace, requests: list) -> dict:
    """1, 8 and 32 clients, the top level in rounds between ONNX Runtime batch-64 timings, and the batch sweep."""
    cores = available_cpus()
    h, w = meta["input_size"]
    batch64 = (64, meta["channels"], h, w)
    sweep = {  # the server's view: one worker's ONNX Runtime threads, images/s per batch size
        b: ort_timing(model, (b, meta["channels"], h, w), threads=args.threads, warmup=3, runs=max(10, 256 // b))
        for b in SWEEP
    }
    with serving(model, args, args.out / "serve_load.server.log") as (port, proc):
        info = get_json(port, "/v1/model")
        asyncio.run(run_level(port, requests, 4, 40))  # warm-up, not counted
        levels, rss, rounds = [], {"after_warmup_kb": rss_kb(proc.pid)}, []
        for clients in LEVELS[:-1]:
            levels.append(asyncio.run(run_level(port, requests, clients, args.requests)))
            levels[-1]["rss_after_kb"] = rss_kb(proc.pid)
            print(json.dumps(levels[-1]), flush=True)
        # the top level, in rounds, each between two batch-64 timings (the machine's speed drifts)
        ort_runs = [ort_timing(model, batch64, threads=cores, warmup=3, runs=10)]

        def on_done(done: int) -> None:
            if done == RSS_EARLY and "after_first_100_kb" not in rss:
                rss["after_first_100_kb"] = rss_kb(proc.pid)

        for _ in range(args.rounds):
            res = asyncio.run(run_level(port, requests, LEVELS[-1], args.requests, on_done))
            res["rss_after_kb"] = rss_kb(proc.pid)
            ort_runs.append(ort_timing(model, batch64, threads=cores, warmup=3, runs=10))
            res["ort_batch64_per_s"] = max(ort_runs[-2].images_per_s, ort_runs[-1].images_per_s)
            res["ratio"] = round(res["throughput_per_s"] / res["ort_batch64_per_s"], 3)
            rounds.append(res)
            print(json.dumps(res), flush=True)
        levels.append(rounds[0])
        rss[f"after_{args.requests}_kb"] = rounds[0]["rss_after_kb"]
        rss["after_all_kb"] = rounds[-1]["rss_after_kb"]

    ort = max(ort_runs, key=lambda t: t.images_per_s)
    errors, lost = sum(r["errors"] for r in rounds), sum(r["lost"] for r in rounds)
    growth = rss[f"after_{args.requests}_kb"] / rss["after_first_100_kb"] - 1
    report = {
        "what": "defectlite serve under load on loopback (benchmarks/serve_load.py)",
        "server": {"workers": args.workers, **info["limits"], "ort_threads": info["onnxruntime_threads"]},
        "requests_per_level": args.requests,
        "levels": levels,
        "rss": rss,
        "rss_growth": round(growth, 4),
        "ort_batch64": ort.as_dict(),
        "rounds_at_top_level": rounds,
        "ort_batch64_images_per_s_runs": [t.images_per_s for t in ort_runs],
        "ort_sweep": {"threads": args.threads, "images_per_s": {str(b): t.images_per_s for b, t in sweep.items()}},
        "ratio_32_clients_to_ort_batch64": float(np.median([r["ratio"] for r in rounds])),
    }
    report["targets"] = {
        "zero_errors_and_lost_at_32": errors == 0 and lost == 0,
        "throughput_32_at_least_half_of_ort_batch64": report["ratio_32_clients_to_ort_batch64"] >= 0.5,
        "rss_growth_within_10_percent": abs(growth) <= 0.10,
    }
    return report


def render_mixed(r: dict) -> str:
    m, s = r["model_meta"], r["server"]
    rows = []
    for i, x in enumerate(r["rounds"]):
        a, b = x["alone"], x["mixed"]
        costly = "; ".join(
            f"{k}: {', '.join(f'{n} x {st}' for st, n in v.items())}" for k, v in b["costly_answers"].items()
        )
        rows.append(
            f"| {i + 1} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} "
            f"| {x['p99_ratio']:.2f} | {a['errors']} / {a['lost']} | {b['errors']} / {b['lost']} "
            f"| {b['slow_closed_in_time']} of {b['slow_connections']} | {b['slow_open_s_max']['head']:.2f} "
            f"| {b['slow_open_s_max']['body']:.2f} | {costly} |"
        )
    tick = {True: "yes", False: "**no**"}
    t, rss = r["targets"], r["rss"]
    return "\n".join(
        [
            "# defectlite serve: good clients among slow and costly ones",
            "",
            f"Model `{r['model']}` ({m['model']}, input {m['channels']} x {m['input_size'][0]} x {m['input_size'][1]}, "
            f"{m['num_params']:,} params). Server: {s['workers']} worker(s) on {HOST}, max batch {s['max_batch']}, "
            f"ONNX Runtime threads: {s['ort_threads']}, header timeout {s['header_timeout_s']:g} s, body timeout "
            f"{s['body_timeout_s']:g} s, max {s['max_request_pixels']:,} pixels per request. Per round, "
            f"{r['clients']} keep-alive clients send {r['requests_per_run']} requests (one image each, "
            f"{r['images']['count']} images of {r['images']['folder']}) alone, then again while {r['slow_clients']} "
            f"slow clients (half trickling a head, half a body, one byte every {SLOW_GAP_S:g} s, reconnecting when "
            f"closed) and one client sending costly uploads in turn ({', '.join(r['costly_uploads'])}) run. "
            "Latency measured by the client; a slow connection is closed in time within its timeout + "
            f"{CLOSE_SLACK_S:g} s.",
            "",
            "| round | alone p50 / p99 (ms) | among bad p50 / p99 (ms) | p99 ratio | alone errors / lost "
            "| among bad errors / lost | slow closed in time | longest head (s) | longest body (s) | costly answers |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"p99 among bad clients / p99 alone, median of the rounds: **{r['p99_ratio_median']:.2f}**. Server RSS: "
            f"{rss['before_kb'] / 1024:.1f} MB before the rounds, {rss['after_kb'] / 1024:.1f} MB after.",
            "",
            "| target | met |",
            "|---|---|",
            f"| zero errors and lost answers among bad clients | {tick[t['zero_errors_and_lost_among_bad_clients']]} |",
            f"| p99 among bad clients within 2 x alone | {tick[t['p99_among_bad_clients_within_2x']]} |",
            f"| every slow connection closed within its timeout | {tick[t['slow_clients_closed_within_timeout']]} |",
            f"| every costly upload answered 413 | {tick[t['costly_uploads_all_413']]} |",
            "",
            f"Machine: {r['machine']}.",
            "",
        ]
    )


def render(r: dict) -> str:
    n = r["requests_per_level"]
    rows = [
        f"| {lv['clients']} | {lv['requests']} | {lv['throughput_per_s']:.1f} | {lv['p50_ms']:.2f} "
        f"| {lv['p99_ms']:.2f} | {lv['errors']} | {lv['lost']} | {lv['mean_batch']:.2f} "
        f"| {lv['rss_after_kb'] / 1024:.1f} |"
        for lv in r["levels"]
    ]
    o, rss, m = r["ort_batch64"], r["rss"], r["model_meta"]
    rounds = r["rounds_at_top_level"]
    round_rows = [
        f"| {i + 1} | {x['throughput_per_s']:.1f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['errors']} "
        f"| {x['lost']} | {x['mean_batch']:.2f} | {x['ort_batch64_per_s']:.1f} | {x['ratio']:.2f} |"
        for i, x in enumerate(rounds)
    ]
    tick = {True: "yes", False: "**no**"}
    t = r["targets"]
    return "\n".join(
        [
            "# defectlite serve: load test",
            "",
            f"Model `{r['model']}` ({m['model']}, input {m['channels']} x {m['input_size'][0]} x {m['input_size'][1]}, "
            f"{m['num_params']:,} params). Server: {r['server']['workers']} worker(s) on {HOST}, "
            f"max batch {r['server']['max_batch']}, "
            f"max wait {r['server']['max_wait_ms']} ms, ONNX Runtime threads: {r['server']['ort_threads']}. "
            f"{n} requests per level, one image each, from {r['images']['count']} images of {r['images']['folder']}; "
            "keep-alive HTTP/1.1 clients on loopback; latency measured by the client.",
            "",
            "| clients | requests | throughput (img/s) | p50 (ms) | p99 (ms) | errors | lost | mean ORT batch "
            "| server RSS after (MB) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"The {rounds[0]['clients']}-client level in {len(rounds)} rounds of {n} requests (round 1 is the row "
            "above), each round between two ONNX Runtime batch-64 timings of the same model in this process "
            f"({o['runtime']}, {o['threads']} threads, median of {o['runs']} batches after {o['warmup']} warm-up; "
            "the higher of the two is the round's reference, because this machine's speed drifts by up to 1.5x "
            "within minutes):",
            "",
            "| round | throughput (img/s) | p50 (ms) | p99 (ms) | errors | lost | mean ORT batch "
            "| ORT batch 64 (img/s) | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *round_rows,
            "",
            f"Ratio of {rounds[0]['clients']}-client throughput to ONNX Runtime batch 64, median of the rounds: "
            f"**{r['ratio_32_clients_to_ort_batch64']:.2f}**.",
            "",
            f"ONNX Runtime images/s by batch size with {r['ort_sweep']['threads']} thread(s) (one server worker's "
            "share), same run: "
            + ", ".join(f"batch {b}: {v:.1f}" for b, v in r["ort_sweep"]["images_per_s"].items())
            + ".",
            "",
            f"Server resident memory (32-client level): {rss['after_first_100_kb'] / 1024:.1f} MB after the first "
            f"{RSS_EARLY} requests, {rss[f'after_{n}_kb'] / 1024:.1f} MB after {n} ({100 * r['rss_growth']:+.1f} %); "
            f"{rss['after_all_kb'] / 1024:.1f} MB after all {len(rounds) * n}.",
            "",
            "| target (issue 6) | met |",
            "|---|---|",
            f"| zero errors and lost responses at 32 clients (all rounds) | {tick[t['zero_errors_and_lost_at_32']]} |",
            f"| 32-client throughput >= 50 % of ORT batch 64 "
            f"| {tick[t['throughput_32_at_least_half_of_ort_batch64']]} |",
            f"| RSS after {n} within 10 % of after {RSS_EARLY} | {tick[t['rss_growth_within_10_percent']]} |",
            "",
            f"Machine: {r['machine']}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
