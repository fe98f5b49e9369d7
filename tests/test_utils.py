"""The atomic writer destroys nothing a user owns: it never replaces a symlink, FIFO, device or folder with a file,
and its files get the permissions a plain open() would give them (issue 37)."""

from __future__ import annotations

import os
import re
import stat

import pytest

from defectlite.errors import ConfigError
from defectlite.utils import atomic_write_json, atomic_write_text, check_writable


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_symlink_is_not_replaced_by_a_file(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("the user's own file\n")
    link = tmp_path / "link.csv"
    link.symlink_to(mine)
    with pytest.raises(ConfigError, match=re.escape(f"{link} is a symlink to {mine}, not a regular file")):
        atomic_write_text(link, "new\n")
    assert link.is_symlink() and mine.read_text() == "the user's own file\n"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone.json")
    with pytest.raises(ConfigError, match="is a symlink to"):
        atomic_write_json(dangling, {"a": 1})
    assert dangling.is_symlink() and not (tmp_path / "gone.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "link.csv", "mine.csv"]  # no temp left


def test_a_fifo_or_a_folder_is_not_replaced_by_a_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=re.escape(f"{fifo} is a FIFO (named pipe), not a regular file")):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    folder = tmp_path / "out"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(ConfigError, match=re.escape(f"{folder} is a folder, not a regular file")):
        atomic_write_text(folder, "x")
    assert (folder / "inside").is_dir()


def test_check_writable_names_a_symlink_or_fifo_before_any_work(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=re.escape(f"--csv {fifo} is a FIFO")):
        check_writable(fifo, what="--csv")
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(ConfigError, match=re.escape(f"--json {link} is a symlink")):
        check_writable(link, what="--json")
    assert check_writable("-", what="--csv", stdout=True) == check_writable("-", stdout=True)
    assert check_writable(tmp_path / "new.csv") == tmp_path / "new.csv"


def test_written_files_follow_the_umask_and_keep_the_mode_of_the_file_they_replace(tmp_path, umask_022):
    new = atomic_write_text(tmp_path / "new.txt", "x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644  # mkstemp made it 0600
    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    atomic_write_json(private, {"a": 1})
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_text() == '{\n  "a": 1\n}\n'
