"""Decode an image of any bit depth and mode cameras write into an 8-bit PIL image (NumPy and PIL only).

The one decoder behind :func:`defectlite.data.transforms.to_uint8`, so training (through the cache),
prediction and the service see the same pixels. Rules:

**Files.** Only regular files are opened (a symbolic link is followed to its target). A FIFO, socket or
device is refused before reading (a FIFO would block for ever), a broken symbolic link, a folder and a
permission error are each reported as what they are, never as a "corrupt" image.

**8-bit modes** (``L``, ``RGB``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``) are returned as
Pillow decodes them; the caller converts them to ``L`` or ``RGB`` with Pillow, as before this module
existed: the result is byte-identical to earlier releases (the cache and every trained model rely on it).
``LAB`` is converted to ``RGB`` first (Pillow has no ``LAB`` -> ``L`` conversion).

**High bit depths** (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I`` holding 0-65535, 16-bit RGB(A)/CMYK
files, uint16 arrays) use a fixed scale, never the image's own range: the nominal depth is 12 bits when
every sample is <= 4095, else 16 bits, and the 8-bit value keeps the top 8 bits of that depth
(``x >> 4`` or ``x >> 8``), as a camera's Mono8 output does from Mono12/Mono16. Why fixed: a per-image
min-max stretch makes a dark and a bright exposure of the same part look alike and changes predictions
with exposure; an industrial user expects value 4095 of a 12-bit camera to be white, whatever else is in
the frame. Why inferred from the data: 12-bit cameras write 16-bit files with the data in the low 12 bits
and rarely say so (PNG ``sBIT`` is informative only: a conforming writer has already scaled the samples to
16 bits). The rule is exact on an 8-bit image stored as ``v * 257`` (16-bit) or ``v * 16`` (12-bit).
Limits: a 16-bit image with every sample <= 4095 (darker than 1/16 of full scale) is read as 12-bit, 16
times brighter, and so is an 8-bit image stored unscaled in a 16- or 32-bit container (16 times too
dark); 10- and 14-bit data in a 16-bit container are read as 12- and 16-bit (4 times too dark).
Negative or > 65535 values (``I`` mode) are refused.

**Float** (``F``, float arrays): values must lie in [0, 1] (the float-image convention of scikit-image and
OpenCV); 8-bit value = ``round(x * 255)``. Any other range is refused, as are NaN and inf: there is no
nominal scale to map it to, and a min-max stretch would depend on exposure (see above).

**Alpha** (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P``/``L``/``RGB`` with a ``transparency`` key):
composited on black, ``round(value * alpha / 255)``. An opaque alpha channel therefore changes nothing.
Why black: a fully transparent pixel's stored colour is invisible in every viewer and arbitrary (tools
keep or zero it), so it must not reach the model; transparency in inspection images marks "outside the
part", which masked camera ROIs and zero padding already show as black. Refusing would make masked data
sets unusable for no gain.

Refused: every other mode (e.g. ``I;16S`` with negative values, 12-bit data in a 16-bit grey+alpha PNG),
with a :class:`~defectlite.errors.DataError` naming the file and the mode.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from defectlite.errors import DataError

ImageSource = Union[str, Path, bytes, Image.Image, np.ndarray]

EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
HIGH_BIT_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
SUPPORTED_MODES = EIGHT_BIT_MODES | ALPHA_MODES | HIGH_BIT_GREY_MODES | {"F", "LAB"}

_SIXTEEN_BIT_RAWMODE = re.compile(r";16[BLN]$")  # in a colour image: Pillow keeps each sample's high byte only
_SWAPPABLE_RAWMODE = re.compile(r"^(?P<base>RGB|RGBX|RGBA|CMYK);16(?P<order>[BLN])$")
_OTHER_ORDER = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def read_image_file(path: str | Path, name: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (symbolic links followed).

    The file type is checked before anything is read, and again on the open descriptor (opened
    non-blocking, so a FIFO swapped in meanwhile cannot hang the caller).

    Raises:
        DataError: missing file; broken symbolic link (names its target); symbolic-link loop; a folder;
            not a regular file (FIFO, socket, device); permission denied; any other read error.
    """
    label = name or str(path)
    try:
        _check_regular(os.stat(path).st_mode, label)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            _check_regular(os.fstat(fd).st_mode, label)
            return f.read()
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{label}: broken symbolic link (its target {os.readlink(path)} does not exist)") from None
        raise DataError(f"{label}: file not found") from None
    except PermissionError:
        raise DataError(
            f"{label}: permission denied (this user may not read the file, or may not enter its folder)"
        ) from None
    except OSError as e:
        raise DataError(f"{label}: cannot read the file ({e.strerror or e})") from None


def _check_regular(mode: int, label: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise DataError(f"{label}: is a folder, not an image")
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise DataError(f"{label}: is {kind}, not an image file; refusing to read it")


def decode(source: ImageSource, name: str | None = None, mode: str | None = None) -> Image.Image:
    """Open an image fully and bring it to 8 bits by the rules of this module.

    Args:
        source: a file path, encoded bytes, a PIL image (taken as Pillow decoded it), or an array
            (H, W) / (H, W, C) of uint8, uint16 (C = 1 or 3; high-bit rule) or float (C = 1 or 3; [0, 1]).
        name: how to call the image in errors (default: the path).
        mode: the PIL mode the caller converts to next ("L" or "RGB"), as a hint: a JPEG is then
            decoded straight into it at full size (``Image.draft``; for "L" only the luma plane is
            decoded, about 20 % faster per NEU image than RGB then ``convert("L")``).

    Returns:
        A loaded PIL image in an 8-bit mode (one of ``EIGHT_BIT_MODES``), same size as the source:
        convert it to "L" or "RGB".

    Raises:
        DataError: see :func:`read_image_file`; not an image, truncated or corrupt, larger than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb); a mode, value range or array type the
            rules refuse (the message says which).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, np.ndarray):
        return _to_8bit(_from_array(source, label), label)
    if isinstance(source, Image.Image):
        return _to_8bit(_load(source, label), label)
    data = source if isinstance(source, bytes) else read_image_file(source, label)
    img = _open(data, label)
    if mode is not None and img.format == "JPEG":
        img.draft(mode, img.size)
    wide = [r for r in map(_tile_rawmode, img.tile) if _SIXTEEN_BIT_RAWMODE.search(r)]
    wide = [] if img.mode in HIGH_BIT_GREY_MODES else wide  # these keep every bit
    img = _load(img, label)
    if wide and _colour(np.asarray(img), img.mode).max(initial=0) <= 0x0F:  # every sample <= 4095: 12-bit data
        img = _twelve_bit_colour(data, img, wide[0], label)
    return _to_8bit(img, label)


def _open(data: bytes, label: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(f"{label}: not a readable image file") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{label}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{label}: unsupported or damaged image header ({e})") from None


def _load(img: Image.Image, label: str) -> Image.Image:
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise DataError(f"{label}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{label}: corrupt or truncated image ({e})") from None
    return img


def _tile_rawmode(tile) -> str:
    args = tile[3]
    return args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""


def _colour(a: np.ndarray, mode: str) -> np.ndarray:
    """The colour samples of a 16-bit colour image's array (H, W, C): all but the alpha plane of RGBA."""
    return a[..., :3] if mode == "RGBA" else a


def _twelve_bit_colour(data: bytes, hi: Image.Image, rawmode: str, label: str) -> Image.Image:
    """Decode a 16-bit colour file holding 12-bit data again for its low bytes (Pillow keeps only the high byte).

    Pillow's unpacker of the other byte order reads the low byte of each sample: high << 8 | low is then
    the full 16-bit sample. Alpha keeps the high byte (alpha is full-scale 16-bit).
    """
    m = _SWAPPABLE_RAWMODE.match(rawmode)
    if m is None:
        raise DataError(f"{label}: 12-bit data in a 16-bit {rawmode} image is not supported (save it as grey or RGB)")
    swapped = f"{m['base']};16{_OTHER_ORDER[m['order']]}"
    lo = _open(data, label)
    try:
        lo.tile = [_with_rawmode(t, swapped) for t in lo.tile]
        lo.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{label}: 12-bit data in a 16-bit {hi.mode} image Pillow cannot read fully ({e})") from None
    full = np.asarray(hi, np.uint16) << 8 | np.asarray(lo, np.uint16)
    out = np.asarray(hi).copy()
    _colour(out, hi.mode)[...] = _scale_int(_colour(full, hi.mode), label)
    return Image.frombytes(hi.mode, hi.size, out.tobytes())


def _with_rawmode(tile: tuple, rawmode: str) -> tuple:
    """``tile`` (Pillow's (codec, extents, offset, args)) decoding to ``rawmode`` instead."""
    args = tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _scale_int(a: np.ndarray, label: str) -> np.ndarray:
    """Integer samples 0-65535 -> uint8 by the fixed bit-depth rule (12-bit if max <= 4095 else 16-bit; top 8 bits).

    Raises:
        DataError: negative samples or samples above 65535.
    """
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 0xFFFF:
        raise DataError(f"{label}: integer samples in [{lo}, {hi}]; only 0-65535 (8- to 16-bit) images are supported")
    shift = 4 if hi <= 0x0FFF else 8
    return (a.astype(np.uint16) >> shift).astype(np.uint8)


def _scale_float(a: np.ndarray, label: str) -> np.ndarray:
    """Float samples in [0, 1] -> uint8 ``round(x * 255)``.

    Raises:
        DataError: NaN or infinite samples; samples outside [0, 1].
    """
    if not np.isfinite(a).all():
        raise DataError(f"{label}: float image holds NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise DataError(
            f"{label}: float image with values in [{lo:g}, {hi:g}]; only [0, 1] is defined (scale it to [0, 1], "
            "or save it as an 8- or 16-bit integer image)"
        )
    return np.rint(a.astype(np.float64) * 255).astype(np.uint8)


def _from_array(a: np.ndarray, label: str) -> Image.Image:
    """An (H, W) / (H, W, C) array as a PIL image: uint8 as it is, uint16 and float (C = 1 or 3) by the rules."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim in (2, 3) and a.dtype == np.uint8:
        return Image.fromarray(a)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3):
        if a.dtype == np.uint16:
            return Image.fromarray(_scale_int(a, label))
        if a.dtype.kind == "f":
            return Image.fromarray(_scale_float(a, label))
    raise DataError(
        f"{label}: expected an array (H, W) or (H, W, C) of uint8, or (H, W) / (H, W, 3) of uint16 or float; "
        f"got {a.dtype} {a.shape}"
    )


def _to_8bit(img: Image.Image, label: str) -> Image.Image:
    """A loaded image in any supported mode -> an 8-bit image (one of ``EIGHT_BIT_MODES``), by the module's rules."""
    if img.mode in ALPHA_MODES or (img.mode in EIGHT_BIT_MODES and "transparency" in img.info):
        return _on_black(img)
    if img.mode in EIGHT_BIT_MODES:
        return img
    if img.mode in HIGH_BIT_GREY_MODES:
        return Image.fromarray(_scale_int(np.asarray(img), label))
    if img.mode == "F":
        return Image.fromarray(_scale_float(np.asarray(img), label))
    if img.mode == "LAB":
        return img.convert("RGB")
    raise DataError(f"{label}: unsupported image mode {img.mode!r} (supported: {', '.join(sorted(SUPPORTED_MODES))})")


def _on_black(img: Image.Image) -> Image.Image:
    """Composite on black: ``round(value * alpha / 255)`` per colour sample; result "L" or "RGB"."""
    grey = img.mode in ("L", "LA", "La", "1")
    a = np.asarray(img.convert("LA" if grey else "RGBA"), dtype=np.uint32)
    out = ((a[..., :-1] * a[..., -1:] + 127) // 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if grey else out)
