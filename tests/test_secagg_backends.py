"""make_summer: every backend gives the same exact sum as "none"; stats account real bytes."""

from __future__ import annotations

import numpy as np
import pytest

from secprune.secagg import BACKENDS, make_summer


@pytest.mark.parametrize("n, threat", [(3, {"colluders": 0}), (5, {}), (9, {})])
def test_backends_are_bit_identical_to_plaintext(n, threat):
    rng = np.random.default_rng(n)
    layers = {f"layers.{i}.mlp": [rng.integers(0, 2, 37 * (i + 1)).astype(np.bool_) for _ in range(n)]
              for i in range(3)}
    results = {}
    for backend in BACKENDS:
        summer = make_summer(backend, n_clients=n, seed=1, **threat)
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
        out = make_summer(backend, n_clients=3, colluders=0).sum("empty", [np.zeros(0, np.uint8)] * 3)
        assert out.shape == (0,) and out.dtype == np.int64


def test_sessions_give_the_same_sums_on_every_backend():
    n, rng = 4, np.random.default_rng(5)
    epochs = [("layers.0", {"layers.0.q": 37, "layers.0.empty": 0, "layers.0.up": 300}),
              ("layers.1", {"layers.1.q": 37})]
    flat = {"flat.q": 37, "flat.empty": 0, "flat.up": 300}
    draw = {name: length for _, lengths in epochs for name, length in lengths.items()} | flat
    data = {(i, name): rng.integers(0, 2, length).astype(np.uint8) for i in range(n) for name, length in draw.items()}
    for backend in BACKENDS:
        summer = make_summer(backend, n_clients=n, colluders=0)
        one = summer.sum_many("flat", flat, lambda i, name: data[(i, name)])
        session = summer.open_session("model", epochs)
        outs = [session.sum_epoch(e, lambda i, name: data[(i, name)]) for e in range(2)]
        for name in draw:
            want = np.sum([data[(i, name)] for i in range(n)], axis=0, dtype=np.int64)
            got = one[name] if name.startswith("flat") else outs[0 if name.startswith("layers.0") else 1][name]
            np.testing.assert_array_equal(got, want)
        assert summer.stats()["entries"] == 2 * 337 + 37
        with pytest.raises(ValueError, match="out of order"):
            session.sum_epoch(0, lambda i, name: data[(i, name)])
        with pytest.raises(ValueError, match="no matrix"):
            summer.open_session("bad", [("x", {})])


@pytest.mark.parametrize(("n", "max_value"), [(16, 1), (300, 1), (3, 255), (2, 2**20)])
def test_plain_sum_is_exact_at_the_largest_entries(n, max_value):
    # every client submits the largest entry somewhere: the sum must not wrap in the accumulator
    rng = np.random.default_rng(n)
    vectors = [rng.integers(0, max_value + 1, 64) for _ in range(n)]
    for v in vectors:
        v[:8] = max_value
    out = make_summer("none", n_clients=n, max_value=max_value).sum("x", vectors)
    assert out.dtype == np.int64 and np.array_equal(out, np.sum(vectors, axis=0, dtype=np.int64))
