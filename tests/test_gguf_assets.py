"""Joining and checking a built-in model's GGUF parts (secprune/gguf_assets.py) on small fake part files."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from secprune import gguf_assets
from secprune.errors import UsageError
from secprune.models_registry import MODELS, BuiltinModel, Part


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PIECES = [os.urandom(3000), os.urandom(5000), os.urandom(123)]


def fake_model(name: str = "fake-1b", pieces=PIECES, module_fmt: str = "fake_part{i}_pkg") -> BuiltinModel:
    parts = tuple(Part(module_fmt.format(i=i + 1), f"data/part{i + 1:02d}.bin", len(p), sha(p))
                  for i, p in enumerate(pieces))
    whole = b"".join(pieces)
    return BuiltinModel(name=name, title="Fake-1B", architecture="LlamaForCausalLM", quant="Q4_K_M",
                        weights="fake", pip=tuple(f"{m.module}==1.0" for m in parts), parts=parts,
                        size=len(whole), sha256=sha(whole), licence="none")


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """The fake part packages installed on sys.path (folders with __init__.py and data/partNN.bin)."""
    site = tmp_path / "site"
    for i, piece in enumerate(PIECES):
        pkg = site / f"fake_part{i + 1}_pkg"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('part packages must never be imported')\n")
        (pkg / "data" / f"part{i + 1:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    model = fake_model()
    monkeypatch.setitem(MODELS, model.name, model)
    yield site
    for i in range(len(PIECES)):
        sys.modules.pop(f"fake_part{i + 1}_pkg", None)


def test_join_equals_concatenation_in_order_and_leaves_no_temporary(packages, tmp_path):
    work = tmp_path / "work"
    path, temporary = gguf_assets.gguf_file("fake-1b", work)
    assert temporary and path.read_bytes() == b"".join(PIECES)
    assert gguf_assets.sha256_file(path) == sha(b"".join(PIECES))
    assert sorted(p.name for p in work.iterdir()) == [path.name]  # no .tmp left behind
    assert not any(m.startswith("fake_part") for m in sys.modules)  # located, never imported


def test_parts_in_the_wrong_order_are_refused_by_part_number(packages, tmp_path):
    model = MODELS["fake-1b"]
    paths = gguf_assets.part_paths(model)
    dest = tmp_path / "w" / "x.gguf"
    with pytest.raises(UsageError, match=r"part 1 of 3 \(fake_part1_pkg/data/part01.bin\) has 5,000 bytes"):
        gguf_assets.join_parts([paths[1], paths[0], paths[2]], model.parts, dest, size=model.size,
                               sha256=model.sha256, name=model.name)
    assert not dest.parent.exists() or not any(dest.parent.iterdir())
    # parts of equal size swapped: caught by the part's own digest
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 64)
    b.write_bytes(b"y" * 64)
    equal = fake_model(pieces=[b"x" * 64, b"y" * 64])
    with pytest.raises(UsageError, match=r"part 1 of 2 .* has sha256 "):
        gguf_assets.join_parts([b, a], equal.parts, dest, size=equal.size, sha256=equal.sha256, name=equal.name)
    assert gguf_assets.join_parts([a, b], equal.parts, dest, size=equal.size, sha256=equal.sha256,
                                  name=equal.name).read_bytes() == b"x" * 64 + b"y" * 64


def test_a_truncated_part_is_refused_with_its_size(packages, tmp_path):
    model = MODELS["fake-1b"]
    paths = gguf_assets.part_paths(model)
    paths[2].write_bytes(PIECES[2][:-1])
    with pytest.raises(UsageError, match=r"part 3 of 3 .* has 122 bytes, expected 123"):
        gguf_assets.gguf_file("fake-1b", tmp_path / "w")
    assert not any((tmp_path / "w").iterdir())


def test_a_changed_byte_is_refused(packages, tmp_path):
    model = MODELS["fake-1b"]
    path = gguf_assets.part_paths(model)[1]
    data = bytearray(PIECES[1])
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=r"part 2 of 3 .*sha256 .*reinstall it with scripts/setup.sh --models fake-1b"):
        gguf_assets.gguf_file("fake-1b", tmp_path / "w")


def test_the_whole_file_digest_is_checked_too(packages, tmp_path, monkeypatch):
    good = MODELS["fake-1b"]
    bad = BuiltinModel(**{**good.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(MODELS, good.name, bad)
    with pytest.raises(UsageError, match="the joined GGUF has sha256"):
        gguf_assets.gguf_file("fake-1b", tmp_path / "w")


def test_missing_packages_give_one_line_naming_the_setup_command(packages, tmp_path):
    (packages / "fake_part2_pkg" / "data" / "part02.bin").unlink()
    with pytest.raises(UsageError) as err:
        gguf_assets.gguf_file("fake-1b", tmp_path / "w")
    msg = str(err.value)
    assert "\n" not in msg and "fake_part2_pkg missing" in msg and "run scripts/setup.sh --models fake-1b" in msg
    assert not gguf_assets.installed("fake-1b")


def test_single_file_model_is_verified_in_place(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "one_file_pkg").mkdir(parents=True)
    (site / "one_file_pkg" / "m.gguf").write_bytes(PIECES[0])
    monkeypatch.syspath_prepend(str(site))
    model = BuiltinModel(name="one", title="One", architecture="X", quant="Q4_1", weights="w",
                         pip=("one==1",), parts=(Part("one_file_pkg", "m.gguf", len(PIECES[0]), sha(PIECES[0])),),
                         size=len(PIECES[0]), sha256=sha(PIECES[0]), licence="none")
    monkeypatch.setitem(MODELS, "one", model)
    path, temporary = gguf_assets.gguf_file("one", tmp_path / "w")
    assert not temporary and path == site / "one_file_pkg" / "m.gguf"
    monkeypatch.setitem(MODELS, "one", BuiltinModel(**{**model.__dict__, "sha256": "f" * 64}))
    with pytest.raises(UsageError, match="m.gguf has sha256"):
        gguf_assets.gguf_file("one", tmp_path / "w")


@pytest.mark.parametrize("name", list(MODELS))
def test_pinned_registry_is_consistent(name):
    """Part sizes add up to the joined size; every digest is a full sha256; one pinned pip spec per package."""
    m = MODELS[name]
    assert sum(p.size for p in m.parts) == m.size
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in (m.sha256, *(p.sha256 for p in m.parts)))
    assert all("==" in spec for spec in m.pip)
    assert len({p.module for p in m.parts}) == len(m.parts)


def test_cli_names_the_setup_command_for_a_model_that_is_not_installed(tmp_path, monkeypatch, capsys):
    from secprune.cli import main

    monkeypatch.setenv("SECPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_assets, "package_dir", lambda module: None)
    code = main(["prune", "--model", "qwen2.5-1.5b", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--model qwen2.5-1.5b" in err and "scripts/setup.sh --models qwen2.5-1.5b" in err
