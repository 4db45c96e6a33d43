"""Layer-by-layer federated pruning (FedPrLLM, Guo et al. 2025, Sec. 3 and Fig. 1), simulated in-process.

The algorithm is :class:`secprune.fedprllm.strategy.FedPrLLM` (client step: local mask; server step:
vote counts and top-k); :func:`secprune.simulation.simulate` runs every client over one copy of the
model, one batched forward per layer. A centralized run is the special case of one client holding every
window. The dense weights are restored after every layer; the caller applies the final masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from secprune.fedprllm.aggregate import final_mask
from secprune.fedprllm.strategy import STRATEGIES, FedPrLLM
from secprune.masks import MaskSet
from secprune.methods import Method
from secprune.secagg import SecureSum, make_summer
from secprune.simulation import OneSummer, simulate

__all__ = ["STRATEGIES", "FedResult", "LocalSpec", "federated_prune", "local_prune", "server_masks"]


@dataclass
class LocalSpec:
    method: Method
    sparsity: float
    local_group: str = "row"
    seed: int = 0
    batch_size: int = 8
    stable_ties: bool = False  # --numerics reference: ties to the lower index (upstream's stable sort)


def spec_from_config(cfg, *, alone: bool = False) -> LocalSpec:
    """The clients' local pruning of a validated :class:`~secprune.config.PruneConfig`. ``alone``: a party
    pruning by itself (the centralized and local-only baselines). With ``--numerics reference`` Wanda is
    upstream's, padded with zero samples up to ``nsamples`` where upstream's loop does it (one-shot clients,
    ``prune_wanda`` baselines; not its iterative clients), and ties go to the lower index."""
    from secprune.methods import make_method
    from secprune.methods.private import private_from_config

    reference = cfg.numerics == "reference"
    pad_to = cfg.nsamples if reference and (alone or cfg.strategy == "one-shot") else None
    method = private_from_config(make_method(cfg.method, sparsegpt_update=cfg.sparsegpt_update,
                                             numerics=cfg.numerics, pad_to=pad_to), cfg)
    return LocalSpec(method, cfg.sparsity, cfg.local_group, cfg.seed, cfg.batch_size, stable_ties=reference)


@dataclass
class FedResult:
    client_masks: MaskSet | None  # the recorded clients' local masks per matrix ("layers.3.mlp.up_proj")
    counts: dict[str, torch.Tensor]  # aggregated vote counts M_hat per matrix (as the server learnt them)
    final: Mapping[str, torch.Tensor]  # the server's final mask per matrix (True = pruned; bit-packed)
    n_clients: int
    strategy: str
    server_group: str
    scaling: bool
    secagg: dict = field(default_factory=dict)
    weights: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # kept clients' updated weights


def server_masks(counts: dict[str, torch.Tensor], *, sparsity: float, group: str, seed: int
                 ) -> dict[str, torch.Tensor]:
    return {name: final_mask(c, sparsity=sparsity, group=group, seed=seed, name=name)
            for name, c in counts.items()}


def make_strategy(spec: LocalSpec, *, n_clients: int, strategy: str = "one-shot", server_group: str = "layer",
                  scaling: bool = False, keep_counts: bool = True, check_counts: bool = True) -> FedPrLLM:
    """The run's FedPrLLM strategy from the clients' local pruning and the server's options: the same object
    in-process, on the Flower server and at every Flower client."""
    return FedPrLLM(method=spec.method, n_clients=n_clients, sparsity=spec.sparsity, local_group=spec.local_group,
                    server_group=server_group, strategy=strategy, scaling=scaling, seed=spec.seed,
                    stable_ties=spec.stable_ties, keep_counts=keep_counts, check_counts=check_counts)


def federated_prune(model, windows: torch.Tensor, parts: list[np.ndarray], *, spec: LocalSpec,
                    strategy: str = "one-shot", server_group: str = "layer", scaling: bool = False,
                    summer: SecureSum | None = None, checkpoint: Path | None = None,
                    keep_weights: tuple[int, ...] | list[int] = (), desc: str = "prune",
                    progress: bool = True, record_clients: int | None = None, keep_counts: bool = True
                    ) -> FedResult:
    """Run FedPrLLM over ``windows`` (n, seqlen) split into client index sets ``parts``, in-process.

    ``keep_weights`` names clients whose own pruned weights are returned in ``FedResult.weights`` (CPU):
    with SparseGPT's OBS update they differ from the masked dense weights, and a client-alone baseline
    (centralized, local-only) must be evaluated with them. ``record_clients`` keeps only the first that many
    clients' masks in ``FedResult.client_masks`` (default: all; 1 bit per weight and client). Without
    ``keep_counts`` (and without ``scaling``, which needs them) ``FedResult.counts`` is empty: the server
    drops each layer's vote counts once its final mask is chosen.
    """
    m = len(parts)
    summer = summer or make_summer("none", n_clients=m)
    strat = make_strategy(spec, n_clients=m, strategy=strategy, server_group=server_group, scaling=scaling,
                          keep_counts=keep_counts, check_counts=summer.exact)
    sim = simulate(model, windows, parts, strat, summers=OneSummer(summer), batch_size=spec.batch_size,
                   checkpoint=checkpoint, keep=keep_weights, desc=desc, progress=progress,
                   record_masks=True if record_clients is None else record_clients,
                   fingerprint_extra={"secure": summer.name})
    return FedResult(sim.client_masks, strat.counts, strat.final, m, strategy, server_group, scaling, summer.stats(),
                     sim.kept)


def local_prune(model, windows: torch.Tensor, *, spec: LocalSpec, checkpoint: Path | None = None,
                keep_weights: bool = False, desc: str = "local", progress: bool = True
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """One party pruning alone with ``windows``: plain Wanda / SparseGPT / magnitude, i.e. the party's own
    local masks (``int(s * group size)`` per comparison group), with no server top-k on top (which would
    prune extra weights whenever ``s`` times the group size is not a whole number). Returns (masks, the
    party's updated weights with ``keep_weights`` and SparseGPT's OBS update, else None). The centralized
    and local-only baselines (FedPrLLM Table 1) are this."""
    res = federated_prune(model, windows, [np.arange(len(windows))], spec=spec, checkpoint=checkpoint,
                          keep_weights=[0] if keep_weights else [], desc=desc, progress=progress)
    return res.client_masks.party(0), res.weights.get(0)
