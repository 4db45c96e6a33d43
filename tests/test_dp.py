"""Defence mechanisms and their accounting (secprune.dp)."""

import math

import numpy as np
import pytest
import torch

from secprune import dp


def test_flip_probability_and_rr_rate():
    assert dp.flip_probability(0.0) == pytest.approx(0.5)
    assert dp.flip_probability(math.log(3)) == pytest.approx(0.25)
    assert dp.flip_probability(math.inf) == 0.0
    mask = torch.zeros(200_000, dtype=torch.bool)
    out = dp.randomized_response(mask, math.log(3), generator=torch.Generator().manual_seed(0))
    assert out.float().mean().item() == pytest.approx(0.25, abs=0.005)


def test_rr_rdp_limits_and_composition():
    eps = 1.0
    # D_inf of one RR bit is eps; large orders approach it from below
    assert dp.rr_rdp(eps, [1e6])[0] == pytest.approx(eps, rel=1e-3)
    vals = dp.rr_rdp(eps, [1.5, 2, 4, 16])
    assert np.all(np.diff(vals) > 0) and np.all(vals <= eps + 1e-9)
    # order 2 by hand: log((1-q)^2/q + q^2/(1-q))
    q = dp.flip_probability(eps)
    assert dp.rr_rdp(eps, 2.0)[0] == pytest.approx(math.log((1 - q) ** 2 / q + q ** 2 / (1 - q)))
    res = dp.rr_epsilon(0.01, h=10_000, delta=1e-5)
    assert res["eps_pure"] == pytest.approx(100.0)
    assert res["eps_rdp"] < res["eps_pure"]  # RDP composition is tighter for many bits


def test_skellam_rdp_matches_gaussian_limit():
    lam = 2000.0  # variance 4000
    for a in (2.0, 8.0):
        assert dp.skellam_rdp(lam, a)[0] == pytest.approx(a / (2 * 2 * lam), rel=0.02)
    # more noise, less privacy loss; more differing bits, more loss
    e1 = dp.skellam_epsilon(10.0, h=1, delta=1e-5)["eps"]
    e2 = dp.skellam_epsilon(100.0, h=1, delta=1e-5)["eps"]
    e3 = dp.skellam_epsilon(100.0, h=50, delta=1e-5)["eps"]
    assert e2 < e1 and e3 > e2


def test_gaussian_epsilon_uses_opacus_rdp():
    from opacus.accountants.analysis.rdp import compute_rdp

    r = dp.gaussian_epsilon(sigma=20.0, h=4, delta=1e-5)
    assert r["noise_multiplier"] == pytest.approx(10.0)
    assert compute_rdp(q=1.0, noise_multiplier=10.0, steps=1, orders=[2.0]) == pytest.approx(2.0 / (2 * 100))
    # classical bound sqrt(2 ln(1.25/delta)) / z is looser than the RDP one
    assert r["eps"] < math.sqrt(2 * math.log(1.25 / 1e-5)) / 10.0 + 1e-9
    assert dp.gaussian_epsilon(sigma=20.0, h=400, delta=1e-5)["eps"] > r["eps"]


def test_lam_for_epsilon_inverts():
    lam = dp.lam_for_epsilon(2.0, h=10, delta=1e-5)
    assert dp.skellam_epsilon(lam, h=10, delta=1e-5)["eps"] <= 2.0 + 1e-9
    assert dp.skellam_epsilon(lam / 1.05, h=10, delta=1e-5)["eps"] > 2.0 - 0.05


def test_rr_noisy_counts_matches_simulating_every_client():
    m, eps = 5, 0.7
    q = dp.flip_probability(eps)
    counts = torch.tensor([0, 2, 5] * 40_000)
    noisy = dp.rr_noisy_counts(counts, m, eps, generator=torch.Generator().manual_seed(0))
    for c in (0, 2, 5):
        x = noisy[counts == c].double()
        mean = c * (1 - q) + (m - c) * q
        var = (c + (m - c)) * q * (1 - q)
        assert x.mean().item() == pytest.approx(mean, abs=0.02)
        assert x.var().item() == pytest.approx(var, rel=0.03)
    assert torch.equal(dp.rr_noisy_counts(counts, m, math.inf), counts)
