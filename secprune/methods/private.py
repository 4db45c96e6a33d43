"""A local method whose statistics are differentially private (``--dp statistics``, :mod:`secprune.dp_stats`).

``Private(Wanda())`` gathers Wanda's statistic from bounded contributions (each window's normalized to norm 1,
or, with ``unit="client"``, the client's whole statistic) and releases it once per layer visit with Gaussian
noise, spending the client's budget; only then does the inner method see it. Nothing else reads the raw
statistic: :meth:`Replay.statistics <secprune.replay.Replay.statistics>` hands each distinct statistic of a
layer to :meth:`release` before any mask is computed.
"""

from __future__ import annotations

import torch

from secprune.dp_stats import ACCOUNTANT, UNITS, Budget, gaussian_noise, normalize_units, os_generator, psd_project
from secprune.methods.base import LocalResult, Method


class Private(Method):
    bounds_windows = True  # Replay refuses inputs it cannot split by window (fused MoE experts)

    def __init__(self, inner: Method, *, epsilon: float, delta: float, unit: str = "window", visits: int = 1,
                 generator: torch.Generator | None = None, total: float = 0.0) -> None:
        if unit not in UNITS:
            raise ValueError(f"--dp-unit: expected one of {', '.join(UNITS)}, got {unit!r}")
        self.inner, self.unit = inner, unit
        self.name, self.needs_data = inner.name, inner.needs_data
        self.update = getattr(inner, "update", None)
        self.budget = Budget(epsilon=epsilon, delta=delta, visits=visits, total=total)
        self.generator = generator or os_generator()
        self.sensitivity = 1.0 if unit == "window" else 2.0  # add/remove one window; any two client datasets
        self.multipliers: list[float] = []
        self.clients: dict[int, Private] = {}  # per-client budgets of a simulated run (for_client)

    def plan(self, *, visits: int) -> None:
        """A new run: each client visits at most ``visits`` layers and gets a fresh budget (and generator)."""
        self.budget = Budget(epsilon=self.budget.epsilon, delta=self.budget.delta, visits=visits,
                             total=self.budget.total)
        self.multipliers, self.clients = [], {}

    def for_client(self, client: int) -> Private:
        if client not in self.clients:
            self.clients[client] = Private(self.inner, epsilon=self.budget.epsilon, delta=self.budget.delta,
                                           unit=self.unit, visits=self.budget.visits, total=self.budget.total)
        return self.clients[client]

    def new_stats(self, *, n_clients: int, in_features: int, device: torch.device) -> torch.Tensor | None:
        return self.inner.new_stats(n_clients=n_clients, in_features=in_features, device=device)

    def accumulate(self, stats: torch.Tensor, x: torch.Tensor, owner: torch.Tensor) -> None:
        contrib = self.inner.contributions(x)
        if self.unit == "window":
            contrib = normalize_units(contrib)
        stats.index_add_(0, owner.to(stats.device), contrib.to(stats.dtype))

    def release(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        live = {n: s for n, s in stats.items() if s is not None}
        if not live:
            return stats
        sigma = self.budget.multiplier(distinct=len(live))
        for _ in live:  # all or nothing: a refused visit releases none of its statistics
            self.budget.spend(sigma)
        self.multipliers.append(sigma)
        out = dict(stats)
        for n, s in live.items():
            if self.unit == "client":
                s = normalize_units(s)
            symmetric = self.inner.hessian  # (owners, in, in): symmetric noise, then back to the PSD cone
            noisy = s + gaussian_noise(tuple(s.shape), std=self.sensitivity * sigma, symmetric=symmetric,
                                       generator=self.generator, dtype=s.dtype, device=s.device)
            # post-processing: a norm below one noise standard deviation is indistinguishable from 0; raised to it,
            # a feature the noise hides is compared by |W| alone instead of pruned as a whole input column (with a
            # floor of 0, half the features were: SmolLM2 at epsilon 8 reached perplexity 2.9e5)
            out[n] = psd_project(noisy) if symmetric else noisy.clamp_min_(self.sensitivity * sigma)
        return out

    def prune(self, weight: torch.Tensor, stats: torch.Tensor | None, *, sparsity: float, group: str,
              prio: torch.Tensor) -> LocalResult:
        return self.inner.prune(weight, stats, sparsity=sparsity, group=group, prio=prio)

    def pruned_per_group(self, *, shape: tuple[int, ...], group: str, sparsity: float) -> int:
        return self.inner.pruned_per_group(shape=shape, group=group, sparsity=sparsity)

    def fingerprint(self) -> dict:
        b = self.budget
        return {"dp": {"epsilon": b.epsilon, "delta": b.delta, "unit": self.unit}}

    def state(self) -> dict:
        own = {"budget": self.budget.state(), "multipliers": list(self.multipliers)}
        return own | {"clients": {str(i): c.state() for i, c in self.clients.items()}}

    def load_state(self, state: dict) -> None:
        if not state:
            return
        self.budget.load(state["budget"])
        self.multipliers = list(state["multipliers"])
        for i, st in state.get("clients", {}).items():
            self.for_client(int(i)).load_state(st)

    def _statement(self) -> dict:
        """What is guaranteed, as configured (both :meth:`planned` and :meth:`guarantee` start from it)."""
        b = self.budget
        window = self.unit == "window"
        return {"mechanism": "gaussian noise on the calibration statistics (at the client, before any mask)",
                "unit": self.unit,
                "adjacency": "add or remove one window" if window else "any two datasets of one client",
                "epsilon": b.epsilon, "delta": b.delta, "accountant": ACCOUNTANT,
                "clip": "each window's contribution normalized to L2 norm 1" if window
                else "the client's statistic normalized to L2 norm 1",
                "sensitivity": self.sensitivity, "data_free": not self.needs_data}

    def planned(self) -> dict:
        """The guarantee as configured, for a party that releases nothing itself (the Flower server)."""
        return self._statement() | {"enforced_by": "each ClientApp: it adds its own noise and keeps its own budget "
                                                   "in its state folder; the server never sees a raw statistic"}

    def guarantee(self) -> dict:
        """What ``summary.json`` states: the guarantee per client and unit, and the most any client spent."""
        parties = list(self.clients.values()) or [self]
        most = max(parties, key=lambda p: p.budget.spent)
        return self._statement() | {
            "per": "client (each client's own data; parallel composition across clients)",
            "epsilon_spent_max": round(most.budget.epsilon_spent(), 6),
            "epsilon_spent_max_pld": round(most.budget.pld_epsilon_spent(), 6),
            "noise_multipliers": sorted({round(m, 6) for p in parties for m in p.multipliers}),
            "releases_max": max(p.budget.releases for p in parties), "visits_planned": self.budget.visits}

def private_from_config(method: Method, cfg) -> Method:
    """``method`` as a validated :class:`~secprune.config.PruneConfig` asks: private with ``--dp statistics``."""
    if cfg.dp == "none":
        return method
    return Private(method, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, unit=cfg.dp_unit)
