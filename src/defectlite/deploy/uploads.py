"""Reading uploads for the inspection service: body size limit, in-memory multipart parsing, pixel limits.

Everything here turns a bad upload into an :class:`ApiError` (a JSON 4xx answer); nothing touches
the file system: the body is read into memory with its limit enforced while it streams in, and
parsed there with python-multipart's parser (file names in the upload are only echoed back).
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.requests import ClientDisconnect

FIELD = "files"  # multipart field holding the images
MULTIPART_SCHEMA = {  # /v1/predict and /v1/explain read the body themselves; this documents it in OpenAPI
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "class": {
                            "type": "string",
                            "description": "explain only: class to explain (default: predicted)",
                        },
                    },
                }
            }
        },
    }
}


class ApiError(Exception):
    """An HTTP error answered as JSON ``{"error": code, "detail": message, "files": [...]}``."""

    def __init__(
        self, status: int, code: str, detail: str, files: list[dict[str, str]] | None = None, *, close: bool = False
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.files = status, code, detail, files or []
        self.close = close  # answer with Connection: close (the rest of the request will not be read)

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.files:
            body["files"] = self.files
        return JSONResponse(body, status_code=self.status, headers={"connection": "close"} if self.close else None)


@dataclass(frozen=True)
class Part:
    """One part of a multipart body: field name, file name (None for a text field) and its bytes."""

    name: str
    filename: str | None
    data: bytes


async def read_body(
    request: Request, limit_bytes: int, timeout_s: float = math.inf, idle_timeout_s: float = math.inf
) -> bytes:
    """The request body, at most ``limit_bytes`` bytes, counted while it streams in, within ``timeout_s``.

    A body above the limit is read on (and dropped) up to 4 x the limit so that the client can
    read the 413 answer before the connection closes; a declared Content-Length beyond that is
    refused at once.

    Args:
        timeout_s: the whole body must arrive within this many seconds of the call (a total deadline).
        idle_timeout_s: longest wait for the next chunk of the body (seconds).

    Raises:
        ApiError: 413 too large; 408 too slow (with Connection: close); 400 malformed Content-Length
            or body cut short by the client.
    """
    declared = request.headers.get("content-length")
    try:
        declared_bytes = int(declared) if declared is not None else None
    except ValueError:
        raise ApiError(400, "bad_request", f"Content-Length is not a number: {declared!r}") from None
    if declared_bytes is not None and declared_bytes > 4 * limit_bytes:
        raise _too_large(limit_bytes)
    chunks, size = [], 0
    try:
        async for chunk in _timed_stream(request, timeout_s, idle_timeout_s):
            size += len(chunk)
            if size > 4 * limit_bytes:
                break
            if size <= limit_bytes:
                chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away before sending the whole body") from None
    if size > limit_bytes:
        raise _too_large(limit_bytes)
    return b"".join(chunks)


async def _timed_stream(request: Request, timeout_s: float, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The chunks of the body as the ASGI server hands them over, each awaited with ``asyncio.wait_for``
    for at most the idle timeout and what is left of the total deadline (seconds).

    Raises:
        ApiError: 408 ``body_timeout``.
        ClientDisconnect: the client went away.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        left_s = deadline - loop.time()
        wait_s = min(idle_timeout_s, left_s)
        try:
            if wait_s <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(request.receive(), None if math.isinf(wait_s) else wait_s)
        except asyncio.TimeoutError:  # cancelling uvicorn's receive() loses no data: it waits on an event
            if left_s <= idle_timeout_s:
                detail = f"the request body did not arrive within {timeout_s:g} s (body_timeout_s)"
            else:
                detail = f"no byte of the request body for {idle_timeout_s:g} s (body_idle_timeout_s)"
            raise ApiError(408, "body_timeout", detail, close=True) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


def _too_large(limit_bytes: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"request body above the limit of {limit_bytes / 1e6:g} MB")


def parse_multipart(body: bytes, content_type: str | None) -> list[Part]:
    """Split a multipart/form-data body into its parts, in memory (python-multipart's parser).

    Raises:
        ApiError: 415 not multipart/form-data; 400 malformed body.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415, "unsupported_media_type", f"expected multipart/form-data, got {content_type or 'nothing'!r}"
        )
    parts: list[Part] = []
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        cur.update(headers={}, field=b"", value=b"", data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        cur["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        cur["value"] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][cur["field"].lower()] = cur["value"]
        cur["field"] = cur["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"] += data[start:end]

    def on_part_end() -> None:
        _, opts = parse_options_header(cur["headers"].get(b"content-disposition", b""))
        filename = opts.get(b"filename")
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        parts.append(Part(name, None if filename is None else filename.decode("utf-8", "replace"), bytes(cur["data"])))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as e:
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({e})") from None
    return parts


def image_parts(parts: list[Part], max_files: int) -> list[Part]:
    """The parts of field ``files``.

    Raises:
        ApiError: 422 none (the message lists the fields received); 413 more than ``max_files``.
    """
    files = [p for p in parts if p.name == FIELD]
    if not files:
        got = ", ".join(sorted({repr(p.name) for p in parts})) or "none"
        raise ApiError(422, "missing_field", f"no images in multipart field {FIELD!r} (fields received: {got})")
    if len(files) > max_files:
        raise ApiError(413, "too_many_files", f"{len(files)} images in one request; the limit is {max_files}")
    return files


def check_pixels(data: bytes, name: str, max_pixels: int) -> int:
    """Refuse an image whose header announces more than ``max_pixels`` pixels, before decoding it.

    Returns:
        the pixels (width x height) the header announces; 0 for bytes PIL cannot identify (they pass
        through: the Predictor reports them as not an image).

    Raises:
        ApiError: 413 too many pixels (a decompression bomb, or simply too large).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Image.DecompressionBombError as e:
        raise ApiError(413, "image_too_large", f"{name}: image too large ({e})") from None
    except Exception:  # not an image or corrupt header: the Predictor's decode names the problem
        return 0
    if w * h > max_pixels:
        raise ApiError(413, "image_too_large", f"{name}: {w} x {h} pixels, above the limit of {max_pixels:,}")
    return w * h


def check_request_pixels(files: list[Part], max_pixels: int, max_request_pixels: int) -> None:
    """Refuse a request whose images announce more than ``max_pixels`` pixels each or ``max_request_pixels``
    together, from their headers (about 15 us per image), before any of them is decoded.

    Decoding costs about 5 ns of CPU per pixel (PNG or JPEG, one core): the per-request limit bounds
    the decoding work one request can ask for, which the per-image limit alone does not (32 images of
    36 megapixels, a 1.5 MB body of PNGs, are 4.7 s of CPU).

    Raises:
        ApiError: 413 ``image_too_large`` naming each image above ``max_pixels``; 413 ``too_many_pixels``
            listing every image's pixels when their sum is above ``max_request_pixels``.
    """
    pixels, errors = [], []
    for i, f in enumerate(files):
        try:
            pixels.append(check_pixels(f.data, part_name(f, i), max_pixels))
        except ApiError as e:
            errors.append((i, e))
    if errors:
        raise file_error(files, errors)
    if sum(pixels) > max_request_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{len(files)} image(s) of {sum(pixels):,} pixels in all, above the limit of {max_request_pixels:,} "
            "pixels per request (max_request_pixels): send fewer or smaller images per request",
            [{"file": part_name(f, i), "detail": f"{p:,} pixels"} for i, (f, p) in enumerate(zip(files, pixels))],
        )


def part_name(part: Part, index: int) -> str:
    """How errors call an uploaded image: its file name, or ``#index`` without one."""
    return part.filename or f"#{index}"


def file_error(parts: list[Part], errors: list[tuple[int, Exception]]) -> ApiError:
    """One ApiError for the images that failed (413 when any is too large, else 422)."""
    files = [{"file": part_name(parts[i], i), "detail": str(e)} for i, e in errors]
    too_large = any(isinstance(e, ApiError) and e.status == 413 for _, e in errors)
    status, code = (413, "image_too_large") if too_large else (422, "bad_image")
    names = ", ".join(f["file"] for f in files)
    return ApiError(status, code, f"{len(files)} of {len(parts)} image(s) could not be used: {names}", files)
