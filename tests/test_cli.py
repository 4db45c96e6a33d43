"""`secprune prune` end to end on a tiny model folder, and its bad-input errors."""

import json
import string

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from secprune.cli import main
from secprune.masks import MaskSet

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    chars = ["[UNK]"] + list(string.printable)
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    tiny_llama(layers=2).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def client_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    texts = ["the cat sat on the mat. " * 40, "colourless green ideas sleep furiously. " * 40]
    paths = []
    for i, t in enumerate(texts):
        (root / f"c{i}.txt").write_text(t)
        paths.append(str(root / f"c{i}.txt"))
    return paths


def test_prune_writes_masks_and_summary(tiny_folder, client_files, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, "--nsamples", "4",
                 "--seqlen", "16", "--eval", "ptb", "--eval-windows", "2", "--eval-seqlen", "16",
                 "--save-client-masks", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["clients"] == 2
    assert set(summary["results"]) == {"dense", "fedprllm", "centralized", "local-only"}
    assert summary["results"]["fedprllm"]["sparsity"] == pytest.approx(0.5)
    final = MaskSet.load(out / "final_mask.safetensors")
    clients = MaskSet.load(out / "client_masks.safetensors")
    assert clients.n == 2 and final.n == 1
    counts = sum(clients.get(i, "layers.1.mlp.up_proj").int() for i in range(2))
    # layer comparison on counts in {0,1,2}: every weight both clients pruned is pruned
    assert final.get(0, "layers.1.mlp.up_proj")[counts == 2].all()
    comm = summary["communication"]
    total = sum(np.prod(s) for s in final.shapes.values())
    assert comm["per_client_entries"] == total and comm["per_client_bytes"] == pytest.approx(total / 8, abs=14)
    assert summary["secure_aggregation"]["backend"] == "none"
    assert "the cat" not in (out / "summary.json").read_text()  # no private text in the summary


@pytest.mark.parametrize("flags, needle", [
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "0"], "--sparsity"),
    (["--clients", "9", "--nsamples", "8"], "more clients than calibration samples"),
    (["--alpha", "0"], "--alpha"),
    (["--model", "/nonexistent/model"], "--model"),
    (["--strategy", "sideways"], "--strategy"),
    (["--sparsity", "abc"], "sparsity"),
])
def test_bad_input_one_line_exit_2_no_output(flags, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["prune", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_model_without_causal_lm_head_is_rejected(tmp_path, capsys):
    from transformers import ViTConfig

    folder = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    code = main(["prune", "--model", str(folder), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "causal-LM head" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_failed_run_leaves_no_output_and_resumes(tiny_folder, client_files, tmp_path, monkeypatch):
    import secprune.run as run_mod

    out = tmp_path / "run"
    args = ["prune", "--model", str(tiny_folder), "--client-data", *client_files, "--nsamples", "4",
            "--seqlen", "16", "--eval", "ptb", "--eval-windows", "1", "--eval-seqlen", "16",
            "--baselines", "--out", str(out), "--quiet"]

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(run_mod, "evaluate", boom)
    with pytest.raises(RuntimeError):
        main(args)
    assert not out.exists()
    assert not list(tmp_path.glob(".run.tmp-*"))
    assert (tmp_path / "run.partial" / "federated" / "state.pt").exists()  # checkpoint kept for resume
    monkeypatch.undo()
    assert main(args) == 0
    assert (out / "summary.json").exists() and not (tmp_path / "run.partial").exists()


def test_fedspallm_run_resumes_without_repruning(tiny_folder, client_files, tmp_path, monkeypatch):
    import secprune.fedspallm.driver as driver_mod
    import secprune.fedspallm.run as fs_run

    out = tmp_path / "run"
    args = ["prune", "--algorithm", "fedspallm", "--model", str(tiny_folder), "--client-data", *client_files,
            "--nsamples", "4", "--seqlen", "16", "--eval", "ptb", "--eval-windows", "1", "--eval-seqlen", "16",
            "--baselines", "--out", str(out), "--quiet"]

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(fs_run, "evaluate", boom)  # pruning finishes, the evaluation after it fails
    with pytest.raises(RuntimeError):
        main(args)
    assert not out.exists()
    assert (tmp_path / "run.partial" / "fedspallm" / "state.pt").exists()
    monkeypatch.undo()
    monkeypatch.setattr(driver_mod, "first_layer_inputs", boom)  # any re-pruning would call this first
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert not (tmp_path / "run.partial").exists()


def test_toml_config_is_read_and_flags_override(tiny_folder, client_files, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[prune]\nmodel = "{tiny_folder}"\nsparsity = 0.7\nnsamples = 4\nseqlen = 16\n'
                   f'eval = ["ptb"]\neval_windows = 1\neval_seqlen = 16\nbaselines = []\n')
    out = tmp_path / "run"
    assert main(["prune", "--config", str(cfg), "--client-data", *client_files, "--sparsity", "0.6",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["sparsity"] == 0.6 and summary["config"]["nsamples"] == 4
    assert summary["sparsity"]["overall"] == pytest.approx(0.6, abs=0.01)
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune]\nspeed = 3\n")
    assert main(["prune", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2


def test_windows_are_token_ids_not_text(tiny_folder, client_files, tmp_path):
    out = tmp_path / "run"
    main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, "--nsamples", "4", "--seqlen", "16",
          "--eval", "ptb", "--eval-windows", "1", "--eval-seqlen", "16", "--baselines", "--out", str(out), "--quiet"])
    cal = torch.load(out / "calibration.pt", weights_only=False)
    assert cal["windows"].shape == (4, 16) and [len(p) for p in cal["parts"]] == [2, 2]


def test_secure_aggregation_backends_give_bit_identical_final_masks(tiny_folder, client_files, tmp_path):
    finals = {}
    for backend in ("none", "pairwise", "he"):
        out = tmp_path / backend
        assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, "--nsamples", "4",
                     "--seqlen", "16", "--eval", "ptb", "--eval-windows", "1", "--eval-seqlen", "16", "--baselines",
                     "--secure-agg", backend, "--out", str(out), "--quiet"]) == 0
        finals[backend] = MaskSet.load(out / "final_mask.safetensors")
        stats = json.loads((out / "summary.json").read_text())["secure_aggregation"]
        assert stats["backend"] == backend and stats["total_bytes"] > 0
    for backend in ("pairwise", "he"):
        for name in finals["none"].names():
            assert np.array_equal(finals[backend].packed[name], finals["none"].packed[name])
