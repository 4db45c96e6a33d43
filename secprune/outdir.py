"""Output folders that cannot hurt the user's own files, and owner-only folders for private data.

Every command writes into a temporary sibling folder and renames it over ``--out`` only when it succeeds,
so a failed run leaves no half-written output. Folders secprune writes carry a marker file; ``--overwrite``
replaces only such folders, never a folder of the user's own files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from secprune.errors import UsageError

MARKER = ".secprune"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` whole or not at all: a temporary sibling, then an atomic rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left behind when the write itself failed


def canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, so equal tensors and metadata give equal bytes
    (safetensors serialises its metadata from a hash map, in an order that changes from run to run). The
    tensors' offsets do not depend on the key order; the header stays padded to 8 bytes as the format asks.
    The data is streamed (a model shard is not read into memory) and the file keeps its mode."""
    path = Path(path)
    with open(path, "rb") as src:
        n = int.from_bytes(src.read(8), "little")
        header = json.loads(src.read(n))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(sorted(header.items()))
        text = json.dumps(ordered, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        src.seek(0)
        if src.read(8 + n) == len(text).to_bytes(8, "little") + text:
            return  # already canonical: no rewrite (a model shard is gigabytes)
        tmp = path.with_name(f".{path.name}.canon-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as dst:  # the original's mode: an owner-only file stays owner-only
            os.fchmod(dst.fileno(), path.stat().st_mode & 0o777)
            dst.write(len(text).to_bytes(8, "little") + text)
            shutil.copyfileobj(src, dst, 16 << 20)
    os.replace(tmp, path)


def check_target(out: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse a target that is a file, the current folder or a parent of it, or someone else's folder."""
    resolved = out.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise UsageError(f"{flag} {out}: names the current folder, one of its parents or your home; "
                         "expected a new folder for the output")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out}: is a file; expected a folder (new, or one secprune wrote)")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{flag} {out}: exists and is not empty; pass --overwrite to replace an earlier "
                             "secprune output, or choose another folder")
        if not is_ours(out):
            raise UsageError(f"--overwrite: {out} was not written by secprune (no {MARKER} marker file); "
                             "refusing to delete it")


def is_ours(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def mark(folder: Path, kind: str) -> None:
    from secprune import __version__

    (folder / MARKER).write_text(json.dumps({"written_by": "secprune", "kind": kind, "version": __version__}) + "\n")


def staging(out: Path, *, kind: str, flag: str = "--out") -> Path:
    """A fresh temporary sibling of ``out`` carrying the marker; rename it with :func:`commit`."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _sweep_stale(out)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mark(tmp, kind)
    except OSError as exc:
        raise UsageError(f"{flag} {out}: cannot write there ({exc.strerror or exc})") from None
    return tmp


def _sweep_stale(out: Path) -> None:
    """Remove staging folders of ``out`` left by a process that no longer runs (killed with SIGKILL, or a
    machine that stopped); only ours (marker file), and never one whose process is alive."""
    for old in out.parent.glob(f".{out.name}.tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and old.is_dir() and is_ours(old)):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def commit(tmp: Path, out: Path) -> None:
    """Replace ``out`` (checked by :func:`check_target`) by the finished ``tmp``."""
    for f in tmp.rglob("*.safetensors"):  # byte-reproducible outputs
        canonical_safetensors(f)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def private_dir(folder: Path) -> Path:
    """Create ``folder`` readable by its owner alone (0700, whatever the umask)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


@contextlib.contextmanager
def open_private(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for binary writing, readable by its owner alone from the first byte (created 0600; an
    existing file, which a umask cannot change, is set to 0600 before it is truncated and written). For
    writers that take a file object: ``pickle.dump``, ``np.save``, ``torch.save``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.truncate()
        yield f


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`open_private`."""
    with open_private(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders created inside are the owner's alone from the first byte (umask 077), for writers
    that take only a path (safetensors' ``save_file``) or write many files (a report). A umask acts on new
    files only: use it in a fresh folder (a staging folder) and :func:`open_private` where a file may exist.
    The umask is process-wide: hold it only around the writes."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)
