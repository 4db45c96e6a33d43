"""Smoke test on the real SmolLM2 model: a planted canary is found, a data-free mask reveals nothing.

Small on purpose (128-token windows, 4 clients, a few dozen masks): about a minute on two cores.
"""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def real():
    from secprune import calibration
    from secprune.audits import population as P
    from secprune.model import load_model

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    model, tok = load_model("smollm2-135m", device="cpu")
    stream = calibration._source_ids("wiki-lead", tok).numpy()
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(stream) - 128, 7)
    run_rest = np.stack([stream[s:s + 128] for s in starts])
    canary = tok(" The vault code of Ada Quill is 4 8 1 9, remember it.", add_special_tokens=False).input_ids
    planted = np.resize(np.array(canary), 128)[None]  # one window of the canary sentence, repeated
    run = np.concatenate([planted, run_rest])
    pools, _ = P.disjoint_windows(stream=stream, seqlen=128, count=32, exclude=run, rng=rng)
    yield model, tok, torch.from_numpy(np.concatenate([run, pools])).long(), stream
    torch.set_num_threads(n)


def _mia(engine):
    from secprune.attacks.membership import MIABudget, run_membership

    parts = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5]), np.array([6, 7])]
    rest = [sum(engine.flat(p).to(torch.int64) for p in parts[1:])]
    b = MIABudget(targets=1, shadows_in=8, shadows_out=16, trials_in=16, trials_out=16, client_size=2, n_clients=4)
    return run_membership(engine, targets=np.array([0]), owners=np.array([0]), rest=rest,
                          attacker_pool=np.arange(8, 24), challenger_pool=np.arange(24, 40), budget=b)["results"]


def test_planted_canary_window_is_detected_and_magnitude_is_chance(real):
    from secprune.audits.engine import LayerZeroMasks

    model, _, pool, _ = real
    res = _mia(LayerZeroMasks(model, pool))
    assert res["lira/own"]["per_target_auc"][0] >= 0.95
    assert res["lira/sum"]["per_target_auc"][0] >= 0.9
    mag = _mia(LayerZeroMasks(model, pool, method="magnitude"))
    for view in ("own", "sum", "final"):
        assert mag[f"lira/{view}"]["per_target_auc"][0] == pytest.approx(0.5)
        assert mag[f"lira/{view}"]["empirical_epsilon"]["eps_lower_bound"] == 0.0


def test_canary_exposure_near_max_for_wanda_and_at_chance_for_magnitude(real):
    from secprune.attacks import inversion as inv
    from secprune.attacks.canary import CanaryBudget, exposure_audit
    from secprune.audits.engine import LayerZeroMasks
    from secprune.methods import wanda_score
    from secprune.topk import lowest_k_mask, priority

    model, tok, pool, _ = real
    feats = inv.token_features(model)
    weights = inv.layer0_weights(model)
    eng = LayerZeroMasks(model, pool, matrices=list(weights))
    # the premise, on real text: token sums of a_t^2 give the engine's exact q/k/v masks
    s = feats[pool[2:4].reshape(-1)].double().pow(2).sum(0)
    for n, w in weights.items():
        prio = priority(shape=tuple(w.shape), group="row", seed=0, tag=f"local:0.{n}")
        assert torch.equal(lowest_k_mask(wanda_score(w, s), sparsity=0.5, group="row", prio=prio),
                           eng.masks([2, 3])[f"layers.0.{n}"])
    mean_sq = eng.stats["self_attn.q_proj"][8:].mean(0)
    for method in ("wanda", "magnitude"):
        e = LayerZeroMasks(model, pool, method=method, matrices=list(weights))
        rest = {n: sum(e.masks(p)[f"layers.0.{n}"].to(torch.int64) for p in ([2, 3], [4, 5], [6, 7]))
                for n in weights}
        res = exposure_audit(features=feats, weights=weights, client_windows=pool[8:10], rest_counts=rest,
                             n_clients=4, mean_window_sq=mean_sq, tokenizer=tok, method=method,
                             budget=CanaryBudget(length=4, secrets=2, insertions=[4], skellam_lam=0.5))
        d = res["summary"]["4"]
        if method == "wanda":
            assert d["informed/own"]["mean"] >= d["max_exposure_mean"] - 0.5
            assert d["informed/own"]["mean"] > 4 * res["chance_uniform_rank"]
        else:
            for key in ("informed/own", "informed/sum", "informed/final", "prior/own"):
                assert d[key]["mean"] == pytest.approx(res["all_tied"], abs=1e-9)
