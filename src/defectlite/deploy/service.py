"""The inspection service: a FastAPI app over the same :class:`Predictor` as ``defectlite predict``.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs`` and ``/redoc``, their
JavaScript served by the app itself through ``fastapi-offline``: camera stations are often offline)::

    POST /v1/predict   multipart, field ``files`` (one or more images) -> class, probabilities, latency per image
    POST /v1/explain   multipart, field ``files`` (one image), optional field ``class`` -> Grad-CAM overlay PNG
    GET  /v1/model     classes, input size, channels, version, params, limits, whether explain is available
    GET  /v1/stats     requests, images and the sizes of the ONNX Runtime batches run so far
    GET  /healthz      {"status": "ok"}
    GET  /             the inspection page (static/index.html)

Routes only translate HTTP: decoding, preprocessing and the model live in the Predictor (and, for
Grad-CAM, in :mod:`defectlite.evaluate.gradcam`). Concurrent requests are micro-batched
(:class:`~defectlite.deploy.batching.MicroBatcher`) into one ONNX Runtime call run in a worker
thread, so the event loop never blocks.

Slow clients are timed out (:mod:`defectlite.deploy.deadlines`): a request head must arrive within
``header_timeout_s``, a body within ``body_timeout_s`` with no silence above ``body_idle_timeout_s``
(408 JSON and the connection closed); uvicorn's own ``timeout_keep_alive`` closes idle keep-alive
connections.

Every bad input gets a JSON error ``{"error": code, "detail": message, "files": [...]}`` with a 4xx
status, and the server goes on serving: 413 for a body above ``max_upload_mb``, more than
``max_files`` images, an image above ``max_pixels`` or images above ``max_request_pixels`` together
(both checked from the image headers before any image of the request is decoded, whatever PIL's
global limit is); 415 for a body that is not
multipart/form-data; 422 for a missing ``files`` field, a non-image or a truncated image; 503 when
more than ``max_queue`` images wait. Uploads stay in memory (the body is read with its limit
enforced while streaming and parsed there); no request names a file the server reads or writes.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from defectlite.cpus import default_threads
from defectlite.deploy.batching import MicroBatcher, QueueFull
from defectlite.deploy.deadlines import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, STATE_KEY
from defectlite.deploy.predictor import Predictor, resolve_model_path
from defectlite.deploy.uploads import (
    FIELD,
    MULTIPART_SCHEMA,
    ApiError,
    Part,
    check_request_pixels,
    file_error,
    image_parts,
    parse_multipart,
    part_name,
    read_body,
)
from defectlite.errors import CheckpointError, ConfigError, DataError, missing_train_extra
from defectlite.runs import is_int8, resolve_checkpoint

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PARITY_TOL_EXPLAIN = 1e-3  # max |logit difference| between the checkpoint and the ONNX model on a random input
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: name -> (bytes, media type). Requests only ever pick from this dict."""
    if not STATIC_DIR.is_dir():
        return {}
    return {
        f.name: (f.read_bytes(), STATIC_TYPES[f.suffix])
        for f in sorted(STATIC_DIR.iterdir())
        if f.is_file() and f.suffix in STATIC_TYPES
    }


def _load_explainer(model_path: Path, predictor: Predictor) -> tuple[Any, str]:
    """(Explainer or None, why not) for the checkpoint beside the ONNX file.

    PyTorch is imported only when that checkpoint exists: an ONNX file alone is served without it.
    """
    try:
        stem = resolve_checkpoint(model_path)
    except CheckpointError as e:
        return None, str(e)
    try:
        import torch

        from defectlite.evaluate.gradcam import Explainer
    except ModuleNotFoundError as e:
        why = missing_train_extra(e)
        if why is None:
            raise
        return None, f"Grad-CAM needs {why}"

    try:
        explainer = Explainer.from_checkpoint(stem)
    except (CheckpointError, ConfigError) as e:
        return None, str(e)
    c = explainer.card
    same = [list(c["classes"]), tuple(c["input_size"]), int(c["in_chans"])]
    if same != [predictor.classes, predictor.input_size, predictor.channels]:
        return None, "the PyTorch checkpoint beside the ONNX file has other classes, input size or channels"
    x = np.random.default_rng(0).standard_normal((1, predictor.channels, *predictor.input_size)).astype(np.float32)
    fp32 = predictor if not is_int8(predictor.path) else Predictor(model_path, fp32=True)
    with torch.no_grad():
        diff = float(np.abs(explainer.model(torch.from_numpy(x)).numpy() - fp32.logits(x)).max())
    if diff > PARITY_TOL_EXPLAIN:
        return None, f"the PyTorch checkpoint beside the ONNX file is another model (logits differ by {diff:.1e})"
    return explainer, ""


def create_app(
    model_path: str | Path,
    *,
    max_batch: int = 8,
    max_wait_ms: float = 1.0,
    max_upload_mb: float = 8.0,
    max_pixels: int = 40_000_000,
    max_request_pixels: int = 100_000_000,
    max_files: int = 32,
    max_queue: int = 1024,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    body_idle_timeout_s: float = 10.0,
    threads: int | None = None,
    explain: bool = True,
    options: dict[str, Any] | None = None,
    fp32: bool = False,
) -> FastAPI:
    """The FastAPI app serving one exported model.

    Args:
        model_path: ``model.onnx`` or its run folder; Grad-CAM also needs ``model.json`` and
            ``model.safetensors`` beside it (otherwise ``/v1/explain`` answers 501).
        max_batch: most images in one ONNX Runtime call. Default 8: on 2 cores the 140 k-parameter EG-RepVGG
            at 1 x 200 x 200 runs no faster per image at batch 16-64 than at 8 (its activations outgrow the
            caches; see the ORT batch sweep in benchmarks/results/serve_load.md), and larger batches only
            add latency.
        max_wait_ms: how long the first queued request waits for others to fill a batch (ms).
        max_upload_mb: largest request body (MB, 10^6 bytes).
        max_pixels: largest image (width x height, pixels), checked from its header before decoding.
        max_request_pixels: most pixels of all the images of one request together, checked from their
            headers before any is decoded. Default 100 M: at about 5 ns per pixel, at most ~0.5 s of one
            core's decoding per request (e.g. 20 camera frames of 5 megapixels, or two images at ``max_pixels``).
        max_files: most images in one request.
        max_queue: most images waiting for the model; beyond that requests get 503.
        header_timeout_s: the request head (request line and headers) must arrive within this many seconds
            of the connection, or of the first byte of the next request on a keep-alive connection; else 408
            and the connection is closed. Enforced only when uvicorn runs
            :data:`~defectlite.deploy.deadlines.DeadlineProtocol` (``defectlite serve`` does), which reads it from
            the app's lifespan state.
        body_timeout_s: the whole request body must arrive within this many seconds of its head; else 408
            and close. Default 60: 8 MB at about 1 Mbit/s.
        body_idle_timeout_s: longest silence while the body streams in (seconds); else 408 and close.
        threads: ONNX Runtime intra-op threads (default: :func:`~defectlite.cpus.default_threads`,
            ``$DEFECTLITE_THREADS`` or the CPUs the process may use (affinity and cgroup quota) but one, which
            is left to HTTP and preprocessing; on 2 cores this gave 1.5 x the throughput of 2 threads, whose
            spinning starves the event loop).
        explain: serve ``/v1/explain`` when the checkpoint is there. False skips loading it and PyTorch
            (about 0.7 GB less resident memory per worker; ``/v1/explain`` answers 501).
        options: the server's default answer options of the model's task (classifier: ``min_confidence``, a
            probability or ``"recommended"``: below it the answer is ``uncertain``; detector: ``conf``, ``iou``);
            a request overrides them with query parameters or form fields of the same names.
        fp32: serve ``model.onnx`` even when the run deployed its INT8 form ``model.int8.onnx`` beside it.

    Raises:
        CheckpointError: missing model or model without defectlite metadata.
        ConfigError: a limit that is not positive.
    """
    limits = {"max_batch": max_batch, "max_upload_mb": max_upload_mb, "max_pixels": max_pixels}
    limits |= {"max_request_pixels": max_request_pixels, "max_files": max_files, "max_queue": max_queue}
    timeouts = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s}
    limits |= timeouts | {"body_idle_timeout_s": body_idle_timeout_s}
    bad = {k: v for k, v in limits.items() if not v > 0}
    if bad or max_wait_ms < 0:
        raise ConfigError(f"serve limits must be positive (max_wait_ms >= 0): {bad or {'max_wait_ms': max_wait_ms}}")
    threads = threads or default_threads()
    predictor = Predictor(model_path, threads=threads, spinning=False, fp32=fp32, **(options or {}))
    fp32_path = resolve_model_path(model_path, fp32=True)  # Grad-CAM's checkpoint sits beside the FP32 file
    explainer, no_explain = _load_explainer(fp32_path, predictor) if explain else (None, "explain is switched off")
    no_explain = no_explain.replace(f"{fp32_path.parent}{os.sep}", "")  # /v1/model shows it: no server paths
    batcher = MicroBatcher(  # every raw model output; the task's runtime turns each image's rows into its answer
        predictor.run, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue
    )
    static = _load_static()
    meta = predictor.meta
    upload_bytes = int(max_upload_mb * 1e6)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield {STATE_KEY: timeouts}  # read by the uvicorn protocol of each connection (deadlines.py)
        await batcher.stop()

    app = FastAPIOffline(  # FastAPI whose /docs and /redoc load no CDN
        title="defectlite inspection service",
        version=str(meta.get("defectlite_version", "unknown")),
        description=f"Surface-defect inspection ({predictor.task}) with {meta.get('model', 'a defectlite model')} on "
        "ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.predictor, app.state.batcher, app.state.explainer = predictor, batcher, explainer

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ConfigError)
    async def _bad_option(_request: Request, exc: ConfigError) -> JSONResponse:
        return ApiError(422, "bad_option", str(exc)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, "http_error", str(exc.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(422, "invalid_request", str(exc.errors())).response()

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return ApiError(500, "internal_error", f"internal error ({type(exc).__name__})").response()

    async def read_images(request: Request) -> tuple[list[Part], list[Part]]:
        body = await read_body(request, upload_bytes, body_timeout_s, body_idle_timeout_s)
        ctype = request.headers.get("content-type")
        # about 3 ms per MB: large bodies are parsed off the event loop, small ones (~0.1 ms) on it
        parts = (
            await run_in_threadpool(parse_multipart, body, ctype) if len(body) > 2**20 else parse_multipart(body, ctype)
        )
        return parts, image_parts(parts, max_files)

    def preprocess(files: list[Part]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Pixel checks (all images, from their headers), then the Predictor's preprocessing of every image
        -> (float32 (N, C, H, W), original (H, W) of each image)."""
        check_request_pixels(files, max_pixels, max_request_pixels)
        out, sizes, errors = [], [], []
        for i, f in enumerate(files):
            try:
                x, size = predictor.preprocess([f.data], [part_name(f, i)])
                out.append(x)
                sizes += size
            except DataError as e:
                errors.append((i, e))
        if errors:
            raise file_error(files, errors)
        return np.concatenate(out), sizes

    @app.post(
        "/v1/predict",
        openapi_extra=MULTIPART_SCHEMA,
        summary="Answer for one or more images (the model's task: classes, boxes, ...)",
    )
    async def predict(request: Request) -> Response:
        """Class, probabilities and model latency (ms, of the batched ONNX Runtime call) per image; a classifier's
        answer is ``uncertain`` (the top classes still given) below ``min_confidence`` (query or form field)."""
        parts, files = await read_images(request)
        asked = request_options(parts, request.query_params, predictor.runtime)
        # small uploads (a camera frame: ~0.3 ms to decode) are decoded on the event loop; a thread hop
        # costs about as much and contends for the GIL; large ones go to a worker thread
        small = sum(len(f.data) for f in files) <= INLINE_DECODE_BYTES
        x, sizes = preprocess(files) if small else await run_in_threadpool(preprocess, files)
        try:
            rows, latency_ms, batch_size = await batcher.submit(x)
        except QueueFull as e:
            raise ApiError(503, "busy", f"the model is busy, try again ({e})") from None

        def answer() -> bytes:  # decoding, NMS and the JSON of every answer: in a worker thread, never on the loop
            timing = {"latency_ms": round(latency_ms, 3), "batch_size": batch_size}
            answers = predictor.answers(rows, sizes, **asked)
            results = [{"file": f.filename, **predictor.as_dict(a), **timing} for f, a in zip(files, answers)]
            return json_bytes({"model": meta.get("model"), "task": predictor.task, "results": results})

        return Response(await run_in_threadpool(answer), media_type="application/json")

    @app.post(
        "/v1/explain",
        openapi_extra=MULTIPART_SCHEMA,
        summary="Grad-CAM overlay of one image (PNG)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def explain(request: Request) -> Response:
        """Grad-CAM of the image for ``class`` (default: the predicted class), blended over the image."""
        if explainer is None:
            raise ApiError(501, "explain_unavailable", f"Grad-CAM is not available for this model: {no_explain}")
        parts, files = await read_images(request)
        if len(files) != 1:
            raise ApiError(422, "one_image", f"explain takes one image in field {FIELD!r}, got {len(files)}")
        target = next((p.data.decode("utf-8", "replace") for p in parts if p.name == "class"), None) or None
        if target is not None and target not in explainer.classes:
            raise ApiError(422, "unknown_class", f"unknown class {target!r}; the model knows {explainer.classes}")
        check_request_pixels(files, max_pixels, max_request_pixels)
        png, expl, served = await run_in_threadpool(_explain_png, explainer, predictor, files[0], target)
        headers = {  # the answer of the served model (maybe INT8); the map from the FP32 checkpoint
            "X-Defectlite-Class": quote(expl.label),
            "X-Defectlite-Probability": f"{served.probabilities[expl.label]:.6f}",
            "X-Defectlite-Predicted": quote(served.label),
            "X-Defectlite-Layer": quote(expl.layer),
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/v1/model", summary="Model metadata and service limits")
    async def model_info() -> dict[str, Any]:
        return {
            "model": meta.get("model"),
            "task": predictor.task,
            "view": predictor.runtime.view,  # how the page draws an answer: labels or boxes
            "options": list(predictor.runtime.options),
            "file": predictor.path.name,  # model.onnx, or its INT8 form model.int8.onnx
            "classes": predictor.classes,
            "input_size": list(predictor.input_size),
            "channels": predictor.channels,
            "num_params": meta.get("num_params"),
            "version": meta.get("defectlite_version"),
            "mean": meta.get("mean"),
            "std": meta.get("std"),
            "explain": explainer is not None,
            "explain_detail": "" if explainer is not None else no_explain,
            "limits": {**limits, "max_wait_ms": max_wait_ms},
            "onnxruntime_threads": threads,
        }

    @app.get("/v1/stats", summary="Requests and ONNX Runtime batches so far")
    async def stats() -> dict[str, Any]:
        return batcher.stats()

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        return _static_response(static, "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        return _static_response(static, name)

    return app


INLINE_DECODE_BYTES = 256 * 1024  # uploads up to this size are decoded without a thread hop


def json_bytes(content: Any) -> bytes:
    """``content`` as Starlette's ``JSONResponse`` renders it (UTF-8, compact, no NaN)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def request_options(parts: list[Part], query: Any, runtime: Any) -> dict[str, Any]:
    """The answer options a request asks for (query parameters, then form fields), among ``runtime.options``, each
    parsed by the runtime (:meth:`~defectlite.tasks.base.Runtime.option`).

    Raises:
        ConfigError: a value the runtime refuses (the app answers 422 ``bad_option``).
    """
    out: dict[str, Any] = {k: query[k] for k in runtime.options if k in query}
    out |= {p.name: p.data.decode("utf-8", "replace") for p in parts if p.name in runtime.options}
    return {k: runtime.option(k, v) for k, v in out.items()}


def _static_response(static: dict[str, tuple[bytes, str]], name: str) -> Response:
    if name not in static:
        raise ApiError(404, "not_found", f"no page file {name!r}")
    data, media_type = static[name]
    return Response(data, media_type=media_type)


def _explain_png(explainer: Any, predictor: Predictor, part: Part, target: str | None) -> tuple[bytes, Any, Any]:
    """Grad-CAM PNG of one uploaded image whose pixels were checked (runs in a worker thread).

    The served model (``predictor``, maybe INT8) answers; Grad-CAM needs gradients, so the map comes from the FP32
    checkpoint, for ``target`` or else for the class the served model predicted (so ``/v1/explain`` explains the
    answer ``/v1/predict`` gives, even where INT8 and FP32 disagree near a tie).

    Returns:
        (PNG bytes, the :class:`Explanation`, the served :class:`Prediction`).
    """
    from defectlite.evaluate.gradcam import overlay, png_bytes

    try:
        served = predictor.predict(part.data)
        expl = explainer.explain(part.data, target or predictor.classes[served.index], part_name(part, 0))
    except DataError as e:
        raise file_error([part], [(0, e)]) from None
    return png_bytes(overlay(expl)), expl, served
