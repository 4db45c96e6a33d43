"""`secprune export`: the pruned model loads with from_pretrained and gives the perplexity the run reported."""

import json

import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from transformers import AutoModelForCausalLM, AutoTokenizer

from secprune import calibration
from secprune.cli import main
from secprune.evaluate import perplexity
from secprune.masks import MaskSet

from .test_cli import SMALL


def _run_and_export(tiny_folder, client_files, tmp_path, *flags):
    run, exported = tmp_path / "run", tmp_path / "model"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--baselines",
                 "--out", str(run), "--quiet", *flags]) == 0
    assert main(["export", "--run", str(run), "--out", str(exported), "--quiet"]) == 0
    return run, exported


@pytest.mark.parametrize("flags", [[], ["--scaling"], ["--algorithm", "fedspallm"]],
                         ids=["fedprllm", "fedprllm-scaling", "fedspallm"])
def test_exported_model_reproduces_the_reported_perplexity(tiny_folder, client_files, tmp_path, flags):
    run, exported = _run_and_export(tiny_folder, client_files, tmp_path, *flags)
    summary = json.loads((run / "summary.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(exported)
    ppl = perplexity(model, calibration.eval_set("ptb", tok, seqlen=16, max_windows=2), progress=False)
    assert ppl == pytest.approx(summary["results"]["federated"]["ptb"], rel=1e-6)
    up = model.state_dict()["model.layers.1.mlp.up_proj.weight"]
    assert float((up == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)  # the export is the pruned model


def test_exported_weights_follow_the_mask_by_parameter_name(tiny_folder, client_files, tmp_path):
    run, exported = _run_and_export(tiny_folder, client_files, tmp_path, "--scaling")
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    dense = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    state, dense_state = model.state_dict(), dense.state_dict()
    masks = MaskSet.load(run / "final_mask.safetensors")
    counts = load_numpy(str(run / "vote_counts.safetensors"))
    assert set(masks.names()) == set(counts) and all(n in state for n in masks.names())
    for name in masks.names():
        mask = masks.get(0, name)
        assert (state[name][mask] == 0).all()
        # kept weights: dense * (m - votes) / m with m = 2 clients (FedPrLLM step 6), computed here by hand
        expected = dense_state[name] * (2 - torch.from_numpy(counts[name].astype("float32"))) / 2
        torch.testing.assert_close(state[name][~mask], expected[~mask], rtol=1e-6, atol=0)
    untouched = [n for n in state if n not in masks.names()]
    assert "model.embed_tokens.weight" in untouched
    for name in untouched:
        torch.testing.assert_close(state[name], dense_state[name], rtol=0, atol=0)
    info = json.loads((exported / "secprune_export.json").read_text())
    assert info["pruned_matrices"] == 14 and info["algorithm"] == "fedprllm"
    assert model.config.use_cache is True


def test_export_errors(tiny_folder, client_files, tmp_path, capsys):
    run, exported = _run_and_export(tiny_folder, client_files, tmp_path)
    capsys.readouterr()
    cases = [(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")], "is not a `secprune prune` output"),
             (["--run", str(run), "--out", str(exported)], "exists and is not empty"),
             (["--run", str(run), "--out", str(tmp_path / "m3"), "--dtype", "int8"], "--dtype")]
    for args, needle in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
    assert main(["export", "--run", str(run), "--out", str(exported), "--overwrite", "--dtype", "bfloat16",
                 "--quiet"]) == 0
    assert AutoModelForCausalLM.from_pretrained(exported).dtype == torch.bfloat16


def test_export_of_a_run_without_a_mask_is_refused_and_the_model_is_readable(tiny_folder, client_files, tmp_path,
                                                                            capsys):
    import os
    import shutil
    import stat

    run, exported = _run_and_export(tiny_folder, client_files, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in exported.iterdir() if f.name != ".secprune"}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # the weights as readable as the rest: no client data
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "final_mask.safetensors").unlink()
    capsys.readouterr()
    assert main(["export", "--run", str(broken), "--out", str(tmp_path / "m4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no final_mask.safetensors" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m4").exists()
