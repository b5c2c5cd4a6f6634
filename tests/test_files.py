"""adapterhub.files: the one home of write-temp-then-rename, used by the registry, facts, export
and the base conversion."""
import pytest

from adapterhub.files import atomic_dir, atomic_write


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "current"
    atomic_write(path, "v1\n")
    atomic_write(path, b"v2\n")
    assert path.read_text() == "v2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["current"]


def test_atomic_dir_keeps_the_old_folder_when_the_body_fails(tmp_path):
    out = tmp_path / "export"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # the temp folder is gone
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole, not merged
