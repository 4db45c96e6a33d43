"""Exactly-k selection per comparison group and seeded tie-breaking."""

import os
import time

import numpy as np
import pytest
import torch

from secprune.fedprllm.aggregate import final_mask
from secprune.topk import GROUPS, index_priority, lowest_k_mask, most_votes_mask, ordered_key, priority


@pytest.mark.parametrize("group", GROUPS)
def test_exactly_k_per_group_even_with_massive_ties(group, device):
    score = torch.randint(0, 3, (12, 20)).float().to(device)  # three distinct values: ties everywhere
    prio = priority(shape=(12, 20), group=group, seed=0, tag="t")
    mask = lowest_k_mask(score, sparsity=0.5, group=group, prio=prio)
    if group == "row":
        assert (mask.sum(1) == 10).all()
    elif group == "column":
        assert (mask.sum(0) == 6).all()
    else:
        assert mask.sum() == 120


@pytest.mark.parametrize("ties", [True, False])  # exercises the exact path and the fast no-tie path
@pytest.mark.parametrize("group", GROUPS)
def test_matches_lexicographic_sort_of_score_then_priority(group, ties, device):
    # Independent expectation: numpy lexsort on (priority, score) inside each group (selection on the device
    # under test: torch.kthvalue on CUDA, introselect on CPU).
    rng = np.random.default_rng(3)
    raw = rng.integers(-3, 4, (7, 9)) if ties else rng.normal(size=(7, 9))
    score = torch.from_numpy(raw.astype(np.float32))
    prio = priority(shape=(7, 9), group=group, seed=5, tag="x").expand(7, 9)
    mask = lowest_k_mask(score.to(device), sparsity=0.4, group=group, prio=prio).cpu()
    expected = np.zeros((7, 9), bool)
    s, p = score.numpy(), prio.numpy()
    if group == "row":
        for r in range(7):
            expected[r, np.lexsort((p[r], s[r]))[: int(9 * 0.4)]] = True
    elif group == "column":
        for c in range(9):
            expected[np.lexsort((p[:, c], s[:, c]))[: int(7 * 0.4)], c] = True
    else:
        idx = np.lexsort((p.ravel(), s.ravel()))[: int(63 * 0.4)]
        expected.ravel()[idx] = True
    assert np.array_equal(mask.numpy(), expected)


def _most_votes_by_lexsort(counts: np.ndarray, prio: np.ndarray, k: int) -> np.ndarray:
    """Independent expectation: sort by (-votes, priority) and take the first k."""
    expected = np.zeros(counts.size, bool)
    expected[np.lexsort((prio.ravel(), -counts.ravel().astype(np.int64)))[:k]] = True
    return expected.reshape(counts.shape)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("counts_kind", ["votes", "noisy", "one_level"])
@pytest.mark.parametrize("stable", [False, True])
def test_most_votes_mask_matches_lexsort_of_votes_then_priority(sparsity, counts_kind, stable, device):
    g = torch.Generator().manual_seed(7)
    if counts_kind == "votes":  # 16 clients' vote counts: every level heavily tied
        counts = torch.randint(0, 17, (24, 40), generator=g).to(torch.uint8)
    elif counts_kind == "noisy":  # counts with integer DP noise: negative and above m
        counts = torch.randint(-40, 60, (24, 40), generator=g)
    else:  # all equal: the priority decides everything
        counts = torch.full((24, 40), 5, dtype=torch.int32)
    prio = (index_priority(shape=(24, 40), group="layer") if stable
            else priority(shape=(24, 40), group="layer", seed=1, tag="s"))
    mask = most_votes_mask(counts.to(device), sparsity=sparsity, prio=prio)
    assert mask.device.type == torch.device(device).type
    expected = _most_votes_by_lexsort(counts.numpy(), prio.numpy(), int(960 * sparsity))
    assert np.array_equal(mask.cpu().numpy(), expected)


def test_most_votes_mask_groups_each_expert_alone_and_server_uses_it():
    g = torch.Generator().manual_seed(8)
    counts = torch.randint(0, 5, (3, 10, 12), generator=g).to(torch.uint8)  # a stack of three experts
    prio = priority(shape=(10, 12), group="layer", seed=0, tag="e")
    mask = most_votes_mask(counts, sparsity=0.5, prio=prio)
    for e in range(3):
        assert np.array_equal(mask[e].numpy(), _most_votes_by_lexsort(counts[e].numpy(), prio.numpy(), 60))
    # the server step takes the histogram route for vote counts and gives the general selection's mask
    c = counts[0]
    general = lowest_k_mask(-c.to(torch.float32), sparsity=0.5, group="layer",
                            prio=priority(shape=(10, 12), group="layer", seed=4, tag="server:m"))
    assert torch.equal(final_mask(c, sparsity=0.5, group="layer", seed=4, name="m"), general)
    with pytest.raises(ValueError, match="integer"):
        most_votes_mask(c.float(), sparsity=0.5, prio=prio)


def test_ordered_key_sorts_like_floats_including_negatives():
    x = torch.tensor([-3.5, -0.0, 0.0, 1e-30, -1e-30, 2.0, -2.0, 7.25])
    key = ordered_key(x, torch.zeros_like(x, dtype=torch.int64))
    assert torch.equal(torch.argsort(key, stable=True), torch.argsort(x, stable=True))


def test_same_seed_same_tiebreak_different_seed_differs():
    score = torch.zeros(4, 64)
    a = lowest_k_mask(score, sparsity=0.5, group="row", prio=priority(shape=(4, 64), group="row", seed=1, tag="a"))
    b = lowest_k_mask(score, sparsity=0.5, group="row", prio=priority(shape=(4, 64), group="row", seed=1, tag="a"))
    c = lowest_k_mask(score, sparsity=0.5, group="row", prio=priority(shape=(4, 64), group="row", seed=2, tag="a"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rejects_unknown_group_and_nan():
    with pytest.raises(ValueError, match="comparison group"):
        priority(shape=(2, 2), group="block", seed=0, tag="")
    with pytest.raises(ValueError, match="NaN"):
        lowest_k_mask(torch.tensor([[float("nan"), 1.0]]), sparsity=0.5, group="row",
                      prio=torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        lowest_k_mask(torch.tensor([[float("inf"), 1.0, float("nan"), 2.0]]), sparsity=0.5, group="row",
                      prio=torch.arange(4).view(1, 4))
    # infinities are scores like any other (their sum is NaN, but no score is)
    mask = lowest_k_mask(torch.tensor([[float("inf"), 1.0, -float("inf"), 2.0]]), sparsity=0.5, group="row",
                         prio=torch.arange(4).view(1, 4))
    assert mask.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("group", GROUPS)
def test_equals_selection_by_the_fused_key_on_vote_counts(group):
    # Vote counts (noisy ones may be negative) tie massively: the result must equal the k smallest fused
    # (score, priority) keys, computed here with a full sort.
    g = torch.Generator().manual_seed(0)
    for shape, hi in (((20, 30), 5), ((8, 9), 17), ((16, 16), 2)):
        score = -torch.randint(-3, hi, shape, generator=g).float()
        prio = priority(shape=shape, group=group, seed=2, tag="m")
        key = ordered_key(score, prio.expand(shape))
        for sp in (0.25, 0.5):
            if group == "layer":
                k = int(shape[0] * shape[1] * sp)
                expected = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
                expected[key.reshape(-1).argsort()[:k]] = True
                expected = expected.view(shape)
            else:
                dim = 1 if group == "row" else 0
                expected = key.argsort(dim=dim).argsort(dim=dim) < int(shape[dim] * sp)
            assert torch.equal(lowest_k_mask(score, sparsity=sp, group=group, prio=prio), expected)


def test_row_batches_with_continuous_scores_take_the_fast_path():
    score = torch.rand(16, 33, generator=torch.Generator().manual_seed(1))
    prio = priority(shape=(16, 33), group="row", seed=3, tag="t")
    expected = ordered_key(score, prio.expand(16, 33)).argsort(dim=1).argsort(dim=1) < 16
    assert torch.equal(lowest_k_mask(score, sparsity=0.5, group="row", prio=prio), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("impl", ["_kth_numpy", "_kth_numpy_threads", "_kth_torch"])
def test_both_selection_paths_find_the_sorted_order_statistic(group, dtype, impl, monkeypatch):
    # numpy's introselect (CPU; one thread, or split over 3 threads as for large matrices) and torch.kthvalue
    # (the CUDA path, run here on CPU tensors) against the k-th entry of a full sort, stacks of expert
    # matrices and non-contiguous (transposed) storage included
    from secprune import topk

    if impl == "_kth_numpy_threads":
        monkeypatch.setattr(topk, "_PARALLEL_MIN", 1)
        monkeypatch.setattr(topk.torch, "get_num_threads", lambda: 3)
        impl = "_kth_numpy"
    kth = getattr(topk, impl)
    g = torch.Generator().manual_seed(7)
    values = (torch.randn(3, 40, 33, generator=g) * 5).to(dtype)  # int64: many ties
    for k in (1, 17, 40 if group == "column" else 33):
        if group == "row":
            want = values.sort(dim=-1).values[..., k - 1:k]
        elif group == "column":
            want = values.sort(dim=-2).values[..., k - 1:k, :]
        else:
            want = values.reshape(3, -1).sort(dim=-1).values[:, k - 1].reshape(3, 1, 1)
        got = kth(values, k, group)
        assert got.dtype == values.dtype and torch.equal(got, want), (group, k)
        assert torch.equal(kth(values.transpose(-1, -2).contiguous().transpose(-1, -2), k, group), want)


@pytest.mark.parametrize("group", ["row", "column"])
def test_rows_with_and_without_ties_at_the_threshold_match_the_full_sort(group):
    # A stack of 2 expert matrices where a few rows (columns) tie at their threshold and the rest are
    # continuous: the result must equal a lexsort on (score, priority) inside every group.
    rng = np.random.default_rng(11)
    raw = rng.normal(size=(2, 10, 12)).astype(np.float32)
    tied = [(0, 1), (0, 7), (1, 4)]
    for e, i in tied:
        if group == "row":
            raw[e, i] = rng.integers(0, 2, 12)  # two values: the threshold ties
        else:
            raw[e, :, i] = rng.integers(0, 2, 10)
    score = torch.from_numpy(raw)
    prio = priority(shape=(10, 12), group=group, seed=4, tag="mixed")
    mask = lowest_k_mask(score, sparsity=0.5, group=group, prio=prio)
    p = prio.expand(10, 12).numpy()
    expected = np.zeros(raw.shape, bool)
    for e in range(2):
        if group == "row":
            for r in range(10):
                expected[e, r, np.lexsort((p[r], raw[e, r]))[:6]] = True
        else:
            for c in range(12):
                expected[e, np.lexsort((p[:, c], raw[e, :, c]))[:5], c] = True
    assert np.array_equal(mask.numpy(), expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_threaded_selection_works_in_a_forked_child(monkeypatch):
    # a child forked after the pool started must not wait on its parent's threads
    from secprune import topk

    monkeypatch.setattr(topk, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(topk.torch, "get_num_threads", lambda: 2)
    values = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    want = values.sort(dim=-1).values[..., 2:3]
    assert torch.equal(topk._kth_numpy(values, 3, "row"), want)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:
        os._exit(0 if torch.equal(topk._kth_numpy(values, 3, "row"), want) else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
