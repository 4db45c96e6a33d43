"""--dp statistics: the accountant against maintained ones, the mechanism's bounds, and whole runs."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

from secprune.cli import main
from secprune.config import PruneConfig
from secprune.dp_stats import (
    Budget,
    BudgetExhausted,
    epsilon_for_sigma,
    gaussian_noise,
    normalize_units,
    pld_epsilon,
    psd_project,
    sigma_for_epsilon,
)
from secprune.errors import UsageError
from secprune.methods import SparseGPT, Wanda
from secprune.methods.private import Private

dp_accounting = pytest.importorskip("dp_accounting")

SMALL = ["--nsamples", "4", "--seqlen", "16", "--eval", "ptb", "--eval-windows", "2", "--eval-seqlen", "16"]


@pytest.mark.parametrize("sigma", [0.3, 0.6, 1.0, 3.0])
def test_analytic_epsilon_equals_the_pld_accountant(sigma):
    assert epsilon_for_sigma(sigma=sigma, delta=1e-5) == pytest.approx(pld_epsilon(sigma=sigma, delta=1e-5), rel=1e-3)


def test_composed_gaussians_equal_one_gaussian_of_the_summed_precision():
    """GDP composition (Dong et al. 2022): releases with multipliers s_i compose to multiplier
    (sum s_i^-2)^-1/2. dp_accounting composes the events itself (PLD exactly, RDP as an upper bound)."""
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    sigmas = [2.0, 3.0, 3.0, 5.0]
    events = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in sigmas])
    pld, rdp = pld_privacy_accountant.PLDAccountant(), rdp_privacy_accountant.RdpAccountant()
    pld.compose(events)
    rdp.compose(events)
    ours = epsilon_for_sigma(sigma=sum(s ** -2 for s in sigmas) ** -0.5, delta=1e-5)
    assert ours == pytest.approx(pld.get_epsilon(1e-5), rel=5e-3)
    assert ours <= rdp.get_epsilon(1e-5)


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_budget_spends_exactly_the_target_and_refuses_more(epsilon):
    b = Budget(epsilon=epsilon, delta=1e-5, visits=3)
    assert sigma_for_epsilon(epsilon=epsilon, delta=1e-5) == pytest.approx(b.total ** -0.5)
    for _ in range(3):  # three visits of four distinct statistics each
        s = b.multiplier(distinct=4)
        for _ in range(4):
            b.spend(s)
    assert b.epsilon_spent() == pytest.approx(epsilon, rel=1e-5)
    assert b.epsilon_spent() <= epsilon * (1 + 1e-6)
    with pytest.raises(BudgetExhausted, match="exceed the budget"):
        b.spend(b.multiplier(distinct=4))
    assert b.releases == 12


def test_window_contributions_are_normalized_before_the_sum():
    """Adding one window moves the (noise-free) statistic by a vector of norm exactly 1, however loud it is."""
    torch.manual_seed(0)
    x = torch.randn(5, 7, 6, dtype=torch.float64) * torch.tensor([1, 1, 1, 1, 100.0]).view(5, 1, 1)
    priv = Private(Wanda(), epsilon=8, delta=1e-5)
    stats = priv.new_stats(n_clients=1, in_features=6, device=torch.device("cpu"))
    priv.accumulate(stats, x[:4], torch.zeros(4, dtype=torch.long))
    before = stats.clone()
    priv.accumulate(stats, x[4:], torch.zeros(1, dtype=torch.long))
    assert (stats - before).norm().item() == pytest.approx(1.0)
    per_window = (x[:4] ** 2).sum(1)  # independent: Wanda's sum of squares, each row divided by its norm
    expected = (per_window / per_window.norm(dim=1, keepdim=True)).sum(0)
    torch.testing.assert_close(before[0], expected)


def test_released_noise_has_the_planned_standard_deviation():
    gen = torch.Generator().manual_seed(1)
    priv = Private(Wanda(), epsilon=4, delta=1e-5, visits=2, generator=gen)
    raw = {"a": torch.full((1, 200_000), 1e6, dtype=torch.float64), "b": torch.full((1, 10), 1e6, dtype=torch.float64)}
    out = priv.release(dict(raw))
    sigma = math.sqrt(2 * 2) * sigma_for_epsilon(epsilon=4, delta=1e-5)  # 2 visits x 2 distinct statistics
    assert priv.multipliers == [pytest.approx(sigma)]
    assert (out["a"] - raw["a"]).std().item() == pytest.approx(sigma, rel=0.01)
    assert priv.budget.releases == 2
    quiet = Private(Wanda(), epsilon=4, delta=1e-5, generator=gen).release({"z": torch.zeros(1, 1000,
                                                                                          dtype=torch.float64)})
    assert quiet["z"].min().item() == pytest.approx(sigma / 2)  # 1 visit x 1 statistic: half the multiplier


def test_hessian_noise_is_symmetric_and_the_release_psd():
    gen = torch.Generator().manual_seed(2)
    z = gaussian_noise((1, 40, 40), std=1.0, symmetric=True, generator=gen, dtype=torch.float32,
                       device=torch.device("cpu"))
    torch.testing.assert_close(z, z.transpose(-1, -2))
    x = torch.randn(3, 9, 40)
    priv = Private(SparseGPT(), epsilon=1, delta=1e-5, generator=gen)
    stats = priv.new_stats(n_clients=1, in_features=40, device=torch.device("cpu"))
    priv.accumulate(stats, x, torch.zeros(3, dtype=torch.long))
    h = priv.release({"m": stats})["m"]
    assert torch.linalg.eigvalsh(h.double()).min().item() > -1e-4
    torch.testing.assert_close(h, h.transpose(-1, -2))
    torch.testing.assert_close(psd_project(torch.diag(torch.tensor([2.0, -1.0]))), torch.diag(torch.tensor([2.0, 0.0])))
    assert normalize_units(torch.zeros(2, 3)).abs().sum() == 0  # an empty window stays empty


def test_masks_read_only_the_released_statistics(tiny_folder, client_files, tmp_path, monkeypatch):
    """A release that hands back all-ones statistics makes Wanda's score |W|: the masks must then be magnitude
    pruning's exactly, so nothing downstream read the raw statistics."""
    def ones(self, stats):
        return {n: None if s is None else torch.ones_like(s) for n, s in stats.items()}

    monkeypatch.setattr(Private, "release", ones)
    for name, extra in (("dp", ["--dp", "statistics"]), ("mag", ["--method", "magnitude"])):
        assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--baselines",
                     "--out", str(tmp_path / name), "--quiet", *extra]) == 0
    from safetensors.numpy import load_file

    a, b = load_file(str(tmp_path / "dp" / "final_mask.safetensors")), load_file(str(tmp_path / "mag" /
                                                                                     "final_mask.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, visits, distinct", [
    ([], 2, 4), (["--strategy", "iterative", "--dp-unit", "client"], 2, 4),
    (["--algorithm", "fedspallm", "--rounds", "2"], 4, 4), (["--method", "sparsegpt"], 2, 4),
])
def test_a_dp_run_states_its_guarantee_and_spends_exactly_it(tiny_folder, client_files, tmp_path, extra, visits,
                                                             distinct):
    out = tmp_path / "o"
    assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out", str(out),
                 "--quiet", "--dp", "statistics", "--dp-epsilon", "4", *extra]) == 0
    dp = json.loads((out / "summary.json").read_text())["differential_privacy"]
    assert dp["epsilon"] == 4 and dp["delta"] == 1e-5
    assert dp["unit"] == ("client" if "client" in extra else "window")
    assert dp["visits_planned"] == visits and dp["releases_max"] == visits * distinct  # tiny LLaMA: 2 layers
    assert dp["epsilon_spent_max"] == pytest.approx(4, rel=1e-5) and dp["epsilon_spent_max"] <= 4 + 1e-6
    assert dp["epsilon_spent_max_pld"] == pytest.approx(4, rel=1e-3)
    sigma = math.sqrt(visits * distinct) * sigma_for_epsilon(epsilon=4, delta=1e-5)
    assert dp["noise_multipliers"] == [pytest.approx(sigma, rel=1e-5)]


def test_noise_is_fresh_and_not_derived_from_the_seed(tiny_folder, client_files, tmp_path):
    masks = []
    for i in range(2):
        assert main(["prune", "--model", str(tiny_folder), "--client-data", *client_files, *SMALL, "--out",
                     str(tmp_path / f"o{i}"), "--quiet", "--dp", "statistics", "--dp-epsilon", "1", "--seed", "0",
                     "--baselines"]) == 0
        from safetensors.numpy import load_file

        masks.append(load_file(str(tmp_path / f"o{i}" / "final_mask.safetensors")))
    assert any(not np.array_equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_a_spent_budget_survives_a_resume(tiny_folder):
    priv = Private(Wanda(), epsilon=2, delta=1e-5)
    priv.plan(visits=1)
    own = priv.for_client(3)
    own.release({"a": torch.ones(1, 4, dtype=torch.float64)})
    again = Private(Wanda(), epsilon=2, delta=1e-5)
    again.plan(visits=1)
    again.load_state(pickle.loads(pickle.dumps(priv.state())))
    with pytest.raises(BudgetExhausted):
        again.for_client(3).release({"a": torch.ones(1, 4, dtype=torch.float64)})


@pytest.mark.parametrize("kw, needle", [
    ({"dp_epsilon": 4.0}, "--dp-epsilon: only used with --dp statistics"),
    ({"dp_unit": "client"}, "--dp-unit: only used with --dp statistics"),
    ({"dp": "statistics", "numerics": "reference"}, "--numerics reference"),
    ({"dp": "statistics", "dp_noise": "skellam", "dp_lambda": 5.0}, "not with --dp-noise"),
    ({"dp": "statistics", "dp_epsilon": 0.0}, "--dp-epsilon must be > 0"),
    ({"dp": "statistics", "dp_delta": 1.0}, "--dp-delta must lie in"),
])
def test_bad_dp_options_are_refused(kw, needle):
    with pytest.raises(UsageError, match=needle):
        PruneConfig(**kw).validate()


def test_each_flower_client_privatizes_and_keeps_its_own_budget(federation, tmp_path):
    """On Flower each ClientApp adds its own noise and spends its own budget, kept across the stages in its
    state folder (left here by withholding `finish`); the server's summary states the configured guarantee."""
    pytest.importorskip("flwr")
    from secprune.flower.driver import ServerRun
    from secprune.flower.settings import config_from_run, run_config_from

    from .local_transport import LocalTransport

    cfg = PruneConfig(model=str(federation["model"]), client_data=federation["files"], nsamples=6, seqlen=16,
                      eval=[], baselines=[], strategy="iterative", dp="statistics", dp_epsilon=2.0).validate()
    run_config = run_config_from(cfg, directory="")
    nodes = [{"client-id": i, "data": f, "state-dir": str(tmp_path / f"s{i}")}
             for i, f in enumerate(federation["files"])]
    transport = LocalTransport(run_config, nodes)
    transport.drop = {100 + i: "finish" for i in range(len(nodes))}
    run = ServerRun(transport, *config_from_run(run_config))
    run.run()
    assert transport.stages.count("step") == 2  # iterative: one step per layer, the budget spread over both
    for i in range(len(nodes)):
        (state,) = (tmp_path / f"s{i}").glob("run-*/dp.pkl")
        spent = pickle.loads(state.read_bytes())["budget"]
        assert spent["releases"] == 2 * 4
        assert epsilon_for_sigma(sigma=spent["spent"] ** -0.5, delta=1e-5) == pytest.approx(2.0, rel=1e-5)
    assert run.strategy.method.planned()["epsilon"] == 2.0


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_audits_of_the_noisy_statistic_never_certify_more_than_the_guarantee(epsilon):
    from secprune.audits.statistic_audit import one_run_audit, trial_audit

    trials, one = trial_audit(epsilon=epsilon, trials=2000), one_run_audit(epsilon=epsilon, canaries=4000)
    assert trials["eps_lower_bound"] <= epsilon and one["eps_lower_bound"] <= epsilon
    if epsilon == 8.0:  # the auditors see the mechanism: a third of the truth or more at this budget of trials
        assert trials["eps_lower_bound"] > 2.0 and one["eps_lower_bound"] > 2.0


def test_the_audit_catches_a_mechanism_with_too_little_noise(monkeypatch):
    """Control: noise one tenth of what epsilon 1 needs; the one-run bound must then exceed the claimed 1."""
    import secprune.dp_stats as dp_stats
    from secprune.audits.statistic_audit import one_run_audit

    real = dp_stats.sigma_for_epsilon  # a mechanism that believes one tenth of the noise is enough
    monkeypatch.setattr(dp_stats, "sigma_for_epsilon", lambda **kw: real(**kw) / 10)
    assert one_run_audit(epsilon=1.0, canaries=4000)["eps_lower_bound"] > 1.0
