"""Shared fixtures: small real subsets of the data sets in ../shared, linked (never copied) into tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defectlite.data.locate import default_data_root

NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def data_root() -> Path:
    root = default_data_root()
    if root is None or not (root / "neu-surface-defect").is_dir():
        pytest.skip("the shared data sets are not available (set DEFECTLITE_DATA)")
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root (``../shared/datasets`` or ``$DEFECTLITE_DATA``)."""
    return data_root()


def link_neu_subset(dest: Path, per_class: int, start: int = 1) -> Path:
    """Symlink ``per_class`` NEU images of each class into ``dest`` (NEU layout)."""
    src = data_root() / "neu-surface-defect" / "images"
    dest.mkdir(parents=True, exist_ok=True)
    for c in NEU_CLASSES:
        for n in range(start, start + per_class):
            os.symlink(src / f"{c}_{n}.jpg", dest / f"{c}_{n}.jpg")
    return dest


def link_casting_subset(dest: Path, per_class: int) -> Path:
    """Symlink the first ``per_class`` casting images of each class and split into ``dest`` (train/, test/)."""
    src = data_root() / "casting-product"
    for split in ("train", "test"):
        for cls in ("def_front", "ok_front"):
            (dest / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:per_class]:
                os.symlink(f, dest / split / cls / f.name)
    return dest


@pytest.fixture(scope="session")
def neu_small(tmp_path_factory) -> Path:
    """20 NEU images per class (120 in all), NEU layout."""
    return link_neu_subset(tmp_path_factory.mktemp("neu") / "images", 20).parent


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the decoded-image cache of the tests out of the user's cache folder."""
    os.environ["DEFECTLITE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
