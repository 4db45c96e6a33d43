"""Calibration sampling, client partitions and perplexity protocol."""

import math

import numpy as np
import pytest
import torch

from secprune import data, partition
from secprune.errors import UsageError
from secprune.evaluate import perplexity


def test_iid_equal_contiguous_shares_cover_everything():
    parts = partition.iid(10, 4, rng=np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [2, 2, 3, 3]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_dirichlet_covers_everything_and_skews_sources():
    sources = np.repeat(np.arange(3), 40)
    parts = partition.dirichlet(sources, 6, alpha=0.1, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(120)) and all(len(p) for p in parts)
    # small alpha: most clients are dominated by one source; large alpha: mixed
    dominant = [np.bincount(sources[p], minlength=3).max() / len(p) for p in parts]
    mixed = partition.dirichlet(sources, 6, alpha=1000.0, rng=np.random.default_rng(0))
    dominant_mixed = [np.bincount(sources[p], minlength=3).max() / len(p) for p in mixed]
    assert np.mean(dominant) > 0.8 and np.mean(dominant_mixed) < 0.5


def test_partition_errors():
    with pytest.raises(UsageError, match="more clients"):
        partition.iid(3, 4, rng=np.random.default_rng(0))
    with pytest.raises(UsageError, match="alpha"):
        partition.dirichlet(np.zeros(5), 2, alpha=0.0, rng=np.random.default_rng(0))


def test_windows_are_seeded_slices_of_the_stream():
    ids = torch.arange(1000)
    a = data.sample_windows(ids, n=5, seqlen=64, rng=np.random.default_rng(1))
    b = data.sample_windows(ids, n=5, seqlen=64, rng=np.random.default_rng(1))
    assert torch.equal(a, b)
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()  # contiguous tokens
    ev = data.eval_windows(ids, seqlen=300, max_windows=None)
    assert ev.shape == (3, 300) and torch.equal(ev.reshape(-1), ids[:900])
    assert data.eval_windows(ids, seqlen=300, max_windows=2).shape == (2, 300)


def test_perplexity_equals_exp_mean_token_nll(model, windows):
    with torch.no_grad():
        logp = torch.log_softmax(model(windows.to(model.device)).logits[:, :-1].double().cpu(), -1)
    nll = -logp.gather(-1, windows[:, 1:, None]).squeeze(-1)
    expected = math.exp(nll.mean().item())
    assert perplexity(model, windows, batch_size=3, progress=False) == pytest.approx(expected, rel=1e-4)


def test_brown_tags_are_stripped():
    text = data._TAG.sub("", "The/at Fulton/np-tl County/nn-tl said/vbd ./.")
    assert text == "The Fulton County said ."


def test_communication_matches_fedprllm_table3_shape():
    from secprune.fedprllm.comm import mask_communication

    layers = [1000, 1000, 500]
    one = mask_communication(layer_entries=layers, n_clients=4, strategy="one-shot")
    it = mask_communication(layer_entries=layers, n_clients=4, strategy="iterative")
    assert one["rounds"] == 1 and it["rounds"] == 3
    assert one["per_client_entries"] == 2500 and it["per_client_entries"] == 5000  # Table 3: iterative = 2x
    assert one["total_entries"] == 10000 and one["per_client_bytes"] == 313  # ceil(2500 / 8)
    assert [r["upload_entries"] for r in it["per_round"]] == layers
