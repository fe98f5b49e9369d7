"""Where data sets live: ``$DEFECTLITE_DATA``, else ``../shared/datasets`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

from defectlite.errors import DataError

_CHECKOUT = Path(__file__).resolve().parents[3]  # src/defectlite/data/locate.py -> checkout


def default_data_root() -> Path | None:
    """``$DEFECTLITE_DATA`` if set; else the first existing ``shared/datasets`` beside the checkout
    or the working folder; else None."""
    env = os.environ.get("DEFECTLITE_DATA")
    if env:
        return Path(env).expanduser()
    for base in (_CHECKOUT, Path.cwd()):
        cand = base.parent / "shared" / "datasets"
        if cand.is_dir():
            return cand
    return None


def resolve_data_path(path: str | Path) -> Path:
    """Resolve a data folder given by the user or a recipe.

    An existing path (absolute, or relative to the working folder) is used as it is; otherwise a
    relative path is looked up under :func:`default_data_root` (so recipes can say
    ``neu-surface-defect``).

    Raises:
        DataError: the folder exists in neither place.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        if not p.exists():
            raise DataError(f"data folder not found: {p}")
        return p
    root = default_data_root()
    if root is not None and (root / p).exists():
        return root / p
    where = f" or under the data root {root}" if root else " (and no data root: set $DEFECTLITE_DATA)"
    raise DataError(f"data folder not found: {p} (looked in {Path.cwd()}{where})")
