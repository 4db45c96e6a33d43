"""``outdir.owner_only``: what is created inside is the owner's alone at creation, whatever the umask."""

import os
import stat

import numpy as np
import pytest
import torch

from secprune import outdir


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_files_and_folders_are_created_owner_only(tmp_path):
    old = os.umask(0o022)  # a permissive umask, as on most machines
    try:
        with outdir.owner_only():
            torch.save({"x": torch.arange(3)}, tmp_path / "a.pt")
            np.save(tmp_path / "b.npy", np.arange(3))
            (tmp_path / "sub").mkdir()
            (tmp_path / "sub" / "c.txt").write_text("secret")
        (tmp_path / "after.txt").write_text("public")
    finally:
        os.umask(old)
    assert [mode(tmp_path / f) for f in ("a.pt", "b.npy", "sub/c.txt")] == [0o600] * 3
    assert mode(tmp_path / "sub") == 0o700
    assert mode(tmp_path / "after.txt") == 0o644  # the umask is given back


def test_the_umask_is_given_back_after_an_error():
    old = os.umask(0o022)
    try:
        with pytest.raises(RuntimeError), outdir.owner_only():
            raise RuntimeError("write failed")
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)


def test_open_private_makes_an_existing_file_owner_only_before_writing(tmp_path):
    # a umask cannot change a file that exists: open_private sets 0600 on it, then truncates and writes
    path = tmp_path / "state.npy"
    path.write_bytes(b"x" * 1000)
    os.chmod(path, 0o644)
    with outdir.open_private(path) as f:
        assert mode(path) == 0o600  # before a byte of the new content is written
        np.save(f, np.arange(3))
    assert mode(path) == 0o600 and np.array_equal(np.load(path), np.arange(3))  # old tail truncated
    outdir.write_private(tmp_path / "new.pem", b"key")
    assert mode(tmp_path / "new.pem") == 0o600 and (tmp_path / "new.pem").read_bytes() == b"key"


def test_atomic_write_leaves_the_old_file_and_no_temporary_when_the_write_fails(tmp_path):
    target = tmp_path / "out" / "result.json"
    outdir.atomic_write(target, "old")  # creates the missing folder
    with pytest.raises(UnicodeEncodeError):
        outdir.atomic_write(target, "half \udc80 written")  # a lone surrogate fails mid-write in UTF-8
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]
    outdir.atomic_write(target, b"\x00new")
    assert target.read_bytes() == b"\x00new"
