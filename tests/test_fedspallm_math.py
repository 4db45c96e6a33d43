"""FedSpaLLM server math and layer sampling against direct computations (Eqs. 5-9, Corollary 4.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from secprune.fedspallm.aggregate import (
    FixedPoint,
    aggregate_matrix,
    expand_mask,
    expansion_k,
    l0_aggregate,
    prune_counts,
    secure_l0_sums,
    target_pruned,
)
from secprune.fedspallm.sampling import cover_shares, layer_budgets, sample_layers, schedule
from secprune.secagg import make_summer


def _clients(n=4, shape=(12, 20), p=0.5, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, *shape)).astype(np.float32)
    P = rng.random((n, *shape)) < p
    P[:, 0, :5] = True  # pruned by every client
    P[:, 1, :5] = False  # kept by every client
    W[P] = 0.0  # clients send pruned (zeroed) weights
    return W, P


def test_l0_aggregation_matches_direct_numpy():  # Eq. 5
    W, P = _clients()
    wg, kept = l0_aggregate(weights=[torch.from_numpy(w) for w in W], pruned=[torch.from_numpy(p) for p in P])
    expect = np.zeros(W.shape[1:])
    for r in range(W.shape[1]):
        for c in range(W.shape[2]):
            vals = [W[i, r, c] for i in range(W.shape[0]) if not P[i, r, c]]
            expect[r, c] = np.mean(np.array(vals, dtype=np.float64)) if vals else 0.0
    np.testing.assert_allclose(wg.numpy(), expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(kept.numpy(), (~P).sum(0))
    assert np.all(wg.numpy()[0, :5] == 0)
    # the plain mean would shrink weights kept by only some clients; l0 aggregation does not
    one_keeper = ((~P).sum(0) == 1)
    assert one_keeper.any()
    np.testing.assert_allclose(wg.numpy()[one_keeper], W.sum(0)[one_keeper], rtol=1e-6)


def test_prune_counts_and_eq7_k():
    W, P = _clients(n=5)
    C = prune_counts(pruned=[torch.from_numpy(p) for p in P])
    np.testing.assert_array_equal(C.numpy(), P.sum(0))  # Eq. 6
    d = P[0].size
    for s in (0.3, 0.5, 0.7, 0.9):
        k = expansion_k(counts=C, n_clients=5, sparsity=s)
        assert k == math.ceil(round(s * d, 9)) - int((P.sum(0) == 5).sum())  # Eq. 7


def test_target_is_exact_ceil():
    assert target_pruned(sparsity=0.7, numel=100) == 70  # 0.7 * 100 = 70.00000000000001 in floats
    assert target_pruned(sparsity=0.5, numel=7) == 4
    assert target_pruned(sparsity=0.6, numel=4096) == 2458


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_expansion_matches_direct_sort_and_hits_target_exactly(sparsity, n):  # Eqs. 6-7
    rng = np.random.default_rng(n)
    shape = (16, 25)
    d = 16 * 25
    # clients each prune ~sparsity, with partial agreement
    base = rng.random(shape)
    P = np.stack([(base + 0.3 * rng.random(shape)) < np.quantile(base, sparsity) + 0.1 for _ in range(n)])
    C = P.sum(0)
    mag = np.abs(rng.normal(size=shape)).astype(np.float32)
    mask = expand_mask(counts=torch.from_numpy(C), n_clients=n, sparsity=sparsity,
                       magnitude=torch.from_numpy(mag), seed=3, name="m").numpy()
    target = math.ceil(round(sparsity * d, 9))
    assert mask.sum() == target
    k = target - int((C == n).sum())
    assert k > 0
    # direct: keep everything pruned by all, then the k others with the most votes, smaller |W_g| first
    cand = np.flatnonzero(C.reshape(-1) < n)
    order = cand[np.lexsort((mag.reshape(-1)[cand], -C.reshape(-1)[cand]))]
    expect = (C == n).reshape(-1).copy()
    expect[order[:k]] = True
    np.testing.assert_array_equal(mask.reshape(-1), expect)


def test_expansion_ties_are_seeded_and_exact():
    C = torch.zeros(10, 10, dtype=torch.long)  # no agreement at all: every weight ties
    a = expand_mask(counts=C, n_clients=3, sparsity=0.37, seed=1, name="x")
    b = expand_mask(counts=C, n_clients=3, sparsity=0.37, seed=1, name="x")
    c = expand_mask(counts=C, n_clients=3, sparsity=0.37, seed=2, name="x")
    assert int(a.sum()) == 37 and torch.equal(a, b) and not torch.equal(a, c)


def test_no_expansion_keeps_intersection_and_k_negative_adds_nothing():
    W, P = _clients(n=3, p=0.5)
    agg = aggregate_matrix(weights=[torch.from_numpy(w) for w in W], pruned=[torch.from_numpy(p) for p in P],
                           sparsity=0.5, expansion=False)
    np.testing.assert_array_equal(agg.mask.numpy(), P.all(0))
    assert agg.mask.float().mean() < 0.5  # clients disagree: below target without expansion
    assert agg.intersection_sparsity == pytest.approx(P.all(0).mean())
    on = aggregate_matrix(weights=[torch.from_numpy(w) for w in W], pruned=[torch.from_numpy(p) for p in P],
                          sparsity=0.5, expansion=True)
    assert int(on.mask.sum()) == target_pruned(sparsity=0.5, numel=P[0].size)
    assert torch.all(on.mask >= agg.mask) and torch.all(on.weight[on.mask] == 0)
    kept = ~on.mask
    torch.testing.assert_close(on.weight[kept], agg.weight[kept])  # expansion only zeroes entries
    C = torch.full((4, 4), 3)
    C[0, 0] = 0
    assert torch.equal(expand_mask(counts=C, n_clients=3, sparsity=0.5), C == 3)  # k < 0: intersection


@pytest.mark.parametrize("backend", ["none", "pairwise"])
def test_fixed_point_secure_sums_error_bound(backend):
    W, P = _clients(n=3, shape=(8, 16))
    W[0, 2, 3] = 50.0  # beyond the bound: clipped and counted
    P[0, 2, 3] = False
    ws, ps = [torch.from_numpy(w) for w in W], [torch.from_numpy(p) for p in P]
    bits = 12
    code = FixedPoint(bits=bits, bound=4.0)
    wsum_s = make_summer(backend, n_clients=3, max_value=code.max_value, seed=1, colluders=0)
    msum_s = make_summer(backend, n_clients=3, max_value=1, seed=2, colluders=0)
    wsum, kept, clipped = secure_l0_sums(weights=ws, pruned=ps, code=code, weight_summer=wsum_s,
                                         mask_summer=msum_s, key="t")
    assert clipped == 1
    np.testing.assert_array_equal(kept.numpy(), (~P).sum(0))
    exact = np.where(P, 0.0, np.clip(W, -4, 4).astype(np.float64)).sum(0)
    assert np.abs(wsum.numpy() - exact).max() <= 3 * code.max_error + 1e-12  # 3 rounding errors at most
    W[0, 2, 3] = 1.0
    ws[0] = torch.from_numpy(W[0])
    # the same masks again: fresh summers (fresh clients), since a client releases one input into one sum
    wsum_s = make_summer(backend, n_clients=3, max_value=code.max_value, seed=1, colluders=0)
    msum_s = make_summer(backend, n_clients=3, max_value=1, seed=2, colluders=0)
    agg = aggregate_matrix(weights=ws, pruned=ps, sparsity=0.5, expansion=False, name="t2", code=code,
                           weight_summer=wsum_s, mask_summer=msum_s)
    ref, _ = l0_aggregate(weights=ws, pruned=ps)
    err = (agg.weight - ref).abs().max().item()
    assert err == pytest.approx(agg.max_abs_error, abs=1e-7)
    assert 0 < err <= code.max_error == 4.0 / 2 ** (bits + 1)
    assert wsum_s.stats()["total_bytes"] > 0 and msum_s.stats()["entries"] == 8 * 16


def test_layer_budgets_are_proportional_to_resources():  # Eq. 8
    assert layer_budgets(resources=[1.0, 0.5, 0.25, 0.25], n_layers=8) == [8, 4, 2, 2]
    assert layer_budgets(resources=[0.1] * 10, n_layers=30) == [3] * 10
    assert layer_budgets(resources=[0.01, 1.0], n_layers=30) == [1, 30]  # at least one layer
    with pytest.raises(ValueError, match="Corollary 4.1"):
        layer_budgets(resources=[0.1, 0.1], n_layers=30)
    with pytest.raises(ValueError):
        layer_budgets(resources=[1.5], n_layers=4)


@pytest.mark.parametrize("resources, m", [([0.5, 0.25, 0.25], 4), ([0.3] * 4, 10), ([1.0, 0.1, 0.2], 30),
                                          ([0.1] * 16, 30)])
def test_sampling_covers_every_layer_with_exact_sizes(resources, m):  # Alg. 1 l. 3-7, Corollary 4.1
    budgets = layer_budgets(resources=resources, n_layers=m)
    shares = cover_shares(budgets=budgets, n_layers=m)
    assert sum(shares) == m and all(c <= k for c, k in zip(shares, budgets, strict=True))
    rng = np.random.default_rng(0)
    for _ in range(50):
        L = sample_layers(budgets=budgets, n_layers=m, rng=rng)
        assert [len(x) for x in L] == budgets
        assert all(len(set(x)) == len(x) for x in L)
        assert set().union(*map(set, L)) == set(range(m))


def test_sampling_gives_every_layer_equal_probability():  # Theorem 4.2's condition: P(j in L_i) = k_i / m
    budgets, m, trials = [3, 1, 2], 6, 6000
    freq = np.zeros((3, m))
    rng = np.random.default_rng(1)
    for _ in range(trials):
        for i, L in enumerate(sample_layers(budgets=budgets, n_layers=m, rng=rng)):
            freq[i, L] += 1
    expect = np.array(budgets)[:, None] / m
    assert np.abs(freq / trials - expect).max() < 0.03


def test_schedule_rounds_and_no_sampling():
    full = schedule(resources=None, n_clients=3, n_layers=5, rounds=2, seed=0, sampling=False)
    assert full == [[list(range(5))] * 3] * 2
    s = schedule(resources=[0.4], n_clients=3, n_layers=5, rounds=3, seed=0)
    assert all([len(x) for x in r] == [2, 2, 2] for r in s)
    assert s[0] != s[1] or s[1] != s[2]  # fresh sample every round
    assert s == schedule(resources=[0.4], n_clients=3, n_layers=5, rounds=3, seed=0)
