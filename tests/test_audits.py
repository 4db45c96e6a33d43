"""Audits: exact fast masks, entropy/similarity/sensitivity measures, metrics and the epsilon bound."""

import math

import numpy as np
import pytest
import torch

from secprune.audits import epsilon as E
from secprune.audits import measures
from secprune.audits.engine import LayerZeroMasks, full_depth_masks
from secprune.audits.synthetic import tiny_llama, zipf_windows
from secprune.fedprllm.driver import LocalSpec, federated_prune
from secprune.methods import make_method


@pytest.fixture(scope="module")
def tiny():  # noqa: D103
    model = tiny_llama(0)
    wins = zipf_windows(8, 24, vocab=256, rng=np.random.default_rng(0))
    return model, wins


def test_clopper_pearson_hand_values():
    # k = 0 and k = n have closed forms: 1 - (alpha/2)^(1/n) and (alpha/2)^(1/n)
    assert E.clopper_pearson(0, 10, 0.05) == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert E.clopper_pearson(10, 10, 0.05) == pytest.approx((0.025 ** 0.1, 1.0))
    lo, hi = E.clopper_pearson(5, 10, 0.05)  # textbook values
    assert lo == pytest.approx(0.18709, abs=1e-5) and hi == pytest.approx(0.81291, abs=1e-5)
    # n = 1, k = 1: lower end solves p = alpha / 2
    assert E.clopper_pearson(1, 1, 0.1)[0] == pytest.approx(0.05)
    with pytest.raises(ValueError):
        E.clopper_pearson(3, 2)


def test_eps_lower_bound_hand_values():
    ub = 1 - 0.025 ** (1 / 100)  # no errors in 100 + 100 trials
    assert E.eps_lower_bound(0, 100, 0, 100, alpha=0.05, delta=0.0) == pytest.approx(math.log((1 - ub) / ub))
    assert E.eps_lower_bound(0, 100, 0, 100, alpha=0.05, delta=1e-5) == pytest.approx(
        math.log((1 - 1e-5 - ub) / ub))
    # a chance-level attack gives no evidence
    assert E.eps_lower_bound(50, 100, 50, 100) == 0.0
    fpr_ub = E.clopper_pearson(10, 200)[1]
    fnr_ub = E.clopper_pearson(30, 200)[1]
    want = max(math.log((1 - fnr_ub) / fpr_ub), math.log((1 - fpr_ub) / fnr_ub))
    assert E.eps_lower_bound(10, 200, 30, 200, delta=0.0) == pytest.approx(want)


def test_roc_auc_and_tpr():
    assert E.auc([1, 2, 3], [0, 0, 0]) == 1.0
    assert E.auc([1, 1], [1, 1]) == 0.5
    assert E.auc([0, 2], [1, 1]) == 0.5
    s = E.summarize(np.arange(100, 200), np.arange(0, 100))
    assert s["auc"] == 1.0 and s["tpr_at_1pct_fpr"] == 1.0 and s["balanced_accuracy"] == 1.0
    s = E.summarize(np.zeros(10), np.zeros(10))
    assert s["auc"] == 0.5 and s["tpr_at_1pct_fpr"] == 0.0
    e = E.empirical_epsilon(np.arange(200, 400), np.arange(0, 200))
    assert e["eps_lower_bound"] > 2 and e["trials_bound"] == {"members": 100, "non_members": 100}
    assert E.empirical_epsilon(np.zeros(50), np.zeros(50))["eps_lower_bound"] == 0.0


def test_engines_match_federated_prune(tiny):
    model, wins = tiny
    parts = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7])]
    for method in ("wanda", "magnitude"):
        spec = LocalSpec(make_method(method), 0.5, "row", 1, 4)
        ref = federated_prune(model, wins, parts, spec=spec, progress=False).client_masks
        eng = LayerZeroMasks(model, wins, method=method, seed=1)
        fast = full_depth_masks(model, wins, parts, spec=spec)
        for i, p in enumerate(parts):
            l0 = eng.masks(p)
            for name in ref.names():
                assert torch.equal(fast[i][name], ref.get(i, name)), (method, name)
                if name.startswith("layers.0."):
                    assert torch.equal(l0[name], ref.get(i, name))


def test_measures(tiny):
    model, wins = tiny
    assert measures.binary_entropy(0.5) == pytest.approx(1.0)
    assert measures.binary_entropy([0.0, 1.0]).tolist() == [0.0, 0.0]
    assert measures.empirical_entropy([1, 2, 3, 4]) == pytest.approx(2.0)
    assert measures.fp16_entropy(torch.ones(10, 10))["bits"] == 0.0
    assert measures.mask_bit_entropy(torch.tensor([True, False] * 8)) == pytest.approx(1.0)
    eng = LayerZeroMasks(model, wins)
    flat = eng.flat_many([[0, 1], [2, 3], [4, 5], [6, 7]])
    info = measures.information_across_draws(flat, eng)
    assert 0 < info["fraction_flipping"] < 0.5 and info["distinct_masks"] == 4
    assert info["plugin_joint_entropy_bits"] == pytest.approx(2.0)
    sens = measures.sensitivity_layer0(eng, np.arange(8), k=3, pairs=4)
    assert sens["replace"]["mean"] > 0 and sens["remove"]["mean"] > 0
    mag = LayerZeroMasks(model, wins, method="magnitude")
    assert measures.sensitivity_layer0(mag, np.arange(8), k=3, pairs=4)["replace"]["max"] == 0.0
    from secprune.masks import MaskSet

    ms = MaskSet(3)
    for i in range(3):
        ms.put("layers.0.a", i, torch.tensor([[True, False], [i == 1, i == 2]]))
    sim = measures.pairwise_hamming_packed(ms.packed, ms.shapes)
    assert sim["pairs"] == 3 and sim["total"] == pytest.approx([0.25, 0.25, 0.5])


@pytest.mark.parametrize("server_group", ["row", "column"])
def test_the_audits_final_mask_is_the_runs_own_under_reference_numerics(tmp_path, server_group):
    """Issue 30: the audits and attacks used copies of the server's rule that broke vote ties by seeded priorities
    while a ``--numerics reference`` run breaks them by index (upstream's stable sort).  Now every caller uses the
    run's :class:`ServerRule`: from the run's own client masks it gives the run's final mask bit for bit, where the
    seeded copies gave another one (vote counts tie everywhere)."""
    from secprune.audits.runner import AuditBudget, inputs_from_run
    from secprune.cli import main
    from secprune.fedprllm.aggregate import ServerRule
    from secprune.masks import MaskSet
    from secprune.model import load_model, param_names

    from .conftest import make_model_folder

    folder = make_model_folder(tmp_path / "model")
    out = tmp_path / "run"
    assert main(["prune", "--model", str(folder), "--numerics", "reference", "--calib", "ptb", "--nsamples", "8",
                 "--clients", "4", "--seqlen", "32", "--server-group", server_group, "--save-client-masks",
                 "--eval", "--out", str(out), "--quiet"]) == 0
    inp = inputs_from_run(out, AuditBudget(population=8), eval_windows=0)
    assert inp.stable_ties
    names = {v: k for k, v in param_names(load_model(str(folder))[0]).items()}
    final = MaskSet.load(out / "final_mask.safetensors", names=names)
    rule = inp.server_rule()
    seeded = ServerRule(sparsity=inp.sparsity, group=inp.server_group, seed=inp.seed)  # what the copies did
    differ = 0
    for n in inp.client_masks.names():
        counts = sum(inp.client_masks.get(i, n).to(torch.int64) for i in range(inp.client_masks.n))
        assert torch.equal(rule(n, counts), final.get(0, n)), n
        differ += int((seeded(n, counts) != final.get(0, n)).sum())
    assert differ > 0
