"""Smoke tests on the real packaged model and corpora (installed by scripts/setup.sh)."""

import json

import pytest

from secprune import data
from secprune.cli import main

pytestmark = pytest.mark.realmodel


def test_corpora_load_and_splits_are_disjoint():
    assert len(data.ptb("test").split()) + 3761 == 82430  # canonical ptb.test.txt: words + one <eos> per line
    test, train = data.wiki_lead("test").split("\n\n"), data.wiki_lead("train").split("\n\n")
    assert 800 < len(test) < 1200 and not set(test) & set(train)
    docs = data.brown_documents()
    assert len(docs) == 500 and len({g for g, _ in docs.values()}) == 15
    assert "/" not in docs["ca01"][1].split()[0]


def test_smollm2_prune_and_export_smoke(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from secprune import calibration
    from secprune.evaluate import perplexity

    out = tmp_path / "run"
    code = main(["prune", "--clients", "4", "--nsamples", "4", "--seqlen", "64", "--eval", "ptb",
                 "--eval-windows", "2", "--eval-seqlen", "128", "--local-only-clients", "1", "--scaling",
                 "--out", str(out), "--quiet"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    r = s["results"]
    assert 20 < r["dense"]["ptb"] < 400  # a real LM, not a random one (~56,000)
    assert r["dense"]["ptb"] < r["federated"]["ptb"] < 10 * r["dense"]["ptb"]
    assert s["sparsity"]["mask"] == pytest.approx(0.5)
    assert r["federated"]["weight_sparsity"] >= 0.5  # 4-bit weights: some kept weights are exact zeros too
    assert len(s["sparsity"]["per_layer"]) == 30
    # the exported folder is a plain Hugging Face model with the run's perplexity
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "model"), "--quiet"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    ppl = perplexity(model, calibration.eval_set("ptb", tok, seqlen=128, max_windows=2), progress=False)
    assert ppl == pytest.approx(r["federated"]["ptb"], rel=1e-5)


def test_smollm2_fedspallm_smoke(tmp_path):
    out = tmp_path / "run"
    code = main(["prune", "--algorithm", "fedspallm", "--clients", "2", "--nsamples", "4", "--seqlen", "64",
                 "--eval", "ptb", "--eval-windows", "2", "--eval-seqlen", "128", "--baselines", "dense", "random",
                 "--out", str(out), "--quiet"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    r = s["results"]
    assert r["dense"]["ptb"] < r["federated"]["ptb"] < 10 * r["dense"]["ptb"]
    assert r["random"]["ptb"] > 10 * r["federated"]["ptb"]  # SparseGPT + Eq. 5 is far from a random mask
    assert s["sparsity"]["mask"] == pytest.approx(0.5, abs=1e-5)
    assert s["fedspallm"]["sparsity_intersection"][0] < 0.5  # the two clients disagree; expansion fills the gap
