"""The inspection service through httpx against a real uvicorn server on loopback, and its page in
headless Chromium (Playwright); the model is the tiny EG-RepVGG trained once per session (test_explain)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from defectlite import Predictor
from defectlite.checkpoint import save_checkpoint
from defectlite.compress.restore import load_checkpoint
from defectlite.cpus import available_cpus, default_threads
from defectlite.deploy.batching import MicroBatcher, QueueFull
from defectlite.deploy.deadlines import DeadlineProtocol, H11DeadlineProtocol
from defectlite.deploy.service import create_app
from defectlite.errors import ConfigError
from test_explain import neu_images, tiny_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIMITS = {"max_batch": 16, "max_wait_ms": 25.0, "max_upload_mb": 1.0, "max_pixels": 1_000_000, "max_files": 8}
LIMITS |= {"max_request_pixels": 3_000_000}


@contextlib.contextmanager
def live_server(app, http: type = DeadlineProtocol):
    """Run ``app`` with uvicorn (and the HTTP protocol ``defectlite serve`` uses) in a thread on a free
    loopback port; yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=http))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small) -> Path:
    return tiny_run(tmp_path_factory, neu_small)


@pytest.fixture(scope="module")
def server(run_dir):
    with live_server(create_app(run_dir / "model.onnx", threads=1, **LIMITS)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def app_client(run_dir):
    """The app in this thread through Starlette's TestClient (no sockets; app.state reachable), without Grad-CAM."""
    from starlette.testclient import TestClient

    with TestClient(create_app(run_dir / "model.onnx", threads=1, explain=False, **LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def images(neu_small) -> list[Path]:
    return neu_images(neu_small)


def upload(*paths_or_bytes, field: str = "files") -> list:
    out = []
    for i, item in enumerate(paths_or_bytes):
        if isinstance(item, Path):
            out.append((field, (item.name, item.read_bytes(), "image/jpeg")))
        else:
            out.append((field, (f"upload{i}.bin", item, "application/octet-stream")))
    return out


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height grey pixels (a decompression bomb, data left out)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == code and body["detail"]
    return body


def assert_still_serving(client: httpx.Client, image: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/v1/predict", files=upload(image)).status_code == 200


def test_model_health_and_openapi(client, run_dir):
    info = client.get("/v1/model").json()
    predictor = Predictor(run_dir)
    assert info["classes"] == predictor.classes and info["input_size"] == [64, 64] and info["channels"] == 1
    assert info["num_params"] == 140_669 and info["version"] and info["explain"] is True
    assert info["limits"]["max_batch"] == 16 and info["limits"]["max_wait_ms"] == 25.0
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    for page in ("/docs", "/redoc"):  # offline: every script and style comes from the service itself
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and not [a for a in assets if "//" in a], f"{page} loads from elsewhere: {assets}"
        assert all(client.get(a).status_code == 200 for a in assets)


def test_predict_matches_the_predictor(client, run_dir, images):
    chosen = images[::30]
    resp = client.post("/v1/predict", files=upload(*chosen))
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    expected = Predictor(run_dir).predict_batch(chosen)
    assert [r["file"] for r in results] == [p.name for p in chosen]
    for r, e in zip(results, expected):
        assert r["class"] == e.label and r["index"] == e.index
        assert abs(r["probability"] - e.probability) < 1e-5
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert r["latency_ms"] > 0 and r["batch_size"] >= len(chosen)


def test_bad_images_get_4xx_json_and_the_server_goes_on(client, images):
    truncated = images[0].read_bytes()[:3000]
    body = assert_error(client.post("/v1/predict", files=upload(b"hello, not an image")), 422, "bad_image")
    assert "not a readable image" in body["files"][0]["detail"]
    body = assert_error(client.post("/v1/predict", files=upload(truncated)), 422, "bad_image")
    assert "truncated" in body["files"][0]["detail"]
    body = assert_error(client.post("/v1/predict", files=upload(images[1], b"junk")), 422, "bad_image")
    assert [f["file"] for f in body["files"]] == ["upload1.bin"]  # only the bad one is named
    assert_still_serving(client, images[2])


def test_pixel_limit_is_per_request_not_pils_global(client, images):
    pil_default = Image.MAX_IMAGE_PIXELS
    body = assert_error(client.post("/v1/predict", files=upload(png(2000, 1000))), 413, "image_too_large")
    assert "2000 x 1000 pixels, above the limit of 1,000,000" in body["files"][0]["detail"]  # PIL would accept it
    assert_error(client.post("/v1/predict", files=upload(png_header(40_000, 40_000))), 413, "image_too_large")
    assert_error(client.post("/v1/explain", files=upload(png_header(40_000, 40_000))), 413, "image_too_large")
    assert client.post("/v1/predict", files=upload(png(1000, 1000))).status_code == 200  # at the limit: fine
    assert Image.MAX_IMAGE_PIXELS == pil_default
    assert_still_serving(client, images[0])


def test_request_pixel_limit_is_checked_before_any_decoding(app_client, client, images, monkeypatch):
    decoded = []
    predictor = app_client.app.state.predictor
    real_preprocess = predictor.preprocess
    monkeypatch.setattr(predictor, "preprocess", lambda *a, **k: decoded.append(1) or real_preprocess(*a, **k))
    four = [png(1000, 1000)] * 4  # each at the per-image limit, 4 M together: above the 3 M of the request
    body = assert_error(app_client.post("/v1/predict", files=upload(*four)), 413, "too_many_pixels")
    assert "4,000,000 pixels in all" in body["detail"] and "3,000,000" in body["detail"]
    assert "max_request_pixels" in body["detail"]
    assert [f["detail"] for f in body["files"]] == ["1,000,000 pixels"] * 4 and decoded == []
    assert app_client.get("/v1/model").json()["limits"]["max_request_pixels"] == 3_000_000
    assert app_client.post("/v1/predict", files=upload(*four[:3])).status_code == 200 and len(decoded) == 3
    assert_error(client.post("/v1/predict", files=upload(*four)), 413, "too_many_pixels")  # over HTTP too
    assert_still_serving(client, images[0])


FUZZ_EXAMPLES = int(os.environ.get("DEFECTLITE_FUZZ_EXAMPLES", "60"))  # e.g. 5000 for a long run (~1 min)
MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.one_of(st.integers(0, 300), st.integers(0, 2**20)),  # where (mod the length): often in the header
    st.binary(min_size=1, max_size=16),
)


@pytest.fixture(scope="module")
def seeds(images) -> dict[str, bytes]:
    """A real NEU image as JPEG (as shot), PNG and LZW-compressed TIFF."""
    out = {"JPEG": images[0].read_bytes()}
    with Image.open(images[0]) as img:
        for fmt, opts in (("PNG", {}), ("TIFF", {"compression": "tiff_lzw"})):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **opts)
            out[fmt] = buf.getvalue()
    return out


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, where, chunk in mutations:
        i = where % (len(out) + 1)
        if op == "flip":
            out[i : i + len(chunk)] = bytes(a ^ b for a, b in zip(out[i : i + len(chunk)], chunk))
        elif op == "insert":
            out[i:i] = chunk
        elif op == "delete":
            del out[i : i + len(chunk)]
        else:
            del out[i:]
    return bytes(out)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's warnings about corrupt TIFF tags
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True)
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "TIFF"]),
    mutations=st.lists(MUTATION, min_size=1, max_size=6),
    with_good=st.booleans(),
)
def test_fuzzed_images_get_200_or_a_4xx_json_error(app_client, seeds, fmt, mutations, with_good):
    """Mutated JPEG / PNG / TIFF bytes: never a 500 or an exception (the TestClient re-raises those)."""
    files = upload(mutate(seeds[fmt], mutations), *([seeds["PNG"]] if with_good else []))
    resp = app_client.post("/v1/predict", files=files)
    if resp.status_code == 200:
        assert len(resp.json()["results"]) == len(files)
        return
    assert 400 <= resp.status_code < 500 and resp.headers["content-type"] == "application/json", resp.text
    body = resp.json()
    assert set(body) <= {"error", "detail", "files"} and body["error"] and body["detail"]
    assert all(set(f) == {"file", "detail"} and f["detail"] for f in body.get("files", []))


def test_upload_limits_and_malformed_requests(client, server, images):
    big = upload(b"\0" * 1_500_000)
    assert_error(client.post("/v1/predict", files=big), 413, "upload_too_large")

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n\r\n"
        for _ in range(30):
            yield b"\0" * 100_000

    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert_error(client.post("/v1/predict", content=chunks(), headers=headers), 413, "upload_too_large")
    assert_error(client.post("/v1/predict", files=upload(*images[:9])), 413, "too_many_files")
    body = assert_error(client.post("/v1/predict", files=upload(images[0], field="image")), 422, "missing_field")
    assert "'image'" in body["detail"]
    assert_error(client.post("/v1/predict", json={"files": "crazing_1.jpg"}), 415, "unsupported_media_type")
    assert_error(client.post("/v1/predict", content=b"garbage", headers=headers), 400, "bad_multipart")
    assert_error(client.get("/v1/nothing"), 404, "http_error")
    assert_still_serving(client, images[0])


def trickle(
    url: str, first: bytes, then: bytes = b"", gap_s: float = 0.1, give_up_s: float = 8.0
) -> tuple[float, bytes]:
    """Over a raw socket, send ``first``, then ``then`` one byte every ``gap_s`` seconds, until the server closes
    the connection. Returns (seconds from connecting to the close, inf if it stayed open; all the server sent)."""
    host, port = url.removeprefix("http://").split(":")
    got, i = b"", 0
    with socket.create_connection((host, int(port))) as s:
        t0 = time.monotonic()
        s.sendall(first)
        while time.monotonic() - t0 < give_up_s:
            try:
                if select.select([s], [], [], gap_s)[0]:
                    data = s.recv(65536)
                    if not data:
                        return time.monotonic() - t0, got
                    got += data
                elif i < len(then):
                    s.sendall(then[i : i + 1])
                    i += 1
            except OSError:  # reset by the server
                return time.monotonic() - t0, got
    return float("inf"), got


def answer(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body or {}) of a raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    is_json = b"application/json" in head.lower()
    return int(head.split()[1]), json.loads(body) if is_json else {}


HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
SLOW = {"header_timeout_s": 1.0, "body_timeout_s": 2.0, "body_idle_timeout_s": 0.7}
SLOW_CLIENTS = {  # name -> (first bytes, then one byte per 0.1 s, closed after (s), statuses, error code)
    "silent": (b"", b"", 1.0, {408}, "header_timeout"),
    "head trickle": (HEAD, b"X-Slow: " + b"x" * 100, 1.0, {408}, "header_timeout"),
    "body trickle": (HEAD + b"Content-Length: 5000\r\n\r\n", b"-" * 100, 2.0, {408}, "body_timeout"),
    "body stall": (HEAD + b"Content-Length: 5000\r\n\r\n--b", b"", 0.7, {408}, "body_timeout"),
    "unread body": (
        b"POST /v1/model HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
        b"-" * 100,
        2.0,
        {405},
        None,
    ),
    "huge head": (HEAD + b"X-Big: " + b"x" * 20_000, b"", 0.0, {431, 400}, None),  # 400: h11's own 16 KiB limit
}


@pytest.mark.parametrize("http", sorted({DeadlineProtocol, H11DeadlineProtocol}, key=lambda c: c.__name__))
def test_slow_clients_are_timed_out_while_others_are_served(run_dir, images, http):
    app = create_app(run_dir / "model.onnx", threads=1, explain=False, **LIMITS | SLOW)
    with live_server(app, http=http) as url, httpx.Client(base_url=url, timeout=10) as client:
        with concurrent.futures.ThreadPoolExecutor(len(SLOW_CLIENTS)) as pool:
            futures = {k: pool.submit(trickle, url, *v[:2]) for k, v in SLOW_CLIENTS.items()}
            served = []
            while not all(f.done() for f in futures.values()):  # a normal client all along
                t0 = time.monotonic()
                assert client.post("/v1/predict", files=upload(images[0])).status_code == 200
                served.append(time.monotonic() - t0)
        for name, (_, _, after_s, statuses, code) in SLOW_CLIENTS.items():
            closed_s, raw = futures[name].result()
            assert after_s - 0.1 <= closed_s <= after_s + 1.5, (name, closed_s)
            status, body = answer(raw)
            assert status in statuses, (name, raw[:300])
            if code is not None:
                assert body["error"] == code and body["detail"], (name, body)
        assert len(served) >= 5 and max(served) < 1.0  # one image on an idle model takes ~10 ms
        assert "body_idle_timeout_s" in answer(futures["body stall"].result()[1])[1]["detail"]
        assert "body_timeout_s" in answer(futures["body trickle"].result()[1])[1]["detail"]
        assert client.get("/v1/model").json()["limits"]["header_timeout_s"] == 1.0


def test_no_request_chooses_a_path(client, server, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = f"../../{tmp_path.name}/written.jpg"
    files = [("files", (evil, images[0].read_bytes(), "image/jpeg"))]
    assert client.post("/v1/predict", files=files).json()["results"][0]["file"] == evil  # only echoed back
    assert list(tmp_path.iterdir()) == []
    for path in ("/static/..%2Fserve.py", "/static/%2Fetc%2Fpasswd", "/static/../../etc/passwd"):
        assert httpx.get(server + path).status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="picker"' in page.text


def test_concurrent_requests_are_batched_and_all_answered(client, server, run_dir, images):
    chosen = images[::3][:32]
    expected = {p.name: e for p, e in zip(chosen, Predictor(run_dir).predict_batch(chosen))}
    before = client.get("/v1/stats").json()

    async def burst():
        async with httpx.AsyncClient(base_url=server, timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/predict", files=upload(p)) for p in chosen))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 32
    results = [r.json()["results"][0] for r in responses]
    assert sorted(r["file"] for r in results) == sorted(expected)  # none lost, none answered twice
    for r in results:
        assert r["class"] == expected[r["file"]].label
        assert abs(r["probability"] - expected[r["file"]].probability) < 1e-5
    after = client.get("/v1/stats").json()
    calls = after["batches"] - before["batches"]
    assert after["images"] - before["images"] == 32
    assert calls < 32 and max(r["batch_size"] for r in results) > 1 and after["largest_batch"] <= 16


def test_explain_returns_a_png_overlay(client, images):
    pred = client.post("/v1/predict", files=upload(images[5])).json()["results"][0]
    resp = client.post("/v1/explain", files=upload(images[5]))
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.headers["x-defectlite-class"] == pred["class"] == resp.headers["x-defectlite-predicted"]
    assert abs(float(resp.headers["x-defectlite-probability"]) - pred["probability"]) < 1e-4
    assert Image.open(io.BytesIO(resp.content)).size == (200, 200)
    data = {"class": "scratches"}
    assert client.post("/v1/explain", files=upload(images[5]), data=data).headers["x-defectlite-class"] == "scratches"
    assert_error(client.post("/v1/explain", files=upload(images[5]), data={"class": "rust"}), 422, "unknown_class")
    assert_error(client.post("/v1/explain", files=upload(images[5], images[6])), 422, "one_image")
    assert_error(client.post("/v1/explain", files=upload(b"GIF89a broken")), 422, "bad_image")
    assert_still_serving(client, images[0])


def test_explain_unavailable_without_the_checkpoint(run_dir, images, tmp_path):
    shutil.copy(run_dir / "model.onnx", tmp_path / "model.onnx")
    with live_server(create_app(tmp_path / "model.onnx", threads=1)) as url:
        info = httpx.get(url + "/v1/model").json()
        assert info["explain"] is False and "model.json" in info["explain_detail"]
        assert str(tmp_path) not in json.dumps(info)  # no server path reaches a client
        resp = httpx.post(url + "/v1/explain", files=upload(images[0]))
        assert_error(resp, 501, "explain_unavailable")
        assert httpx.post(url + "/v1/predict", files=upload(images[0])).status_code == 200
    # a checkpoint of another model beside the ONNX (same card, other weights) is refused, not explained
    model, card = load_checkpoint(run_dir / "model")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    save_checkpoint(tmp_path / "model", model, card)
    with live_server(create_app(tmp_path / "model.onnx", threads=1)) as url:
        info = httpx.get(url + "/v1/model").json()
        assert info["explain"] is False and "another model" in info["explain_detail"]


NO_TORCH = """
import contextlib, io, json, sys
from defectlite.cli.main import main
from defectlite.errors import TRAIN_EXTRA
for name in TRAIN_EXTRA:
    sys.modules[name] = None  # as if installed without the train extra: importing them raises ModuleNotFoundError
from starlette.testclient import TestClient
from defectlite import Predictor
from defectlite.deploy.service import create_app
model, explain, images = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
labels = [p.label for p in Predictor(model).predict_batch(images)]
with TestClient(create_app(model, threads=1, explain=explain)) as client:
    served = [client.post("/v1/predict", files={"files": open(i, "rb")}).json()["results"][0]["class"] for i in images]
    info = client.get("/v1/model").json()
with contextlib.redirect_stdout(io.StringIO()) as out:
    cli_predict = main(["-q", "predict", model, *images])
with contextlib.redirect_stderr(io.StringIO()) as err:
    cli_models = main(["-q", "models"])
print(json.dumps({"labels": labels, "served": served, "explain": info["explain"], "cli_predict": cli_predict,
                  "cli_lines": len(out.getvalue().splitlines()), "cli_models": cli_models, "err": err.getvalue()}))
"""


def test_onnx_only_prediction_and_serving_need_no_pytorch(run_dir, images, tmp_path):
    shutil.copy(run_dir / "model.onnx", tmp_path / "model.onnx")
    # an ONNX file alone, and a run folder's ONNX with its checkpoint beside it (Grad-CAM then falls away)
    for model, explain in (
        (tmp_path / "model.onnx", "1"),
        (run_dir / "model.onnx", "0"),
        (run_dir / "model.onnx", "1"),
    ):
        # the same file's answers with PyTorch importable (the lone copy is FP32; the run's may be its INT8 sibling)
        expected = [p.label for p in Predictor(model).predict_batch(images[:4])]
        args = [sys.executable, "-c", NO_TORCH, str(model), explain, *map(str, images[:4])]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["labels"] == expected and got["served"] == expected and got["explain"] is False
        assert got["cli_predict"] == 0 and got["cli_lines"] == 4
        # a command that needs PyTorch says which extra to install instead of a traceback
        assert got["cli_models"] == 2 and 'pip install "defectlite[train]"' in got["err"], got["err"]


def test_serve_command_runs_uvicorn(run_dir, images):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "defectlite.cli.main", "serve", str(run_dir), "--port", str(port), "--max-batch", "4"]
    cmd += ["--max-request-pixels", "5000000", "--header-timeout", "1", "--body-timeout", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "defectlite serve did not come up"
            time.sleep(0.2)
        limits = httpx.get(url + "/v1/model").json()["limits"]
        assert limits["max_batch"] == 4 and limits["max_request_pixels"] == 5_000_000
        assert (limits["header_timeout_s"], limits["body_timeout_s"]) == (1.0, 30.0)
        closed_s, raw = trickle(url, b"GET /healthz HTTP/1.1\r\n")  # uvicorn runs the head deadline protocol
        assert closed_s < 2.5 and answer(raw)[0] == 408
        assert httpx.post(url + "/v1/predict", files=upload(images[0])).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"serving {run_dir.resolve() / 'model.onnx'}" in out


def test_micro_batcher_groups_and_splits_rows_of_every_output():
    calls: list[int] = []

    def run(x: np.ndarray) -> list[np.ndarray]:  # two outputs, as an anomaly model's map and score
        calls.append(len(x))
        return [x.reshape(len(x), -1) * 2, x.reshape(len(x)) + 1]

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50, max_queue=8)
        batcher.start()
        try:
            xs = [np.full((n, 1, 1, 1), i, np.float32) for i, n in enumerate([1, 2, 1, 3, 1])]
            outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
            with pytest.raises(QueueFull):
                await asyncio.gather(*(batcher.submit(np.zeros((3, 1, 1, 1), np.float32)) for _ in range(3)))
            return xs, outs
        finally:
            await batcher.stop()

    xs, outs = asyncio.run(scenario())
    for x, (rows, ms, size) in zip(xs, outs):
        assert len(rows) == 2 and np.array_equal(rows[0], x.reshape(len(x), -1) * 2) and ms >= 0 and size <= 4
        assert np.array_equal(rows[1], x.reshape(len(x)) + 1)
    assert calls[:2] == [4, 4]  # 1+2+1 then 3+1: each call filled to max_batch, no request split


def fake_cgroup(root: Path, files: dict[str, str], self_cgroup: str) -> tuple[Path, Path]:
    """A cgroup tree under ``root`` (relative path -> content) and its /proc/self/cgroup listing."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    (root / "self_cgroup").write_text(self_cgroup)
    return root / "fs", root / "self_cgroup"


@pytest.mark.parametrize(
    "files, self_cgroup, cpus",
    [
        ({"fs/cpu.max": "150000 100000"}, "0::/\n", 2),  # cgroup v2, docker --cpus 1.5: rounded up
        ({"fs/cpu.max": "max 100000"}, "0::/\n", 64),  # v2 without a quota: the affinity mask
        ({"fs/cpu,cpuacct/cpu.cfs_quota_us": "300000", "fs/cpu,cpuacct/cpu.cfs_period_us": "100000"}, "", 3),  # v1
        ({"fs/cpu/cpu.cfs_quota_us": "-1", "fs/cpu/cpu.cfs_period_us": "100000"}, "", 64),  # v1, no quota
        (  # v1 in docker: /proc/self/cgroup names the host's path, the container sees its own cgroup at the root
            {"fs/cpu,cpuacct/cpu.cfs_quota_us": "400000", "fs/cpu,cpuacct/cpu.cfs_period_us": "100000"},
            "5:cpu,cpuacct:/docker/0123abcd\n4:memory:/docker/0123abcd\n",
            4,
        ),
        (  # v2, a systemd unit with CPUQuota=100% under a slice with none
            {"fs/system.slice/cam.service/cpu.max": "100000 100000", "fs/system.slice/cpu.max": "max 100000"},
            "0::/system.slice/cam.service\n",
            1,
        ),
        (  # v2: an ancestor's quota is tighter than the process's own
            {"fs/cpu.max": "250000 100000", "fs/kubepods/pod1/cpu.max": "800000 100000"},
            "0::/kubepods/pod1\n",
            3,
        ),
        ({}, "0::/\n", 64),  # no cgroup files at all
    ],
)
def test_cpus_come_from_the_cgroup_quota_and_affinity_not_the_host(tmp_path, monkeypatch, files, self_cgroup, cpus):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))  # a 64-core host
    monkeypatch.delenv("DEFECTLITE_THREADS", raising=False)
    root, listing = fake_cgroup(tmp_path, files, self_cgroup)
    root.mkdir(exist_ok=True)
    assert available_cpus(root, listing) == cpus
    assert default_threads(1, root, listing) == max(1, cpus - 1)
    assert default_threads(2, root, listing) == max(1, (cpus - 1) // 2)


def test_threads_from_the_environment_and_the_affinity_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5})  # taskset -c 0,3,5
    monkeypatch.delenv("DEFECTLITE_THREADS", raising=False)
    assert available_cpus(tmp_path, tmp_path / "none") == 3
    assert default_threads(1, tmp_path, tmp_path / "none") == 2
    monkeypatch.setenv("DEFECTLITE_THREADS", "5")
    assert default_threads(2, tmp_path, tmp_path / "none") == 5  # per worker, as given
    monkeypatch.setenv("DEFECTLITE_THREADS", "0")
    with pytest.raises(ConfigError, match="DEFECTLITE_THREADS"):
        default_threads()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_page_shows_the_right_class_and_gradcam(server, run_dir, images):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    right: dict[str, Path] = {}  # true class -> an image the Predictor gets right
    for path, pred in zip(images, Predictor(run_dir).predict_batch(images)):
        true = path.stem.rsplit("_", 1)[0]
        if pred.label == true:
            right.setdefault(true, path)
    assert len(right) >= 2, f"the tiny model gets fewer than two classes right: {right}"
    chosen = dict(list(right.items())[:2])
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            sync_api.expect(page.get_by_test_id("model-info")).to_contain_text("Grad-CAM available")
            page.get_by_test_id("picker").set_input_files([str(p) for p in chosen.values()])
            for true, path in chosen.items():
                card = page.locator(f'[data-testid=result][data-file="{path.name}"]')
                sync_api.expect(card).to_have_attribute("data-state", "done")
                assert card.get_by_test_id("label").inner_text() == true
                assert card.locator(f'.bars li[data-class="{true}"]').count() == 1
            card.get_by_test_id("explain").click()
            cam = card.locator("img.cam")
            sync_api.expect(cam).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth === 200", arg=cam.element_handle())
            page.get_by_test_id("picker").set_input_files(
                files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}]
            )
            bad = page.locator('[data-testid=result][data-file="notes.png"]')
            sync_api.expect(bad).to_have_attribute("data-state", "error")
            sync_api.expect(bad.get_by_test_id("error")).to_contain_text("not a readable image")
        finally:
            browser.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_swagger_docs_render_with_no_network_beyond_the_service(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    elsewhere: list[str] = []

    def only_the_service(route):
        if route.request.url.startswith(server):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_service)
            page.goto(server + "/docs")
            sync_api.expect(page.locator(".opblock-summary-path", has_text="/v1/predict")).to_be_visible()
        finally:
            browser.close()
    assert not elsewhere


def test_load_script_client_counts_answers(server, images):
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    port = int(server.rsplit(":", 1)[1])
    requests = [(p.name, serve_load.multipart_request("/v1/predict", p.name, p.read_bytes())) for p in images[:4]]
    res = asyncio.run(serve_load.run_level(port, requests, clients=3, n=12))
    assert (res["ok"], res["errors"], res["lost"], res["answered"]) == (12, 0, 0, 12)
    assert res["p50_ms"] > 0 and res["throughput_per_s"] > 0 and res["mean_batch"] >= 1.0
    bad = [("x.jpg", serve_load.multipart_request("/v1/predict", "x.jpg", b"not an image"))]
    res = asyncio.run(serve_load.run_level(port, bad, clients=2, n=4))
    assert (res["ok"], res["errors"], res["lost"]) == (0, 4, 0)

    async def costly_once():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_soon(stop.set)  # one turn of each upload
        return await serve_load.costly_client(port, serve_load.costly_uploads(), stop)

    assert asyncio.run(costly_once()) == {"bomb": {"413": 1}, "32x36MP": {"413": 1}}


def test_a_slow_answer_does_not_hold_up_the_event_loop(run_dir, images, monkeypatch):
    """The mechanism, not a time: while one request's postprocessing is stuck (a runtime that waits for the test),
    /healthz and /v1/model still answer; the stuck request completes once released. Decoding, NMS and the JSON of
    an answer run in a worker thread, so no request's answer can freeze the service."""
    app = create_app(run_dir / "model.onnx", threads=1, explain=False, **LIMITS)
    runtime = app.state.predictor.runtime
    entered, release, real = threading.Event(), threading.Event(), runtime.postprocess

    def stuck(*args, **kwargs):
        entered.set()
        assert release.wait(60), "the test never released the answer"
        return real(*args, **kwargs)

    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        monkeypatch.setattr(runtime, "postprocess", stuck)  # after the app's start-up probe
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, "/v1/predict", files=upload(images[0]))
            assert entered.wait(60)  # the answer is being made, and blocked
            assert c.get("/healthz").json() == {"status": "ok"}  # the loop is free
            assert c.get("/v1/model").status_code == 200
            assert not pending.done()
            release.set()
            assert pending.result(60).status_code == 200


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "inf", "lots"])
def test_answer_options_are_range_checked(app_client, images, value):
    r = app_client.post(f"/v1/predict?min_confidence={value}", files=upload(images[0]))
    assert r.status_code == 422 and r.json()["error"] == "bad_option", r.text
    assert "min_confidence must be a number from 0 to 1" in r.json()["detail"]
