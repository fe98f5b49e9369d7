"""Readers, splits, leak detection and bad-input errors, on real NEU and casting images."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NEU_CLASSES, link_casting_subset, link_neu_subset
from defectlite.data import detect_format, prepare, read_dataset, stratified_split
from defectlite.data.cache import decode_images
from defectlite.data.splits import find_leaks
from defectlite.errors import DataError


def test_neu_reader_takes_class_from_file_name_prefix(neu_small):
    index = read_dataset(neu_small)
    assert index.format == "neu"
    assert index.classes == NEU_CLASSES  # "rolled-in_scale" keeps its underscore
    assert index.counts() == dict.fromkeys(NEU_CLASSES, 20)
    for s in index.samples:
        assert s.path.name.startswith(index.classes[s.label] + "_")


def test_full_neu_is_detected_and_read(shared_data):
    index = read_dataset(shared_data / "neu-surface-defect")
    assert index.format == "neu"
    assert len(index.samples) == 1800 and set(index.counts().values()) == {300}


def test_folder_reader_and_presplit_casting(shared_data, tmp_path):
    dest = link_casting_subset(tmp_path / "casting", 6)
    assert detect_format(dest) == "folder"
    index = read_dataset(dest)
    assert index.classes == ["def_front", "ok_front"] and index.presplit
    assert Counter(s.split for s in index.samples) == {"train": 12, "test": 12}
    # a plain class-per-folder tree (no split folders)
    flat = read_dataset(dest / "train", format="folder")
    assert not flat.presplit and len(flat.samples) == 12


def test_split_is_deterministic_and_stratified():
    labels = [c for c in range(6) for _ in range(300)]
    a, b = stratified_split(labels, seed=3), stratified_split(labels, seed=3)
    assert a == b
    assert a != stratified_split(labels, seed=4)
    counts = Counter(a)
    assert counts == {"train": 1440, "val": 180, "test": 180}  # the papers' NEU-CLS split
    for split, n in (("val", 30), ("test", 30), ("train", 240)):
        per_class = Counter(y for y, s in zip(labels, a) if s == split)
        assert set(per_class.values()) == {n}


def test_prepare_writes_and_reuses_splits_csv(neu_small, tmp_path):
    csv = tmp_path / "run" / "splits.csv"
    d1 = prepare(neu_small, size=(64, 64), seed=1, splits_csv=csv, progress=False)
    assert csv.is_file() and d1.counts() == {"train": 96, "val": 12, "test": 12}
    assert d1.images.shape == (120, 1, 64, 64) and d1.images.dtype == np.uint8
    # another seed with the same file must reuse the file's split, not re-split
    d2 = prepare(neu_small, size=(64, 64), seed=99, splits_csv=csv, progress=False)
    assert list(d2.splits) == list(d1.splits) and d2.paths == d1.paths


def test_presplit_tree_gets_val_from_train(shared_data, tmp_path):
    link_casting_subset(tmp_path, 10)
    d = prepare(tmp_path, size=(32, 32), seed=0, drop_leaks=False, progress=False)
    test_paths = {p for p, s in zip(d.paths, d.splits) if s == "test"}
    assert all(p.startswith("test/") for p in test_paths) and len(test_paths) == 20
    assert d.counts()["val"] == 2 * round(10 * 0.1 / 0.9)


def test_casting_leaks_are_found_and_dropped(shared_data, tmp_path):
    """Byte-identical train/test files in the casting set are reported and left out of the scores by default
    (main kept them unless --drop-leaks was given)."""
    src = shared_data / "casting-product"
    by_hash = {hashlib.sha1(f.read_bytes()).hexdigest(): f for f in sorted((src / "train/ok_front").iterdir())}
    leaked = [
        f for f in sorted((src / "test/ok_front").iterdir()) if hashlib.sha1(f.read_bytes()).hexdigest() in by_hash
    ]
    assert len(leaked) == 64  # as the data set's README says
    for split, cls in (("train", "ok_front"), ("train", "def_front"), ("test", "ok_front"), ("test", "def_front")):
        (tmp_path / split / cls).mkdir(parents=True)
    for f in leaked[:3]:
        twin = by_hash[hashlib.sha1(f.read_bytes()).hexdigest()]
        os.symlink(twin, tmp_path / "train/ok_front" / twin.name)
        os.symlink(f, tmp_path / "test/ok_front" / f.name)
    for split in ("train", "test"):
        for f in sorted((src / split / "def_front").iterdir())[:4]:
            os.symlink(f, tmp_path / split / "def_front" / f.name)
        os.symlink(sorted((src / split / "ok_front").iterdir())[-1], tmp_path / split / "ok_front" / "extra.jpeg")
    kept = prepare(tmp_path, size=(32, 32), ratios=(1.0, 0.0, 0.0), seed=0, drop_leaks=False, progress=False)
    assert len(kept.leaks) == 3 and {leak.split for leak in kept.leaks} == {"test"}
    assert kept.counts()["test"] == 3 + 4 + 1
    dropped = prepare(tmp_path, size=(32, 32), ratios=(1.0, 0.0, 0.0), seed=0, progress=False)
    assert dropped.dropped_leaks and dropped.counts()["test"] == 4 + 1
    assert any("left out of the evaluated split" in w for w in dropped.warnings)


def test_duplicates_land_in_one_split_and_label_conflicts_are_warned(shared_data, tmp_path):
    """A folder defectlite splits keeps identical files together; identical files under two classes and a class
    too small to reach val/test are warnings of the run (main said nothing)."""
    src = shared_data / "neu-surface-defect" / "images"
    for cls in ("a", "b", "tiny"):
        (tmp_path / cls).mkdir()
    files = sorted(src.glob("crazing_*.jpg"))[:30]
    for i, f in enumerate(files[:20]):  # byte-identical copies in tmp (one file linked twice is refused)
        shutil.copy(f, tmp_path / "a" / f"x{i}.jpg")
        shutil.copy(f, tmp_path / "a" / f"y{i}.jpg")  # every image twice in one class: 20 pairs
    for f in files[20:30]:
        os.symlink(f, tmp_path / "b" / f.name)
    shutil.copy(files[0], tmp_path / "tiny" / "same_as_a.jpg")  # the same bytes labelled "tiny" and "a"
    d = prepare(tmp_path, size=(32, 32), seed=3, progress=False)
    by_digest = {}
    for p, s in zip(d.paths, d.splits):
        by_digest.setdefault(hashlib.sha1((tmp_path / p).read_bytes()).hexdigest(), set()).add(s)
    assert all(len(s) == 1 for s in by_digest.values()) and not d.leaks
    assert any(w.startswith("label conflict") and "tiny" in w for w in d.warnings)
    assert any("'tiny' has 1 image(s) and none in val / test" in w for w in d.warnings)


def test_find_leaks_ignores_train_only_duplicates():
    leaks = find_leaks(["a", "b", "c", "d"], ["train", "train", "val", "test"], ["x", "x", "y", "y"])
    assert [(leak.path, leak.duplicate_of) for leak in leaks] == [("d", "c")]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found: .*nowhere"):
        read_dataset(tmp_path / "nowhere")


def test_empty_class_folder_is_named(neu_small, tmp_path):
    for c in ("good", "bad"):
        (tmp_path / c).mkdir()
    shutil.copy(next(neu_small.glob("images/crazing_*")), tmp_path / "good" / "a.jpg")
    with pytest.raises(DataError, match=r"class folder .*bad holds no images"):
        read_dataset(tmp_path)


def test_single_class_is_refused(tmp_path):
    link_neu_subset(tmp_path / "all", 3)
    for f in (tmp_path / "all").iterdir():
        if not f.name.startswith("crazing"):
            f.unlink()
    with pytest.raises(DataError, match="single class \\(crazing\\)"):
        read_dataset(tmp_path / "all")


def _corrupt_copies(folder: Path, source: Path) -> tuple[Path, Path]:
    truncated = folder / "crazing_900.jpg"
    truncated.write_bytes(source.read_bytes()[:2000])
    garbage = folder / "inclusion_900.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    return truncated, garbage


def test_bad_images_fail_with_their_names_or_are_skipped(tmp_path):
    folder = link_neu_subset(tmp_path / "images", 3)
    truncated, garbage = _corrupt_copies(folder, folder / "crazing_1.jpg")
    with pytest.raises(DataError) as err:
        prepare(tmp_path, size=(32, 32), progress=False)
    msg = str(err.value)
    assert str(truncated) in msg and "truncated" in msg
    assert str(garbage) in msg and "not a readable image" in msg and "--skip-bad" in msg
    d = prepare(tmp_path, size=(32, 32), skip_bad=True, progress=False)
    assert len(d.paths) == 18 and {Path(p) for p, _ in d.skipped} == {truncated, garbage}


def test_decode_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    folder = link_neu_subset(tmp_path / "images", 2)
    files = sorted(folder.iterdir())
    a = decode_images(files, (48, 48), progress=False)
    from defectlite.data import cache

    calls = []
    real = cache._decode_one
    monkeypatch.setattr(cache, "_decode_one", lambda *x: calls.append(x) or real(*x))
    b = decode_images(files, (48, 48), progress=False)
    assert np.array_equal(a.images, b.images) and a.digests == b.digests and not calls  # served from the cache
    # an edited file (other bytes, newer mtime) is decoded afresh: main's test never changed a file
    (folder / files[0].name).unlink()
    flipped = np.asarray(Image.open(files[1]).convert("L"))[::-1]
    Image.fromarray(flipped).save(folder / files[0].name, format="JPEG")
    c = decode_images(files, (48, 48), progress=False)
    assert calls and c.digests[0] != a.digests[0] and not np.array_equal(c.images[0], a.images[0])
    assert np.array_equal(c.images[1:], a.images[1:])
    rgb = decode_images(files, (48, 48), channels=3, progress=False)
    assert rgb.images.shape == (12, 3, 48, 48)


def test_tig_reader_on_the_format_sample(shared_data):
    root = shared_data / "tig-al5083-sample"
    assert detect_format(root) == "tig"
    index = read_dataset(root)
    assert index.classes[:3] == ["good weld", "burn through", "contamination"] and len(index.classes) == 6
    assert Counter(index.classes[s.label] for s in index.samples) == {"burn through": 55, "contamination": 3}
    assert all(s.split == "train" and s.path.name.startswith("frame_") for s in index.samples)


def test_tig_reader_names_a_bad_label_file(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.json").write_text('{"rec/frame_1.png": 9}')
    with pytest.raises(DataError, match="must be an integer 0-5"):
        read_dataset(tmp_path)
