"""FedSpaLLM rounds over a simulated federation (Bai et al., NAACL 2025, Algorithm 1).

The algorithm itself is :class:`secprune.fedspallm.strategy.FedSpaLLM` (client step and server step);
this module runs it in-process with :func:`secprune.simulation.simulate` and keeps the public entry
point, its spec and its result type.

All ``N`` clients are simulated over one copy of the model, decoder layer by decoder layer, as in
:mod:`secprune.fedprllm.driver`. One round ``t``:

1. the server samples ``L_i`` for every client (Eq. 8, :mod:`secprune.fedspallm.sampling`) and sends those
   layers of the current global model ``W_g`` (round 1: the dense model);
2. client ``i`` runs its calibration windows through its *local* model, Eq. 9: its own pruned version of the
   layers in ``L_i`` and the cached pre-trained dense weights elsewhere. For a layer ``j in L_i`` it
   collects SparseGPT's Hessian from the layer as received (one batched forward of the windows of all
   clients that sampled ``j``, each window credited to its owner), prunes every linear of the layer with
   SparseGPT including the OBS weight update, and sends the pruned weights and masks (line 13);
3. the server aggregates every matrix of layer ``j`` over the clients that sampled it: l0-norm aggregation
   (Eq. 5), then adaptive mask expansion (Eqs. 6-7) unless switched off; the result is the new global
   layer (lines 15-18). Clients never depend on the server inside a round, so the server can aggregate a
   layer as soon as its clients are done with it.

Later rounds start from the aggregated global layers (already at the target sparsity); SparseGPT then
re-selects a mask (mostly the zeros it received) and re-fits the kept weights on each client's data.

Without layer sampling, round 1 of client ``i`` is exactly client ``i`` pruning its model alone with
SparseGPT ("standalone" in the paper's Tables 1-3); the driver can keep those models for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from secprune.errors import UsageError
from secprune.fedspallm.aggregate import DEFAULT_CLIP_FACTOR
from secprune.fedspallm.sampling import schedule as make_schedule
from secprune.fedspallm.strategy import FedSpaLLM
from secprune.methods import Method, SparseGPT
from secprune.methods.private import private_from_config
from secprune.model import decoder_layers, prunable_linears
from secprune.secagg import SecureSum, make_summer
from secprune.simulation import PlainSums, simulate
from secprune.strategy import Kind


@dataclass
class FedSpaSpec:
    sparsity: float
    rounds: int = 1
    expansion: bool = True
    layer_sampling: bool = False
    resources: list[float] = field(default_factory=list)  # fractions of the layers per round (Eq. 8)
    local_group: str = "layer"  # SparseGPT's comparison group inside each 128-column block (layer = original)
    seed: int = 0
    batch_size: int = 8
    method: Method | None = None  # default: SparseGPT with the OBS weight update
    fixed_point_bits: int = 16  # B: fixed-point scale 2^B / bound for the secure sums of Eq. 5
    clip_factor: float = DEFAULT_CLIP_FACTOR  # bound = clip_factor * max|W| of the layer the server sent
    value_bytes: int = 4  # bytes per transmitted weight value (communication accounting)
    magnitude_ties: bool = True  # Eq. 7 ties by smaller |W_g| first; False: seeded random tie-break only

    def local_method(self) -> Method:
        return self.method if self.method is not None else SparseGPT(update=True)


@dataclass
class FedSpaResult:
    weights: dict[str, torch.Tensor]  # final global matrices ("layers.3.mlp.up_proj"), 0 where pruned
    masks: dict[str, torch.Tensor]  # final global masks, True = pruned
    counts: dict[str, torch.Tensor]  # C_j of Eq. 6 in the last round that aggregated the matrix
    participants: dict[str, int]  # N of that aggregation (clients that sampled the layer)
    schedule: list[list[list[int]]]  # schedule[t][i] = layers of client i in round t
    standalone: dict[int, dict[str, torch.Tensor]]  # round-1 local models of the kept clients
    communication: dict
    secagg: dict
    rounds: list[dict]  # per-round sparsity before / after expansion, Eq. 7's k and tie-decided picks,
    # fixed-point error before and after masking


class _Summers:
    """Secure summers per (number of participants, kind): a layer's sum runs over the clients that sampled it."""

    def __init__(self, backend: str, *, bits: int, seed: int, options: dict) -> None:
        self.backend, self.bits, self.seed, self.options = backend, bits, seed, options
        self.cache: dict[tuple[int, str], SecureSum] = {}

    def get(self, n: int, kind: Kind) -> SecureSum:
        key = (n, kind.name)
        if key not in self.cache:
            self.cache[key] = make_summer(self.backend, n_clients=n, max_value=kind.max_value,
                                          seed=self.seed + (0 if kind.name == "mask" else 1), **self.options)
        return self.cache[key]

    def accounting(self) -> dict[tuple[int, str], dict]:
        return {key: s.accounting() for key, s in self.cache.items()}

    def restore_accounting(self, state: dict[tuple[int, str], dict]) -> None:
        for (n, kind), st in state.items():  # a resumed run goes on counting the bytes sent before the crash
            self.get(n, Kind(kind, 1 if kind == "mask" else 2 ** (self.bits + 1))).restore_accounting(st)

    def stats(self) -> dict:
        out = []
        for (n, kind), s in sorted(self.cache.items()):
            st = {k: v for k, v in s.stats().items() if k != "per_round"}
            out.append({"participants": n, "kind": kind, **st})
        return {"backend": self.backend, "fixed_point_bits": self.bits, "summers": out,
                "total_bytes": int(sum(s["total_bytes"] for s in out))}


def check_subfederations(backend: str, plan: list[list[list[int]]], *, n_layers: int, options: dict) -> None:
    """Before any work: every layer's sum, over the clients that sampled it, must be one the secure backend can
    release (enough contributors, safe parameters for their number); raises UsageError naming the layer."""
    from secprune.secagg.params import he_threshold, pairwise_parameters

    rule = options["threat"]
    seen: set[int] = set()
    for t, clients in enumerate(plan):
        for li in range(n_layers):
            n = sum(li in layers for layers in clients)
            if n == 0 or n in seen:
                continue
            seen.add(n)
            try:
                if backend == "pairwise":
                    pairwise_parameters(n_clients=n, threat=rule, neighbours=options.get("neighbours"),
                                        threshold=options.get("threshold"))
                else:
                    he_threshold(n_clients=n, threat=rule, threshold=options.get("threshold"))
            except ValueError as exc:
                raise UsageError(f"--layer-sampling: round {t + 1}, layer {li} is pruned by {n} clients, and their "
                                 f"secure sum cannot be released: {exc}") from None


def spec_from_config(cfg) -> FedSpaSpec:
    """The FedSpaLLM run of a validated :class:`~secprune.config.PruneConfig`."""
    return FedSpaSpec(sparsity=cfg.sparsity, rounds=cfg.rounds, expansion=cfg.expansion,
                      layer_sampling=cfg.layer_sampling, resources=list(cfg.resources), local_group=cfg.local_group,
                      seed=cfg.seed, batch_size=cfg.batch_size, fixed_point_bits=cfg.fixed_point_bits,
                      method=private_from_config(SparseGPT(update=True), cfg))


def make_strategy(spec: FedSpaSpec, *, n_clients: int, secure: bool) -> FedSpaLLM:
    """The FedSpaLLM strategy of ``spec``: the in-process driver and the Flower apps build it here alike
    (``secure``: Eq. 5's sums go through a secure-sum backend as fixed-point integers)."""
    return FedSpaLLM(method=spec.local_method(), n_clients=n_clients, sparsity=spec.sparsity, rounds=spec.rounds,
                     expansion=spec.expansion, layer_sampling=spec.layer_sampling, resources=spec.resources,
                     local_group=spec.local_group, seed=spec.seed, clip_factor=spec.clip_factor,
                     fixed_point_bits=spec.fixed_point_bits if secure else None,
                     value_bytes=spec.value_bytes, magnitude_ties=spec.magnitude_ties)


def fedspallm_prune(model, windows: torch.Tensor, parts: list[np.ndarray], *, spec: FedSpaSpec,
                    secure: str | None = None, secagg_options: dict | None = None,
                    keep_clients: tuple[int, ...] | list[int] = (), desc: str = "fedspallm",
                    progress: bool = True, checkpoint: Path | None = None,
                    on_layer: Callable[[int, int], None] | None = None) -> FedSpaResult:
    """Run ``spec.rounds`` rounds of FedSpaLLM over ``windows`` (n, seqlen) split into client index sets ``parts``.

    ``secure`` names a :func:`~secprune.secagg.make_summer` backend: the sums of Eq. 5 then go through it as
    fixed-point integers (``"none"`` = the plaintext summer, same code path); ``None`` aggregates in float.
    The model's weights are left dense; the global model is returned in ``FedSpaResult.weights``.
    With ``checkpoint`` (a folder) every (round, layer) step is saved there, and a rerun with the same data
    and configuration resumes after the last saved step. ``on_layer(t, l)`` is called after each step.
    """
    n_clients = len(parts)
    layers = decoder_layers(model)
    n_layers = len(layers)
    strat = make_strategy(spec, n_clients=n_clients, secure=secure is not None)
    strat.comm.model_entries = sum(lin.weight.numel() for layer in layers for lin in prunable_linears(layer).values())
    plan = make_schedule(resources=spec.resources, n_clients=n_clients, n_layers=n_layers, rounds=spec.rounds,
                         seed=spec.seed, sampling=spec.layer_sampling)
    keep = [i for i in keep_clients if all(li in plan[0][i] for li in range(n_layers))]  # whole model in round 1
    options = dict(secagg_options or {})
    if secure not in (None, "none"):  # one threat for every sub-federation: counts of the whole federation
        from secprune.secagg.params import threat

        if "threat" not in options:
            options["threat"] = threat(n_clients, colluders=options.pop("colluders", None),
                                       dropouts=options.pop("dropout_budget", None),
                                       min_contributors=options.pop("min_contributors", None), flag_prefix="")
        check_subfederations(secure, plan, n_layers=n_layers, options=options)
    summers = _Summers(secure, bits=spec.fixed_point_bits, seed=spec.seed, options=options) \
        if secure is not None else PlainSums()
    sim = simulate(model, windows, parts, strat, summers=summers, batch_size=spec.batch_size, checkpoint=checkpoint,
                   keep=keep, desc=desc, progress=progress,
                   on_step=None if on_layer is None else (lambda task: on_layer(task.round, task.layer)),
                   fingerprint_extra={"secure": secure, "secagg": secagg_options})
    round_logs = [_round_log(t, strat.plan[t], strat.summaries[t], n_layers=n_layers, expansion=spec.expansion)
                  for t in range(spec.rounds)]
    for mask in strat.masks.values():
        strat.comm.final_download(numel=mask.numel(), kept=int((~mask).sum()))
    secagg = summers.stats() if secure is not None else {"backend": None}
    if secure is not None:
        secagg["max_abs_error"] = max(r["fixed_point_max_abs_error"] for r in round_logs)
        secagg["clipped_entries"] = sum(r["fixed_point_clipped"] for r in round_logs)
        secagg["max_abs_error_after_masking"] = max(r["fixed_point_max_abs_error_after_masking"] for r in round_logs)
        secagg["mask_flips"] = sum(r["fixed_point_mask_flips"] for r in round_logs)
        secagg["clip_factor"] = spec.clip_factor
        secagg["error_bound_note"] = "per entry <= bound / 2^(bits+1), bound = clip_factor * max|W| per matrix"
    return FedSpaResult({k: v.to("cpu") for k, v in strat.global_w.items()}, strat.masks, strat.counts,
                        strat.participants, strat.plan, {i: sim.kept.get(i, {}) for i in keep},
                        strat.comm.summary(), secagg, round_logs)


def _round_log(t: int, sched: list[list[int]], summ: list[dict], *, n_layers: int, expansion: bool) -> dict:
    """Sparsity before (clients' intersection) and after expansion, Eq. 7's k and fixed-point error of round t."""
    numel = max(sum(a["numel"] for a in summ), 1)
    return {
        "round": t,
        "layers_per_client": [len(x) for x in sched],
        "clients_per_layer": [sum(li in x for x in sched) for li in range(n_layers)],
        "sparsity_intersection": sum(a["intersection_sparsity"] * a["numel"] for a in summ) / numel,
        "sparsity": sum(a["pruned"] for a in summ) / numel,
        "expansion_k_total": int(sum(max(a["k"], 0) for a in summ)) if expansion else 0,
        "expansion_tie_decided_total": int(sum(a.get("tie_decided", 0) for a in summ)),
        "fixed_point_max_abs_error": max((a["max_abs_error"] for a in summ), default=0.0),
        "fixed_point_max_abs_error_after_masking": max((a.get("max_abs_error_masked", 0.0) for a in summ),
                                                       default=0.0),
        "fixed_point_mask_flips": int(sum(a.get("mask_flips", 0) for a in summ)),
        "fixed_point_clipped": int(sum(a["clipped"] for a in summ)),
    }
