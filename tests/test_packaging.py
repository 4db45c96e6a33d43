"""The wheel installs one top-level package, `secprune`, with attacks/audits/experiments inside it."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_only_the_secprune_namespace(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ next to the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "runs", "build", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("secprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"secprune", wheel.name.split("-py3")[0] + ".dist-info"}
    for sub in ("attacks/membership.py", "audits/runner.py", "experiments/_common.py", "secagg/pairwise.py"):
        assert f"secprune/{sub}" in names


def test_every_package_folder_is_declared():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(conf["packages"])
    mapping = {v: k for k, v in conf["package-dir"].items()}  # folder -> package
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("tests", "build") or rel.parts[0].startswith("."):
            continue
        top = mapping.get(rel.parts[0], rel.parts[0])
        found.add(".".join([top, *rel.parts[1:]]))
    assert found == declared


def test_running_python_satisfies_requires_python():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = (int(x) for x in spec.split(">=")[1].split(".")[:2])
    assert sys.version_info[:2] >= (major, minor)


def test_one_version():
    import secprune

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == secprune.__version__
