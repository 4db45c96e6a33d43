"""Canary exposure: the rank arithmetic, the exact banded masks, and the attack on a tiny model."""

import itertools
import math

import numpy as np
import pytest
import torch

from secprune.attacks.canary import CanaryBudget, exposure_audit
from secprune.attacks.membership import FinalMasks
from secprune.audits import exposure as X
from secprune.audits.banded import BandedFinal, BandedRowTopK, sqrt32
from secprune.audits.engine import LayerZeroMasks
from secprune.audits.synthetic import ByteTokenizer, tiny_llama, zipf_windows
from secprune.fedprllm.aggregate import ServerRule, final_mask
from secprune.methods import wanda_score
from secprune.topk import lowest_k_mask, priority


def test_multisets_and_ranks_against_enumerating_every_sequence():
    counts, mult = X.multisets(length=3)
    assert len(counts) == math.comb(12, 3) and mult.sum() == 1000 and (counts.sum(1) == 3).all()
    rng = np.random.default_rng(0)
    phi = rng.normal(size=10).round(1)  # coarse values: ties between different multisets too
    scores = counts @ phi
    for secret in ([1, 2, 3], [4, 4, 9], [0, 0, 0]):
        idx = X.multiset_index(counts=counts, secret=secret)
        seq = np.array([phi[list(s)].sum() for s in itertools.product(range(10), repeat=3)])
        mine = phi[secret].sum()
        higher = int((seq > mine + 1e-9).sum())
        ties = int((np.abs(seq - mine) <= 1e-9).sum())
        assert X.expected_rank(scores=scores, multiplicity=mult, true_index=idx, tol=1e-9) == pytest.approx(
            1 + higher + (ties - 1) / 2)
    # the uniform-rank chance level equals the mean exposure over ranks 1..N
    n = 1000
    assert X.chance_exposure(space=n) == pytest.approx(np.mean([math.log2(n / r) for r in range(1, n + 1)]))
    assert X.all_tied_exposure(space=1e6) == pytest.approx(1.0, abs=1e-5)
    assert X.max_exposure(space=1e4, tied_sequences=1) == pytest.approx(math.log2(1e4))


def test_banded_row_masks_equal_the_pipeline_topk():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 64, generator=g)
    w[w.abs() < 0.05] = 0.0  # exact zeros, as in the 4-bit checkpoint
    prio = priority(shape=(40, 64), group="row", seed=1, tag="t")
    base = torch.rand(64, generator=g, dtype=torch.float64) + 1.0
    cand = base.view(1, -1) + 0.02 * torch.rand(50, 64, generator=g, dtype=torch.float64)
    sq = sqrt32(cand)
    band = BandedRowTopK(weight=w, prio=prio, sqrt_lo=sq.min(0).values, sqrt_hi=sq.max(0).values, sparsity=0.5)
    assert 0 < band.band_size < w.numel()  # the band is a strict subset
    pruned = band.band_pruned(sq)
    for b in range(50):
        ref = lowest_k_mask(wanda_score(w, cand[b]), sparsity=0.5, group="row", prio=prio)
        assert torch.equal(band.full(pruned[b]), ref), b
        assert torch.equal(band.band_flat(pruned[b:b + 1])[0], ref.reshape(-1)[band.band_index()])


def test_banded_and_fast_final_masks_equal_the_pipeline_final_mask():
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(0, 9, (30, 50), generator=g)
    prio = priority(shape=(30, 50), group="layer", seed=2, tag="server:layers.0.x")
    band = torch.randperm(1500, generator=g)[:120]
    fin = BandedFinal(base_counts=counts, prio=prio, band=band, sparsity=0.5)
    for _ in range(20):
        c = counts.clone().reshape(-1)
        c[band] = torch.randint(0, 9, (120,), generator=g)
        ref = final_mask(c.view(30, 50), sparsity=0.5, group="layer", seed=2, name="layers.0.x").reshape(-1)
        assert torch.equal(fin.full(c[band]), ref)
    model = tiny_llama(0)
    eng = LayerZeroMasks(model, zipf_windows(2, 16, vocab=256, rng=np.random.default_rng(0)))
    fm = FinalMasks(eng, ServerRule(sparsity=0.5, group="layer", seed=3))
    for lo, hi in ((0, 17), (-40, 60)):  # vote counts, and noisy counts
        c = torch.randint(lo, hi, (eng.layout.size,), generator=g)
        ref = torch.cat([final_mask(c[eng.layout.slice(n)].view(s), sparsity=0.5, group="layer", seed=3,
                                    name=n).reshape(-1) for n, s in zip(eng.layout.names, eng.layout.shapes,
                                                                        strict=True)])
        assert torch.equal(fm(c), ref)


def _exposure(method):
    model = tiny_llama(0)
    from secprune.attacks import inversion as inv

    rng = np.random.default_rng(0)
    clients = [zipf_windows(2, 48, vocab=256, rng=rng, exclude=tuple(range(48, 58))) for _ in range(4)]
    pop = zipf_windows(8, 48, vocab=256, rng=rng)
    feats = inv.token_features(model)
    weights = inv.layer0_weights(model)
    eng = LayerZeroMasks(model, torch.cat(clients[1:]), method=method, matrices=list(weights))
    rest = {n: sum(eng.masks([2 * j, 2 * j + 1])[f"layers.0.{n}"].to(torch.int64) for j in range(3)) for n in weights}
    mean_sq = torch.stack([feats[w].double().pow(2).sum(0) for w in pop]).mean(0)
    return exposure_audit(features=feats, weights=weights, client_windows=clients[0], rest_counts=rest, n_clients=4,
                          mean_window_sq=mean_sq, tokenizer=ByteTokenizer(256), method=method,
                          budget=CanaryBudget(length=3, secrets=3, insertions=[2], skellam_lam=0.5))


def test_planted_canary_reaches_max_exposure_and_a_data_free_mask_stays_at_chance():
    res = _exposure("wanda")
    d = res["summary"]["2"]
    for row in res["rows"]:  # the exact statistic matches a direct token sum
        assert row["stat_check_rel"] < 1e-12
    assert d["informed/own"]["mean"] == pytest.approx(d["max_exposure_mean"], abs=0.5)
    # informed/sum is informed/own by construction (the rest is known): nothing to check there
    assert d["informed/own"]["mean"] > 3 * res["chance_uniform_rank"]
    mag = _exposure("magnitude")
    for k, v in mag["summary"]["2"].items():
        if k != "max_exposure_mean":  # every candidate ties: rank (|R| + 1) / 2, about 1 bit
            assert v["mean"] == pytest.approx(mag["all_tied"], abs=1e-9), k


def test_token_sums_reproduce_the_engines_layer0_qkv_masks():
    """The exposure attack's premise: q/k/v statistics of layer 0 are sums of a_t^2 over the tokens."""
    from secprune.attacks import inversion as inv

    model = tiny_llama(3)
    wins = zipf_windows(3, 40, vocab=256, rng=np.random.default_rng(3))
    eng = LayerZeroMasks(model, wins)
    feats = inv.token_features(model)
    s = feats[wins.reshape(-1)].double().pow(2).sum(0)
    assert torch.allclose(s, eng.sq_norms([0, 1, 2])["self_attn.q_proj"], rtol=1e-12, atol=0)
    masks = eng.masks([0, 1, 2])
    for n, w in inv.layer0_weights(model).items():
        prio = priority(shape=tuple(w.shape), group="row", seed=0, tag=f"local:0.{n}")
        assert torch.equal(lowest_k_mask(wanda_score(w, s), sparsity=0.5, group="row", prio=prio),
                           masks[f"layers.0.{n}"])
