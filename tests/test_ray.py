"""Batch inspection on Ray Data gives exactly the rows of local `defectlite predict --csv`, error rows included."""

from __future__ import annotations

import csv
import shutil

import pytest

from defectlite.cli.main import main
from defectlite.workflows.ray_predict import predict_ray, ray_available
from test_explain import tiny_run

pytestmark = pytest.mark.skipif(ray_available() is not None, reason=f"Ray Data: {ray_available()}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small):
    return tiny_run(tmp_path_factory, neu_small)


def test_ray_rows_equal_local_predict_rows(run_dir, neu_small, tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted((neu_small / "images").glob("*.jpg"))[:20]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    assert main(["predict", str(run_dir / "model.onnx"), str(folder), "--csv", str(tmp_path / "local.csv")]) == 1
    local = sorted(tuple(r.values()) for r in csv.DictReader((tmp_path / "local.csv").open()))
    res = predict_ray(run_dir / "model.onnx", [folder], tmp_path / "ray", num_cpus=2, object_store_mb=100,
                      batch_size=8)  # fmt: skip
    table = pq.read_table(tmp_path / "ray")
    assert table.column_names == ["path", "class", "probability", "top", "error"]  # one schema, every block
    table = table.to_pylist()
    remote = sorted((r["path"].rsplit("/", 1)[-1], r["class"], r["probability"], r["top"], r["error"]) for r in table)
    assert res["images"] == 21 and res["errors"] == 1
    assert remote == sorted((p.rsplit("/", 1)[-1], c, pr, t, e) for p, c, pr, t, e in local)


def test_ray_refuses_an_out_folder_holding_other_files(run_dir, neu_small, tmp_path):
    from defectlite.errors import ConfigError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_bytes(b"rows of another job")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        predict_ray(run_dir, [neu_small], tmp_path / "out")


def test_quiet_ray_prints_its_summary_and_no_progress(run_dir, neu_small, tmp_path, capfd):
    """-q: the one summary line, none of Ray's INFO lines or Ray Data's progress (logged every few seconds
    when stdout is not a terminal, as under CI or a scheduler)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted((neu_small / "images").glob("*.jpg"))[:4]:
        shutil.copy(f, folder / f.name)
    assert main(["-q", "predict", str(run_dir / "model.onnx"), str(folder), "--engine", "ray",
                 "--out", str(tmp_path / "ray")]) == 0  # fmt: skip
    out, err = capfd.readouterr()
    assert out.splitlines() == [next(ln for ln in out.splitlines() if ln.startswith("4 image(s), 4 row(s)"))]
    assert " INFO " not in out + err and "Progress" not in out + err


def test_uris_are_listed_and_read_like_local_paths(run_dir, neu_small, tmp_path):
    """file:// URIs (the pyarrow.fs route that s3:// and gs:// take) give the rows of the same local files; a URI
    that cannot be read is an error row naming it; a missing source is a ConfigError naming it."""
    from defectlite.errors import ConfigError
    from defectlite.workflows.ray_predict import _Answer, list_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted((neu_small / "images").glob("*.jpg"))[:3]:
        shutil.copy(f, folder / f.name)
    (folder / ".skip.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    local = list_images([folder])
    assert [p.rsplit("/", 1)[-1] for p in local] == sorted(f.name for f in folder.glob("[!.]*.jpg"))
    uris = list_images([f"file://{folder}"])  # pyarrow does not list the broken link
    assert uris == [f"file://{p}" for p in local if not p.endswith("gone.jpg")] and len(uris) == 3
    uris.append(f"file://{folder}/gone.jpg")
    answer = _Answer(str(run_dir / "model.onnx"), 1, {})
    by_path, by_uri = answer({"path": local}), answer({"path": uris})
    assert sorted(by_uri["path"]) == sorted(f"file://{p}" for p in by_path["path"])
    rows = {k: sorted(zip(*(by[c] for c in by if c != "error"))) for k, by in (("uri", by_uri), ("path", by_path))}
    assert [r[1:] for r in rows["uri"]] == [r[1:] for r in rows["path"]]  # the same answers, gone.jpg's empty
    broken = by_uri["path"].index(f"file://{folder}/gone.jpg")
    assert by_uri["error"][broken].startswith("cannot read it") and by_uri["class"][broken] == ""
    assert by_path["error"][by_path["path"].index(f"{folder}/gone.jpg")] != ""  # the Predictor's own error row
    with pytest.raises(ConfigError, match="nowhere: no such file or folder"):
        list_images([tmp_path / "nowhere"])
