"""The federated pruning algorithms, by name: one registry the CLI's run, the Flower nodes and the experiments
share (in the manner of Opacus' ``_ACCOUNTANTS``).  Each entry builds the algorithm's strategy from a validated
:class:`~secprune.config.PruneConfig` and runs `secprune prune` for it; the imports are lazy, so a Flower
client stage loads only the algorithm it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from secprune.errors import UsageError


@dataclass(frozen=True)
class Algorithm:
    name: str
    paper: str
    strategy: Callable  # (cfg, *, n_clients, secure) -> Strategy
    run: Callable  # (cfg, prep, tmp, partial, *, progress) -> (summary, details)


def _fedprllm_strategy(cfg, *, n_clients: int, secure: bool):
    from secprune.fedprllm.driver import make_strategy, spec_from_config

    return make_strategy(spec_from_config(cfg), n_clients=n_clients, strategy=cfg.strategy,
                         server_group=cfg.server_group, scaling=cfg.scaling)


def _fedprllm_run(cfg, prep, tmp, partial, *, progress: bool = True):
    from secprune.fedprllm.run import run_fedprllm

    return run_fedprllm(cfg, prep, tmp, partial, progress=progress)


def _fedspallm_strategy(cfg, *, n_clients: int, secure: bool):
    from secprune.fedspallm.driver import make_strategy, spec_from_config

    return make_strategy(spec_from_config(cfg), n_clients=n_clients, secure=secure)


def _fedspallm_run(cfg, prep, tmp, partial, *, progress: bool = True):
    from secprune.fedspallm.run import run_fedspallm

    return run_fedspallm(cfg, prep, tmp, partial, progress=progress)


ALGORITHMS: dict[str, Algorithm] = {
    "fedprllm": Algorithm("fedprllm", "Guo et al. 2025, FedPrLLM", _fedprllm_strategy, _fedprllm_run),
    "fedspallm": Algorithm("fedspallm", "Bai et al., NAACL 2025, FedSpaLLM", _fedspallm_strategy, _fedspallm_run),
}


def algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise UsageError(f"--algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name]
