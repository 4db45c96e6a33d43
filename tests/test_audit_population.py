"""Non-member windows share no text with the run's windows or each other; the prior holds no private count."""

import numpy as np
import pytest

from secprune.audits import population as P


def _stream(rng, n=60_000, vocab=500):
    s = rng.integers(0, vocab, n)
    s[30_000:30_700] = s[5_000:5_700]  # a repeated passage, as real corpora have
    return s


def test_disjoint_windows_share_no_16_gram_with_run_windows_or_each_other():
    rng = np.random.default_rng(0)
    stream = _stream(rng)
    starts = rng.integers(0, len(stream) - 64, 20)  # run windows at random offsets, as calibration draws them
    run = np.stack([stream[s:s + 64] for s in starts])
    wins, info = P.disjoint_windows(stream=stream, seqlen=64, count=200, exclude=run, rng=np.random.default_rng(1))
    assert wins.shape == (200, 64) and info["chunks_overlapping_run_windows"] >= 20
    for w in wins:
        assert max(P.max_shared_run(a=w, b=r) for r in run) < 16
    # every chunk taken overlaps no run window's interval, by even one token
    for s in info["starts"]:
        assert all(s + 64 <= r or r + 64 <= s for r in starts)
    # and no two taken chunks repeat 16 tokens of each other (the repeated passage is taken at most once)
    for i in range(0, 200, 7):
        for j in range(i + 1, 200, 11):
            assert P.max_shared_run(a=wins[i], b=wins[j]) < 16
    with pytest.raises(ValueError):
        P.disjoint_windows(stream=stream, seqlen=64, count=10_000, exclude=run, rng=np.random.default_rng(1))


def test_frequency_prior_removes_exactly_the_run_windows_tokens():
    rng = np.random.default_rng(2)
    stream = rng.integers(0, 300, 40_000)  # random tokens: 16-grams never repeat by chance
    starts = [1_000, 9_000, 25_000]
    run = np.stack([stream[s:s + 128] for s in starts])
    freq, removed = P.public_frequencies(stream=stream, exclude=run, vocab=300)
    assert removed == 3 * 128
    want = np.bincount(stream, minlength=300) - np.bincount(run.reshape(-1), minlength=300)
    assert np.array_equal(freq, want.astype(float))


def test_ngram_hashes_and_shared_runs():
    a = np.array([1, 2, 3, 4, 5, 6])
    h = P.ngram_hashes(ids=a, n=3)
    assert len(h) == 4 and len(set(h.tolist())) == 4
    assert P.ngram_hashes(ids=np.array([9, 1, 2, 3]), n=3)[1] == h[0]  # same n-gram, same hash
    assert P.max_shared_run(a=np.array([7, 1, 2, 3, 8]), b=np.array([1, 2, 3, 9])) == 3
