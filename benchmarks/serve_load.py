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

The clients speak plain HTTP/1.1 over asyncio streams (a few lines, like wrk) instead of a full client
library, so that the load generator takes as little of the shared CPU as possible.

Writes ``<out>/serve_load.json`` and ``<out>/serve_load.md``.

Usage::

    python benchmarks/serve_load.py runs/RUN/model.onnx                     # 2,000 requests per level
    python benchmarks/serve_load.py runs/RUN/model.onnx --requests 200      # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

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
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
    body = head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode()
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
        default=os.cpu_count() or 1,
        help="server --workers (processes; default: one per core, each with 1 ONNX Runtime thread)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of the 32-client level, each between two batch-64 timings; the ratio is their median",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for serve_load.json / .md")
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
    cores = os.cpu_count() or 1
    h, w = meta["input_size"]
    batch64 = (64, meta["channels"], h, w)
    sweep = {  # the server's view: one worker's ONNX Runtime threads, images/s per batch size
        b: ort_timing(model, (b, meta["channels"], h, w), threads=args.threads, warmup=3, runs=max(10, 256 // b))
        for b in SWEEP
    }

    port = free_port()
    cmd = [sys.executable, "-m", "defectlite.cli.main", "-q", "serve", str(model), "--host", HOST, "--port", str(port)]
    cmd += ["--workers", str(args.workers), "--log-level", "warning"]
    for opt in ("max_batch", "max_wait_ms", "threads"):
        if getattr(args, opt) is not None:
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    log_path = args.out / "serve_load.server.log"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, proc)
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
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    ort = max(ort_runs, key=lambda t: t.images_per_s)
    errors, lost = sum(r["errors"] for r in rounds), sum(r["lost"] for r in rounds)
    growth = rss[f"after_{args.requests}_kb"] / rss["after_first_100_kb"] - 1
    report = {
        "what": "defectlite serve under load on loopback (benchmarks/serve_load.py)",
        "model": str(model),
        "model_meta": {k: meta.get(k) for k in ("model", "input_size", "channels", "num_params", "defectlite_version")},
        "server": {"workers": args.workers, **info["limits"], "ort_threads": info["onnxruntime_threads"]},
        "images": {"folder": str(folder), "count": len(images)},
        "requests_per_level": args.requests,
        "levels": levels,
        "rss": rss,
        "rss_growth": round(growth, 4),
        "ort_batch64": ort.as_dict(),
        "rounds_at_top_level": rounds,
        "ort_batch64_images_per_s_runs": [t.images_per_s for t in ort_runs],
        "ort_sweep": {"threads": args.threads, "images_per_s": {str(b): t.images_per_s for b, t in sweep.items()}},
        "ratio_32_clients_to_ort_batch64": float(np.median([r["ratio"] for r in rounds])),
        "machine": machine(),
    }
    report["targets"] = {
        "zero_errors_and_lost_at_32": errors == 0 and lost == 0,
        "throughput_32_at_least_half_of_ort_batch64": report["ratio_32_clients_to_ort_batch64"] >= 0.5,
        "rss_growth_within_10_percent": abs(growth) <= 0.10,
    }
    atomic_write_json(args.out / "serve_load.json", report)
    atomic_write_text(args.out / "serve_load.md", render(report))
    print((args.out / "serve_load.md").read_text())
    return 0


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
