"""``defectlite serve``: the inspection service (HTTP API + page) for an exported model, run by uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

from defectlite.cli.options import add_answer_options, add_command, answer_options


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "serve",
        parents,
        help="serve a model over HTTP (API, OpenAPI docs and an inspection page)",
        description=(
            "Serve MODEL.onnx with FastAPI + uvicorn: POST /v1/predict and /v1/explain (multipart field 'files'), "
            "GET /v1/model, /v1/stats, /healthz, the page at / and the API docs at /docs. Concurrent requests are "
            "micro-batched into one ONNX Runtime call. Grad-CAM needs model.json + model.safetensors beside the ONNX "
            "and PyTorch (about 0.7 GB per worker); an ONNX file alone, or --no-explain, is served without PyTorch."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL", help="model.onnx from `defectlite export`, or its run folder")
    p.add_argument(
        "--fp32", action="store_true", help="serve model.onnx even when the run deployed model.int8.onnx beside it"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--min-confidence",
        metavar="P",
        help="classifier: answer 'uncertain' below probability P (a number or 'recommended': the run's threshold); "
        "a request may ask for its own with ?min_confidence=",
    )
    add_answer_options(p)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with its own model")
    p.add_argument("--max-batch", type=int, default=8, help="most images in one ONNX Runtime call (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=1.0, help="longest wait for a batch to fill, in ms")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest request body in MB")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height in pixels")
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=100_000_000,
        help="most pixels of all the images of one request together (default 100 M: ~0.5 s of decoding on one core); "
        "checked from the image headers before decoding, 413 above",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds for a request head to arrive (from the connection or the next request's first byte); "
        "else 408 and close (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds for the whole request body to arrive; else 408 and close (default 60)",
    )
    p.add_argument(
        "--body-idle-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="longest silence in seconds while a request body streams in; else 408 and close (default 10)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime threads per worker (default: $DEFECTLITE_THREADS, else (CPUs - 1) / workers, at least 1, "
        "counting the CPUs of the affinity mask and the container's cgroup CPU quota, not the host's cores)",
    )
    p.add_argument(
        "--no-explain",
        dest="explain",
        action="store_false",
        help="do not load the checkpoint for Grad-CAM (/v1/explain answers 501): no PyTorch, ~0.1 GB per worker",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import json
    import os
    import sys

    import uvicorn

    from defectlite.cpus import default_threads
    from defectlite.deploy.predictor import resolve_model_path
    from defectlite.errors import ConfigError
    from defectlite.onnx_file import read_metadata
    from defectlite.tasks import get_runtime, task_name

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    model = resolve_model_path(args.model, fp32=True).resolve()
    answer = answer_options(args, min_confidence=args.min_confidence)
    runtime = get_runtime(task_name(read_metadata(model)))
    for key, value in answer.items():  # a bad --option fails here, not in the workers
        if key not in runtime.options:
            raise ConfigError(f"--option {key}: not an option of a {runtime.name} model ({', '.join(runtime.options)})")
        runtime.option(key, value)
    threads = args.threads or default_threads(args.workers)
    options = {
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "max_upload_mb": args.max_upload_mb,
        "max_pixels": args.max_pixels,
        "max_request_pixels": args.max_request_pixels,
        "header_timeout_s": args.header_timeout,
        "body_timeout_s": args.body_timeout,
        "body_idle_timeout_s": args.body_idle_timeout,
        "threads": threads,
        "explain": args.explain,
        "options": answer or None,
        "fp32": args.fp32,
    }
    # uvicorn needs an import string to start several workers; the factory reads its arguments from the environment
    os.environ[ENV_MODEL], os.environ[ENV_OPTIONS] = str(model), json.dumps(options)
    print(f"serving {model} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    if args.workers > 1 and importlib.util.find_spec("uvloop") is None:
        # uvicorn binds the shared socket of several workers with proto 0, so asyncio's own loop never sets
        # TCP_NODELAY on accepted connections and every keep-alive answer waits ~40 ms for the peer's delayed
        # ACK (uvicorn issue #3149); uvloop sets it on every TCP transport
        print(
            "warning: uvloop is not installed (pip install 'uvicorn[standard]'): with --workers > 1 each "
            "keep-alive request may take ~40 ms longer (uvicorn issue #3149)",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.run(
        "defectlite.cli.serve:app_from_env",
        factory=True,
        http=HTTP_PROTOCOL,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


ENV_MODEL, ENV_OPTIONS = "DEFECTLITE_SERVE_MODEL", "DEFECTLITE_SERVE_OPTIONS"
HTTP_PROTOCOL = "defectlite.deploy.deadlines:DeadlineProtocol"  # uvicorn's own, plus the request head deadline


def app_from_env():
    """The app for uvicorn's factory mode (``defectlite serve`` sets the environment)."""
    import json
    import os

    from defectlite.deploy.service import create_app

    return create_app(os.environ[ENV_MODEL], **json.loads(os.environ[ENV_OPTIONS]))
