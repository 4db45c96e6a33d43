"""make_summer: every backend gives the same exact sum as "none"; stats account real bytes."""

from __future__ import annotations

import numpy as np
import pytest

from secprune.secagg import BACKENDS, make_summer


@pytest.mark.parametrize("n", [2, 5, 9])
def test_backends_are_bit_identical_to_plaintext(n):
    rng = np.random.default_rng(n)
    layers = {f"layers.{i}.mlp": [rng.integers(0, 2, 37 * (i + 1)).astype(np.bool_) for _ in range(n)]
              for i in range(3)}
    results = {}
    for backend in BACKENDS:
        summer = make_summer(backend, n_clients=n, seed=1)
        results[backend] = {k: summer.sum(k, v) for k, v in layers.items()}
        stats = summer.stats()
        assert stats["backend"] == backend and stats["rounds"] == 3
        assert stats["plaintext_packed_bytes"] == n * sum((v[0].size + 7) // 8 for v in layers.values())
        assert set(stats["per_round"]) == set(layers)
        assert stats["total_bytes"] == sum(stats["received"].values()) > 0
    for backend in BACKENDS:
        for key in layers:
            assert results[backend][key].dtype == np.int64
            np.testing.assert_array_equal(results[backend][key], results["none"][key])


def test_unknown_backend_and_options():
    with pytest.raises(ValueError, match="unknown backend 'rsa'"):
        make_summer("rsa", n_clients=2)
    assert make_summer("none", n_clients=2, neighbours=3).name == "none"  # options of other backends ignored
    with pytest.raises(TypeError):
        make_summer("pairwise", n_clients=2, frobnicate=1)
    with pytest.raises(ValueError, match="n_clients"):
        make_summer("pairwise", n_clients=0)


def test_empty_vectors_sum_to_empty():
    for backend in BACKENDS:
        out = make_summer(backend, n_clients=3).sum("empty", [np.zeros(0, np.uint8)] * 3)
        assert out.shape == (0,) and out.dtype == np.int64
