"""Distributed Skellam noise inside the secure sum (secprune.dp client shares, secprune.dp_sum.NoisySum)."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import skellam

from secprune import dp
from secprune.cli import main
from secprune.dp_sum import NoisySum

from .test_cli import SMALL


def test_chernoff_tail_bounds_the_exact_skellam_tail():
    for mu in (0.05, 1.0, 30.0, 2000.0):
        for b in (1, 5, 20, 200):
            exact = 2 * skellam.sf(b, mu, mu)  # P(|X| > b)
            if exact > 1e-300:
                assert math.exp(dp.skellam_share_log_tail(mu=mu, bound=b)) >= exact * (1 - 1e-9), (mu, b)
        bound = dp.skellam_share_bound(mu=mu, log_tail=-30.0)
        assert 2 * skellam.sf(bound, mu, mu) <= math.exp(-30.0)
        assert dp.skellam_share_log_tail(mu=mu, bound=bound - 1) > -30.0  # the smallest such bound
    assert dp.skellam_share_bound(mu=1.0) < dp.skellam_share_bound(mu=100.0)


def test_client_share_law_and_offsets_round_trip():
    rng = np.random.default_rng(0)
    mu, n = 3.0, 200_000
    b = dp.skellam_share_bound(mu=mu)
    share, clipped = dp.client_noise_share(size=n, mu=mu, bound=b, rng=rng)
    assert clipped == 0 and share.dtype == np.int64
    assert abs(share.mean()) < 0.03 and share.var() == pytest.approx(2 * mu, rel=0.03)
    v = (rng.random(n) < 0.5).astype(np.uint8)
    sub = dp.client_submission(vector=v, share=share, bound=b)
    assert sub.min() >= 0 and sub.max() <= 1 + 2 * b and sub[-1] == 1 and len(sub) == n + 1
    noisy, survivors = dp.server_unoffset(total=sub, bound=b)
    assert survivors == 1 and np.array_equal(noisy, v.astype(np.int64) + share)
    # clipping happens at the bound and is counted
    tight, clipped = dp.client_noise_share(size=n, mu=mu, bound=1, rng=rng)
    assert tight.min() == -1 and tight.max() == 1 and clipped == pytest.approx(n * 2 * skellam.sf(1, mu, mu), rel=0.05)


@pytest.mark.parametrize("backend", ["none", "pairwise"])
def test_noisy_sum_adds_exactly_the_distributed_noise(backend):
    m, d, lam = 5, 20_000, 8.0
    rng = np.random.default_rng(1)
    vecs = [(rng.random(d) < 0.5).astype(np.uint8) for _ in range(m)]
    plain = np.sum(vecs, axis=0).astype(np.int64)
    s = NoisySum.make(backend, n_clients=m, lam=lam, colluders=1, noise_seed=3)
    assert s.inner.max_value == 1 + 2 * s.bound and s.mu == pytest.approx(lam / 4)
    noise = s.sum("layers.0.q", vecs) - plain
    # every client adds Sk(mu, mu): m mu = 10 in total (the guarantee assumes only m - 1 = 4 honest ones)
    assert abs(noise.mean()) < 0.1 and noise.var() == pytest.approx(2 * m * s.mu, rel=0.05)
    # the inner summer only ever saw non-negative submissions in its range: its byte log counts them
    st = s.stats()
    assert st["entries"] == d + 1 and st["backend"] == backend
    p = s.privacy()
    assert p["entries"] == d and p["sums"] == 1 and p["shares_clipped"] == 0 and p["min_survivors"] == m
    assert p["noise_lam_guaranteed"] == pytest.approx(lam if backend == "pairwise" else lam / 4)
    want = dp.skellam_epsilon(p["noise_lam_guaranteed"], h=d, delta=1e-5)["eps"]
    assert p["epsilon"] == pytest.approx(want)
    # a resumed run continues the accounting
    t = NoisySum.make(backend, n_clients=m, lam=lam, colluders=1, noise_seed=3)
    t.restore_accounting(s.accounting())
    assert t.privacy()["entries"] == d and t.privacy()["sums"] == 1


def test_noisy_sum_with_dropouts_removes_only_the_survivors_offsets():
    m, d, lam = 6, 5_000, 2.0
    rng = np.random.default_rng(2)
    vecs = [(rng.random(d) < 0.5).astype(np.uint8) for _ in range(m)]
    from secprune.secagg.pairwise import PairwiseSum

    mu = lam / (m - 2)
    bound = dp.skellam_share_bound(mu=mu)
    inner = PairwiseSum(n_clients=m, max_value=1 + 2 * bound, colluders=0, dropouts={"upload": [1, 4]})
    s = NoisySum(inner, lam=lam, dropouts=2, noise_seed=5)
    out = s.sum("k", vecs)
    survivors = [0, 2, 3, 5]
    noise = out - np.sum([vecs[i] for i in survivors], axis=0)
    assert s.privacy()["min_survivors"] == 4
    assert abs(noise.mean()) < 0.1 and noise.var() == pytest.approx(2 * 4 * mu, rel=0.08)  # = 2 lam: the guarantee


def test_accounting_assumptions_move_epsilon_the_right_way():
    base = dict(lam=1e4, n_clients=16, entries=10_000, delta=1e-5)
    sec = dp.distributed_skellam_accounting(dropouts=0, colluders=0, secure=True, **base)
    coll = dp.distributed_skellam_accounting(dropouts=2, colluders=3, secure=True, **base)
    plain = dp.distributed_skellam_accounting(dropouts=0, colluders=0, secure=False, **base)
    assert sec["epsilon"] == pytest.approx(coll["epsilon"])  # the guarantee is lam by construction
    assert coll["share_mu"] == pytest.approx(1e4 / 11) and coll["epsilon_nominal"] < coll["epsilon"]
    assert plain["epsilon"] > sec["epsilon"]  # without secure aggregation only the own share protects
    assert sec["clip_delta"] < 1e-60 and sec["delta_total"] == pytest.approx(1e-5)
    more = dp.distributed_skellam_accounting(dropouts=0, colluders=0, secure=True, **{**base, "lam": 1e5})
    assert more["epsilon"] < sec["epsilon"]
    # above the numerical limit the proven Skellam RDP upper bound is used: it exceeds the Gaussian value
    lam = 2e7
    assert dp.skellam_rdp(lam, [4.0])[0] > 4.0 / (4 * lam)
    assert dp.skellam_rdp(lam, [4.0])[0] == pytest.approx(4.0 / (4 * lam), rel=1e-6)


def test_prune_with_distributed_dp_end_to_end(tiny_folder, federation, tmp_path, capsys):
    def prune(out, *extra):  # three clients: the fewest a secure sum may cover
        return main(["prune", "--model", str(tiny_folder), "--client-data", *federation["files"], *SMALL, "--out",
                     str(out), "--quiet", "--baselines", *extra])

    secure = ("--secure-agg", "pairwise", "--secagg-colluders", "0", "--dp-noise", "skellam")
    assert prune(tmp_path / "plain") == 0
    assert prune(tmp_path / "quiet", *secure, "--dp-lambda", "1e-9") == 0
    assert prune(tmp_path / "loud", *secure, "--dp-lambda", "1e6") == 0
    capsys.readouterr()
    from secprune.masks import MaskSet

    a, b, c = (MaskSet.load(tmp_path / x / "final_mask.safetensors") for x in ("plain", "quiet", "loud"))
    # negligible noise: the same final mask as without DP (offsets removed exactly); huge noise: another one
    assert all(np.array_equal(a.packed[n], b.packed[n]) for n in a.names())
    assert sum(int(np.count_nonzero(a.packed[n] != c.packed[n])) for n in a.names()) > 0
    s = json.loads((tmp_path / "loud" / "summary.json").read_text())
    dpsec = s["differential_privacy"]
    assert dpsec["mechanism"] == "skellam" and dpsec["secure_aggregation"] and dpsec["lam"] == 1e6
    entries = sum(int(np.prod(sh)) for sh in a.shapes.values())
    assert dpsec["entries"] == entries and dpsec["sums"] == 14
    assert dpsec["epsilon"] == pytest.approx(dp.skellam_epsilon(1e6, h=entries, delta=1e-5)["eps"])
    assert "differential_privacy" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert s["secure_aggregation"]["backend"] == "pairwise"


@pytest.mark.parametrize("flags, needle", [
    (["--dp-lambda", "3"], "--dp-lambda: only used with --dp-noise"),
    (["--dp-noise", "skellam"], "--dp-lambda must be > 0"),
    (["--dp-noise", "skellam", "--dp-lambda", "2", "--scaling"], "--scaling: not with --dp-noise"),
    (["--dp-noise", "skellam", "--dp-lambda", "2", "--dp-colluders", "2"], "must leave at least one honest"),
    (["--dp-noise", "skellam", "--dp-lambda", "2", "--algorithm", "fedspallm"], "only with --algorithm fedprllm"),
    (["--dp-noise", "laplace"], "--dp-noise"),
])
def test_dp_flags_refuse_contradictions(tiny_folder, client_files, tmp_path, capsys, flags, needle):
    code = main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out",
                 str(tmp_path / "x"), "--quiet", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_server_keeps_noisy_counts_outside_the_vote_range():
    from secprune.fedprllm.aggregate import count_tensor

    noisy = np.array([-7, 0, 3, 16, 300], dtype=np.int64)  # Skellam noise pushes counts below 0 and above m
    assert count_tensor(noisy, 16).tolist() == noisy.tolist()
    exact = np.array([0, 3, 16], dtype=np.int64)
    kept = count_tensor(exact, 16)
    assert kept.dtype == torch.uint8 and kept.tolist() == exact.tolist()
