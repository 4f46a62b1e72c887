"""Path checks: the right kind of thing, or one sentence naming the path and why not."""

import os

import pytest

from loomray.paths import PathError, file_to_read, file_to_write, folder_to_write


def test_each_check_accepts_the_right_kind_and_names_the_wrong_one(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert folder_to_write(tmp_path / "d", "run dir") == tmp_path / "d"
    assert folder_to_write(tmp_path / "new" / "deeper", "run dir") == tmp_path / "new" / "deeper"
    assert file_to_write(tmp_path / "d" / "out.png", "--out") == tmp_path / "d" / "out.png"
    assert file_to_read(tmp_path / "f", "spec") == tmp_path / "f"
    cases = [
        (folder_to_write, "f", "run dir {p} is a file, not a folder"),
        (folder_to_write, "f/a/b", "run dir {p} lies under {t}/f, which is a file, not a folder"),
        (file_to_write, "d", "run dir {p} is a folder, not a file"),
        (file_to_write, "f/x.png", "run dir {p} lies under {t}/f, which is a file, not a folder"),
        (file_to_read, "d", "run dir {p} is a folder, not a file"),
        (file_to_read, "missing", "run dir {p} does not exist"),
    ]
    for check, name, message in cases:
        path = tmp_path / name
        with pytest.raises(PathError) as err:
            check(path, "run dir")
        assert str(err.value) == message.format(p=path, t=tmp_path)
    assert not (tmp_path / "new").exists()  # checks never create anything


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    # root reads any file whatever its mode, so unreadability is simulated here
    (tmp_path / "secret.yaml").write_text("x: 1")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.R_OK else real(p, mode))
    with pytest.raises(PathError, match=r"secret.yaml cannot be read \(permission denied\)"):
        file_to_read(tmp_path / "secret.yaml", "config file")


def test_a_folder_that_cannot_be_written_is_refused_before_anything(tmp_path, monkeypatch):
    """Checked before Ray starts (the tests run as root, who may write anywhere, so
    the permission is what os.access says)."""
    from pathlib import Path

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real(p, mode))
    for target in (locked, locked / "runs" / "digits"):
        with pytest.raises(PathError, match=f"cannot be written: {locked} is not writable"):
            folder_to_write(target, "run dir")
    assert folder_to_write(tmp_path / "free", "run dir") == tmp_path / "free"
    assert list(locked.iterdir()) == []
