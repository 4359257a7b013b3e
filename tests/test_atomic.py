"""atomic_path / atomic_write: the old file or the new one, never half of one, and no leftovers."""

import json
import os

import pytest

from tierlab.atomic import atomic_path, atomic_write, write_json_atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    atomic_write(tmp_path / "raw.bin", b"\x00\x01")
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"


def test_a_failure_half_way_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "best.toml"
    atomic_write(target, "lr = 0.001\n")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("lr = 0.0")  # half of the new content, then the disk fills up
            raise OSError(28, "No space left on device")
    assert target.read_text() == "lr = 0.001\n" and [p.name for p in tmp_path.iterdir()] == ["best.toml"]


def test_the_temporary_is_hidden_unique_and_keeps_the_extension(tmp_path):
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.tmp") and tmp.suffix == ".png"
        tmp.write_bytes(b"png")  # matplotlib picks the format from this suffix
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_leftovers_of_dead_writers_are_removed_and_a_live_writers_file_is_kept(tmp_path):
    import subprocess
    import sys

    from tierlab.atomic import remove_leftovers, temporary_name

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    mine = temporary_name(tmp_path / "tokens.bin", os.getpid())
    theirs = temporary_name(tmp_path / "tokens.bin", dead)
    keep = [tmp_path / "tokens.bin", tmp_path / ".lock", tmp_path / ".notes.tmpfile"]
    for path in (mine, theirs, *keep):
        path.write_text("x")
    assert remove_leftovers(tmp_path, dead_writers_only=True) == [theirs]
    assert mine.exists() and all(p.exists() for p in keep)
    assert remove_leftovers(tmp_path) == [mine]  # a folder this process owns: every leftover goes
    assert all(p.exists() for p in keep)
