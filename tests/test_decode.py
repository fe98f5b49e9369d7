"""The one decoder (every bit depth and mode), the file checks before it and the symlink rules of the readers.

Each mode test writes a real NEU image in that mode or bit depth and checks that ``to_uint8`` gives the
array of the 8-bit original. That is also the check that predictions agree: after decoding, preprocessing
is a pure function of the decoded uint8 array (``to_uint8`` resizes it, ``normalize`` maps it to the
model's input), so an equal array gives every model the same input, hence the same prediction.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NEU_CLASSES, link_neu_subset
from defectlite.data import prepare, read_dataset
from defectlite.data.cache import decode_images
from defectlite.data.transforms import decode, to_uint8
from defectlite.errors import DataError

SIZES = [((200, 200), 1), ((64, 64), 1), ((48, 80), 3)]  # full size (no resize), then resized grey and RGB


@pytest.fixture(params=["crazing_1", "patches_7", "scratches_30"])
def grey(shared_data, request) -> np.ndarray:
    """A NEU image as the 8-bit decoder sees it: uint8 (200, 200)."""
    return to_uint8(shared_data / "neu-surface-defect" / "images" / f"{request.param}.jpg", (200, 200))[0]


def _png(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (Pillow cannot write 16-bit colour): uint16 (H, W, C), colour type 2 RGB, 4 grey+alpha, 6 RGBA."""
    h, w = arr.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in arr)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _tiff(arr: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGB or RGBA TIFF (Pillow cannot write these): uint16 (H, W, 3 or 4)."""
    h, w, c = arr.shape
    pixels = arr.astype("<u2").tobytes()
    bits_at = 8 + len(pixels)  # BitsPerSample (c shorts) follow the pixels, then the IFD
    short, long = (3, "<HH"), (4, "<I")  # TIFF type, and how a value fills the 4-byte value field

    def entry(tag: int, kind: tuple[int, str], value: int) -> bytes:
        return struct.pack("<HHI", tag, kind[0], 1) + struct.pack(kind[1], value, *([0] * (kind is short)))

    entries = [
        entry(256, long, w),
        entry(257, long, h),
        struct.pack("<HHII", 258, 3, c, bits_at),  # c shorts do not fit the value field: it holds their offset
        entry(259, short, 1),  # no compression
        entry(262, short, 2),  # RGB
        entry(273, long, 8),  # the one strip starts after the header
        entry(277, short, c),
        entry(278, long, h),
        entry(279, long, len(pixels)),
    ] + ([entry(338, short, 2)] if c == 4 else [])  # the 4th sample is unassociated alpha
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    return struct.pack("<2sHI", b"II", 42, bits_at + 2 * c) + pixels + struct.pack(f"<{c}H", *[16] * c) + ifd


def _write(tmp_path: Path, name: str, img: Image.Image | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(img) if isinstance(img, bytes) else img.save(path)
    return path


def _assert_decodes_as(path: Path | Image.Image | np.ndarray, grey: np.ndarray, tolerance: int = 0) -> None:
    """``to_uint8(path)`` equals (within ``tolerance`` grey levels) the 8-bit image ``grey``, at every size in SIZES."""
    original = Image.fromarray(grey)
    for size, channels in SIZES:
        got, want = to_uint8(path, size, channels), to_uint8(original, size, channels)
        diff = np.abs(got.astype(int) - want.astype(int)).max()
        assert diff <= tolerance, f"{size} x {channels}: differs by up to {diff} grey levels"


def _sixteen(grey: np.ndarray, scale: int) -> np.ndarray:
    return grey.astype(np.uint16) * scale


# --- 8-bit images are decoded exactly as before --------------------------------------------------------------------

GOLDEN = {  # SHA-1 of to_uint8 on the files below, computed before the decoder was rewritten (Pillow 13.0)
    ((64, 64), 1): "eca5f075f8cbc9cdb5f029aba53728fabb1dc912",
    ((200, 200), 1): "d42abfece05239ba42c7dce049da2713e17b34c2",
    ((64, 96), 3): "12153da360ce6f3b2eb7d3986c64c07057756413",
}


def test_eight_bit_images_decode_byte_identical_to_before(shared_data):
    """The cache and every trained model depend on the 8-bit output: it must not change (NEU JPEGs: YCbCr JPEGs)."""
    files = [shared_data / "neu-surface-defect" / "images" / f"{c}_{n}.jpg" for c in NEU_CLASSES for n in (1, 2, 3)]
    for (size, channels), digest in GOLDEN.items():
        for source in (lambda p: p, lambda p: p.read_bytes()):  # prediction reads paths, the cache bytes
            arrays = np.stack([to_uint8(source(p), size, channels) for p in files])
            assert hashlib.sha1(arrays.tobytes()).hexdigest() == digest, "8-bit decoding changed (or Pillow did)"


# --- every mode and bit depth decodes to the 8-bit original ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, make",
    [
        ("grey.png", lambda g: Image.fromarray(g)),
        ("rgb.png", lambda g: Image.fromarray(g).convert("RGB")),
        ("grey16.png", lambda g: Image.fromarray(_sixteen(g, 257))),  # I;16 (PNG stores big-endian)
        ("grey16.tif", lambda g: Image.fromarray(_sixteen(g, 257))),  # I;16
        ("grey16b.tif", lambda g: Image.frombytes("I;16B", g.shape[::-1], _sixteen(g, 257).astype(">u2").tobytes())),
        ("grey12.tif", lambda g: Image.fromarray(_sixteen(g, 16))),  # 12-bit data in a 16-bit file
        ("grey12.png", lambda g: Image.fromarray(_sixteen(g, 16))),
        ("int32.tif", lambda g: Image.fromarray(_sixteen(g, 257).astype(np.int32))),  # mode I
        ("int32_12.tif", lambda g: Image.fromarray(_sixteen(g, 16).astype(np.int32))),
        ("float.tif", lambda g: Image.fromarray((g / 255).astype(np.float32))),  # mode F
        ("rgb16.png", lambda g: _png(np.repeat(_sixteen(g, 257)[..., None], 3, 2), 2)),
        ("rgb12.png", lambda g: _png(np.repeat(_sixteen(g, 16)[..., None], 3, 2), 2)),
        ("rgb16.tif", lambda g: _tiff(np.repeat(_sixteen(g, 257)[..., None], 3, 2))),
        ("rgb12.tif", lambda g: _tiff(np.repeat(_sixteen(g, 16)[..., None], 3, 2))),
        ("rgba12.png", lambda g: _png(np.stack([_sixteen(g, 16)] * 3 + [np.full_like(g, 65535, np.uint16)], 2), 6)),
        ("rgba12.tif", lambda g: _tiff(np.stack([_sixteen(g, 16)] * 3 + [np.full_like(g, 65535, np.uint16)], 2))),
        ("la16.png", lambda g: _png(np.stack([_sixteen(g, 257), np.full_like(g, 65535, np.uint16)], 2), 4)),
        ("rgba.png", lambda g: Image.fromarray(g).convert("RGBA")),  # opaque alpha
        ("la.png", lambda g: Image.fromarray(g).convert("LA")),
        ("palette.png", lambda g: Image.fromarray(g).convert("P")),
        ("palette_opaque_trns.png", lambda g: _palette_with_transparency(g, bytes([255] * 256))),  # all opaque
        ("cmyk.tif", lambda g: Image.fromarray(g).convert("RGB").convert("CMYK")),
    ],
)
def test_each_mode_decodes_exactly_as_the_eight_bit_original(grey, tmp_path, name, make):
    """Exact: 16-bit = v * 257 and 12-bit = v * 16 keep their top 8 bits, float = v / 255 rounds back to v."""
    path = _write(tmp_path, name, make(grey))
    _assert_decodes_as(path, grey)


def _palette_with_transparency(grey: np.ndarray, transparency: int | bytes) -> Image.Image:
    """``grey`` as a palette image with a PNG tRNS chunk: one transparent index, or an alpha per palette entry."""
    img = Image.fromarray(grey).convert("P")  # the palette is the grey ramp: index = grey value
    img.info["transparency"] = transparency
    return img


@pytest.mark.parametrize("mode", ["YCbCr", "LAB"])
def test_ycbcr_and_lab_decode_within_one_grey_level(grey, tmp_path, mode):
    """Within 1: Pillow's RGB -> YCbCr / LAB conversion that wrote the file rounds."""
    _assert_decodes_as(_write(tmp_path, f"x_{mode}.tif", Image.fromarray(grey).convert("RGB").convert(mode)), grey, 1)


def test_in_memory_images_and_arrays_follow_the_same_rules(grey):
    """Predictor and the service also take PIL images and arrays (a camera SDK hands out uint16 frames)."""
    for img in (Image.frombytes("I;16L", grey.shape[::-1], _sixteen(grey, 257).tobytes()), Image.fromarray(grey, "L")):
        _assert_decodes_as(img, grey)
    _assert_decodes_as(Image.fromarray(grey).convert("RGB").convert("HSV"), grey)
    for arr in (_sixteen(grey, 16), _sixteen(grey, 257), grey / 255, np.repeat(_sixteen(grey, 257)[..., None], 3, 2)):
        _assert_decodes_as(arr, grey)


def test_bilevel_images_decode_as_black_and_white(grey, tmp_path):
    bilevel = Image.fromarray(grey).convert("1", dither=Image.Dither.NONE)
    _assert_decodes_as(_write(tmp_path, "bilevel.png", bilevel), np.where(grey >= 128, 255, 0).astype(np.uint8))


# --- the rules: fixed bit-depth scale, float range, alpha on black -------------------------------------------------


def test_high_bit_depth_uses_a_fixed_scale_inferred_from_the_data():
    """<= 4095: 12-bit (x >> 4); above: 16-bit (x >> 8). Never a per-image stretch: exposure keeps its meaning."""
    assert to_uint8(np.array([[0, 4095]], np.uint16), (1, 2)).tolist() == [[[0, 255]]]
    assert to_uint8(np.array([[0, 2048]], np.uint16), (1, 2)).tolist() == [[[0, 128]]]  # a dark 12-bit frame stays dark
    assert to_uint8(np.array([[0, 4096]], np.uint16), (1, 2)).tolist() == [[[0, 16]]]
    assert to_uint8(np.array([[0, 65535]], np.uint16), (1, 2)).tolist() == [[[0, 255]]]


def test_sixteen_bit_image_is_no_longer_clipped_to_white(grey, tmp_path):
    """The bug: I;16 -> L saturated 98.8 % of an NEU image's pixels to 255."""
    x = to_uint8(_write(tmp_path, "g16.png", Image.fromarray(_sixteen(grey, 257))), (200, 200))
    assert (x == 255).mean() < 0.05 and np.array_equal(x[0], grey)


@pytest.mark.parametrize(
    "values, match",
    [
        (np.array([[0.0, np.nan]], np.float32), "NaN or infinite"),
        (np.array([[0.0, np.inf]], np.float32), "NaN or infinite"),
        (np.array([[0.0, 255.0]], np.float32), r"values in \[0, 255\]; only \[0, 1\]"),
        (np.array([[-0.5, 0.5]], np.float32), r"values in \[-0.5, 0.5\]"),
    ],
)
def test_float_images_outside_zero_one_or_not_finite_are_refused(tmp_path, values, match):
    path = _write(tmp_path, "bad_float.tif", Image.fromarray(values))
    with pytest.raises(DataError, match=f"bad_float.tif: float image .*{match}"):
        to_uint8(path, (8, 8))


def test_integer_images_outside_sixteen_bits_are_refused(tmp_path):
    for values in ([[0, -1]], [[0, 70000]]):
        path = _write(tmp_path, "int.tif", Image.fromarray(np.array(values, np.int32)))
        with pytest.raises(DataError, match=r"int.tif: integer samples in \[.*\]; only 0-65535"):
            to_uint8(path, (8, 8))


def test_twelve_bit_grey_alpha_png_is_refused_not_darkened(grey, tmp_path):
    """Pillow keeps only the high byte of 16-bit grey+alpha, which of 12-bit data is 16 times too dark."""
    path = _write(
        tmp_path, "la12.png", _png(np.stack([_sixteen(grey, 16), np.full_like(grey, 65535, np.uint16)], 2), 4)
    )
    with pytest.raises(DataError, match="la12.png: 12-bit data in a 16-bit LA;16B image is not supported"):
        to_uint8(path, (8, 8))


def test_alpha_is_composited_on_black(grey, tmp_path):
    """value * alpha / 255: half-transparent pixels are half as bright, transparent ones black (colour ignored)."""
    alpha = np.zeros_like(grey)
    alpha[:, 100:] = 128
    alpha[:50] = 255
    want = np.where(alpha == 0, 0, np.where(alpha == 255, grey, (grey.astype(int) * 128 + 127) // 255)).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, alpha])
    _assert_decodes_as(_write(tmp_path, "rgba.png", Image.fromarray(rgba)), want)
    _assert_decodes_as(_write(tmp_path, "la.png", Image.fromarray(np.dstack([grey, alpha]))), want)
    key = int(grey[0, 0])  # a palette index marked transparent: its pixels become black
    palette = _write(tmp_path, "p.png", _palette_with_transparency(grey, key))
    _assert_decodes_as(palette, np.where(grey == key, 0, grey).astype(np.uint8))


def test_a_cache_written_by_the_old_decoder_is_not_reused(grey, tmp_path, monkeypatch):
    """The cache key holds path, size and mtime: only _CACHE_VERSION tells a 16-bit file's old, saturated entry."""
    import defectlite.data.cache as cache

    path = _write(tmp_path, "g16.png", Image.fromarray(_sixteen(grey, 257)))
    with monkeypatch.context() as old:
        old.setattr(cache, "_CACHE_VERSION", 1)
        old.setattr(cache, "to_uint8", lambda *a, **k: np.full((1, 200, 200), 255, np.uint8))  # as convert("L") did
        cache.decode_images([path], (200, 200), progress=False)
    assert np.array_equal(cache.decode_images([path], (200, 200), progress=False).images[0, 0], grey)


def test_decode_returns_an_eight_bit_image(grey):
    """Grad-CAM shows ``decode(...)`` as "the image the model sees": it must be 8-bit too."""
    img = decode(Image.fromarray(_sixteen(grey, 257)), mode="L")
    assert img.mode == "L" and np.array_equal(np.asarray(img), grey)


# --- files: only regular files are read; each problem is named ----------------------------------------------------


def _finishes_within(seconds: float, fn) -> BaseException | None:
    """Run ``fn`` in a thread; fail (not hang) if it blocks. Returns the exception it raised, if any."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else pytest.fail(f"blocked for more than {seconds} s")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "camera.png"
    os.mkfifo(path)
    yield path
    try:  # unblock a reader that a regression left waiting: a FIFO opens once both ends exist
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_fifo_is_refused_quickly_by_predict_and_the_cache(fifo):
    err = _finishes_within(10, lambda: to_uint8(fifo, (8, 8)))
    assert isinstance(err, DataError) and "camera.png: is a FIFO (named pipe), not an image file" in str(err)
    outcome = []
    assert (
        _finishes_within(10, lambda: outcome.append(decode_images([fifo], (8, 8), skip_bad=True, use_cache=False)))
        is None
    )
    assert outcome[0].skipped == [(str(fifo), "is a FIFO (named pipe), not an image file; refusing to read it")]


def _deny(monkeypatch, path: Path) -> None:
    """Opening ``path`` fails as for a file of another user without read permission (chmod is no use as root)."""

    def guard(opener):
        def wrapped(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return opener(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "open", guard(os.open))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))


def test_permission_denied_is_reported_as_such(grey, tmp_path, monkeypatch):
    path = _write(tmp_path, "locked.png", Image.fromarray(grey))
    _deny(monkeypatch, path)
    with pytest.raises(DataError, match="locked.png: permission denied") as err:
        to_uint8(path, (8, 8))
    assert "corrupt" not in str(err.value)
    skipped = decode_images([path], (8, 8), skip_bad=True, use_cache=False).skipped
    assert skipped == [(str(path), "permission denied (this user may not read the file, or may not enter its folder)")]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_by_file_mode(tmp_path):
    path = _write(tmp_path, "locked.png", Image.new("L", (8, 8)))
    path.chmod(0)
    with pytest.raises(DataError, match="locked.png: permission denied"):
        to_uint8(path, (8, 8))


def test_broken_link_folder_and_missing_file_are_named(tmp_path):
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"broken.png: broken symbolic link \(its target .*gone.png does not exist\)"):
        to_uint8(tmp_path / "broken.png", (8, 8))
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DataError, match="folder.png: is a folder, not an image"):
        to_uint8(tmp_path / "folder.png", (8, 8))
    with pytest.raises(DataError, match="nothing.png: file not found"):
        to_uint8(tmp_path / "nothing.png", (8, 8))


# --- folder readers: symlinks resolved, nothing read twice, broken links reported ---------------------------------


@pytest.fixture
def two_classes(shared_data, tmp_path) -> Path:
    """``<tmp>/data/{crazing,patches}/`` holding 3 linked NEU images each (folder layout)."""
    src = shared_data / "neu-surface-defect" / "images"
    root = tmp_path / "data"
    for c in ("crazing", "patches"):
        (root / c).mkdir(parents=True)
        for n in (1, 2, 3):
            (root / c / f"{n}.jpg").symlink_to(src / f"{c}_{n}.jpg")
    return root


def test_a_link_to_the_data_folder_is_not_a_class(two_classes):
    """The bug: ``ln -s . DATA/loopcls`` gave a class "loopcls" holding every image."""
    (two_classes / "loopcls").symlink_to(".")
    with pytest.raises(DataError, match=r"loopcls/loopcls is .* again \(already listed as .*/loopcls\)"):
        read_dataset(two_classes)
    with pytest.raises(DataError, match="loopcls"):
        read_dataset(two_classes, format="folder")


def test_a_folder_linked_inside_itself_is_refused(two_classes):
    (two_classes / "crazing" / "again").symlink_to("..")
    with pytest.raises(DataError, match=r"crazing/again/crazing is .*/crazing again \(already listed as .*/crazing\)"):
        read_dataset(two_classes, format="folder")


def test_linked_folders_elsewhere_are_read_once(two_classes, tmp_path, shared_data):
    """A class folder, or a folder inside one, may be a link to a folder elsewhere: read like a real one."""
    elsewhere = link_neu_subset(tmp_path / "elsewhere", 1, start=4)
    (two_classes / "crazing" / "more").symlink_to(elsewhere)
    moved = tmp_path / "moved_patches"
    (two_classes / "patches").rename(moved)
    (two_classes / "patches").symlink_to(moved)
    index = read_dataset(two_classes)
    assert index.counts() == {"crazing": 3 + 6, "patches": 3}


@pytest.mark.parametrize("where", ["same class", "other class"])
def test_one_file_reached_twice_is_refused(two_classes, where):
    folder = two_classes / ("crazing" if where == "same class" else "patches")
    (folder / "dup.jpg").symlink_to(two_classes / "crazing" / "1.jpg")
    with pytest.raises(DataError, match=r"1 image file\(s\) listed twice.*\n  .*crazing/1.jpg and .*dup.jpg are both"):
        read_dataset(two_classes)


def test_same_file_twice_in_the_neu_layout_is_refused(shared_data, tmp_path):
    folder = link_neu_subset(tmp_path / "images", 2)
    (folder / "crazing_9.jpg").symlink_to(folder / "crazing_1.jpg")
    with pytest.raises(DataError, match="listed twice"):
        read_dataset(tmp_path)


def test_broken_links_are_reported_unless_skip_bad(shared_data, tmp_path):
    """Chosen: a broken link named like an image is a bad image: DataError naming it, or listed with skip_bad.

    Same rule as a corrupt file (the user meant it to be in the data set), so ``--skip-bad`` covers both.
    """
    folder = link_neu_subset(tmp_path / "images", 2)
    (folder / "crazing_9.jpg").symlink_to(tmp_path / "unmounted" / "crazing_9.jpg")
    with pytest.raises(DataError, match=r"crazing_9.jpg: broken symbolic link .*\n.*--skip-bad"):
        prepare(tmp_path, size=(32, 32), progress=False)
    d = prepare(tmp_path, size=(32, 32), skip_bad=True, progress=False)
    assert len(d.paths) == 12 and [Path(p).name for p, _ in d.skipped] == ["crazing_9.jpg"]


def test_a_broken_class_folder_link_is_an_error(two_classes, tmp_path):
    (two_classes / "scratches").symlink_to(tmp_path / "unmounted")
    with pytest.raises(DataError, match="scratches: broken symbolic link where a class folder is expected"):
        read_dataset(two_classes, format="folder")
