"""Layer-by-layer federated pruning (FedPrLLM, Guo et al. 2025, Sec. 3 and Fig. 1).

All ``m`` clients are simulated over one copy of the model. Per decoder layer:

1. one batched *dense* forward of every client's windows collects each client's statistics
   (the dense layer is the same for all clients, so this costs what a centralized pass costs);
2. each client chooses its local mask from its own statistics (step 1);
3. the next layer's inputs come from the *pruned* layer: one-shot -> each client's own mask
   (clients never hear from the server until the end); iterative -> the server aggregates this layer
   (steps 2-4, 6), broadcasts the global mask (step 7) and everyone continues from the global layer.

The dense weights are restored after every layer; the caller applies the final masks for evaluation.
A centralized run is the special case of one client holding every window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from secprune.aggregate import final_mask, pruned_weight, scale_factor
from secprune.capture import first_layer_inputs, layer_kwargs, run_layer
from secprune.checkpoint import StepCheckpoint, fingerprint, model_id
from secprune.masks import MaskSet
from secprune.methods import Method
from secprune.model import all_prunable, decoder_layers, prunable_linears
from secprune.secagg import SecureSum, make_summer
from secprune.topk import priority

STRATEGIES = ("one-shot", "iterative")


@dataclass
class LocalSpec:
    method: Method
    sparsity: float
    local_group: str = "row"
    seed: int = 0
    batch_size: int = 8


@dataclass
class FedResult:
    client_masks: MaskSet  # every client's local mask per matrix ("layers.3.mlp.up_proj")
    counts: dict[str, torch.Tensor]  # aggregated vote counts M_hat per matrix (as the server learnt them)
    final: dict[str, torch.Tensor]  # the server's final mask per matrix (True = pruned)
    n_clients: int
    strategy: str
    server_group: str
    scaling: bool
    secagg: dict = field(default_factory=dict)


def server_masks(counts: dict[str, torch.Tensor], *, sparsity: float, group: str, seed: int
                 ) -> dict[str, torch.Tensor]:
    return {name: final_mask(c, sparsity=sparsity, group=group, seed=seed, name=name)
            for name, c in counts.items()}


def _forward(layer, inps: torch.Tensor, idx: np.ndarray, kw: dict, batch_size: int, out: torch.Tensor) -> None:
    for s in range(0, len(idx), batch_size):
        chunk = torch.as_tensor(idx[s:s + batch_size])
        out[chunk] = run_layer(layer, inps[chunk], kw)


def _secure_counts(summer: SecureSum, masks: MaskSet, names: list[str], key: str) -> dict[str, torch.Tensor]:
    """The vote counts of ``names`` in one secure-aggregation session (one key agreement for all of them);
    each client reads its own masks one matrix at a time."""
    lengths = {name: int(np.prod(masks.shapes[name])) for name in names}
    sums = summer.sum_many(key, lengths, lambda i, name: masks.flat(i, name))
    return {name: torch.from_numpy(sums[name].astype(np.int64)).view(masks.shapes[name]) for name in names}


@torch.no_grad()
def federated_prune(model, windows: torch.Tensor, parts: list[np.ndarray], *, spec: LocalSpec,
                    strategy: str = "one-shot", server_group: str = "layer", scaling: bool = False,
                    summer: SecureSum | None = None, checkpoint: Path | None = None,
                    desc: str = "prune", progress: bool = True) -> FedResult:
    """Run FedPrLLM over ``windows`` (n, seqlen) split into client index sets ``parts``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {STRATEGIES}, got {strategy!r}")
    m = len(parts)
    summer = summer or make_summer("none", n_clients=m)
    device = next(model.parameters()).device
    owner = torch.empty(windows.shape[0], dtype=torch.long)
    for i, idx in enumerate(parts):
        owner[torch.as_tensor(idx)] = i
    used = np.sort(np.concatenate(parts))
    if len(used) != windows.shape[0] or np.any(np.diff(used) == 0):
        raise ValueError("client partitions must cover every window exactly once")

    layers = decoder_layers(model)
    ckpt = StepCheckpoint(checkpoint, fingerprint(windows, parts, algorithm="fedprllm", model=model_id(model),
                                                  method=spec.method.name, sparsity=spec.sparsity,
                                                  local_group=spec.local_group, seed=spec.seed, strategy=strategy,
                                                  server_group=server_group, scaling=scaling))
    client_masks = MaskSet(m)
    counts: dict[str, torch.Tensor] = {}
    final: dict[str, torch.Tensor] = {}
    resumed = ckpt.load()
    if resumed is not None:
        start, inps = resumed.step, resumed.inps.to(device)
        for st in resumed.steps:
            client_masks.packed.update(st["packed"])
            client_masks.shapes.update(st["shapes"])
            counts.update(st["counts"])
            final.update(st["final"])
        if "secagg" in resumed.extra:  # iterative: the sums already run were sent; keep counting their bytes
            summer.restore_accounting(resumed.extra["secagg"])
    else:
        start = 0
        inps = first_layer_inputs(model, windows, batch_size=spec.batch_size)
    kwargs = layer_kwargs(model, windows[:1])
    all_idx = np.arange(windows.shape[0])

    bar = tqdm(range(start, len(layers)), desc=desc, disable=not progress, initial=start, total=len(layers))
    for li in bar:
        layer, kw = layers[li], kwargs[li]
        lins = prunable_linears(layer)
        dense = {n: lin.weight.detach().clone() for n, lin in lins.items()}

        # 1. statistics from the dense layer, all clients in one batched pass
        stats: dict[str, torch.Tensor | None] = {}
        if spec.method.needs_data:
            current = {"owner": None}
            handles = []
            for n, lin in lins.items():
                stats[n] = spec.method.new_stats(n_clients=m, in_features=lin.in_features, device=device)

                def hook(_mod, inp, _out, acc=stats[n], cur=current):
                    spec.method.accumulate(acc, inp[0].detach(), cur["owner"])
                handles.append(lin.register_forward_hook(hook))
            try:
                for s in range(0, windows.shape[0], spec.batch_size):
                    chunk = torch.arange(s, min(s + spec.batch_size, windows.shape[0]))
                    current["owner"] = owner[chunk]
                    run_layer(layer, inps[chunk], kw)
            finally:
                for h in handles:
                    h.remove()

        # 2. local masks (client side)
        local_weights: dict[tuple[int, str], torch.Tensor] = {}
        for n in lins:
            prio = priority(shape=tuple(dense[n].shape), group=spec.local_group, seed=spec.seed,
                            tag=f"local:{li}.{n}")
            for i in range(m):
                st = stats[n][i] if stats.get(n) is not None else None
                res = spec.method.prune(dense[n], st, sparsity=spec.sparsity, group=spec.local_group, prio=prio)
                client_masks.put(f"layers.{li}.{n}", i, res.mask)
                if res.weight is not None:
                    local_weights[(i, n)] = res.weight.to(dense[n].dtype)

        # 3. inputs of the next layer
        outs = torch.empty_like(inps)
        if strategy == "iterative":
            counts.update(_secure_counts(summer, client_masks, [f"layers.{li}.{n}" for n in lins], f"layers.{li}"))
            for n, lin in lins.items():
                full = f"layers.{li}.{n}"
                final[full] = final_mask(counts[full], sparsity=spec.sparsity, group=server_group,
                                         seed=spec.seed, name=full)
                scale = scale_factor(counts[full], m) if scaling else None
                lin.weight.data = pruned_weight(dense[n], final[full], scale)
            _forward(layer, inps, all_idx, kw, spec.batch_size, outs)
        else:
            same = all(np.array_equal(client_masks.packed[f"layers.{li}.{n}"][i],
                                      client_masks.packed[f"layers.{li}.{n}"][0])
                       for n in lins for i in range(1, m)) and not local_weights
            groups = [(0, all_idx)] if same else list(enumerate(parts))
            for i, idx in groups:
                for n, lin in lins.items():
                    w = local_weights.get((i, n))
                    lin.weight.data = w if w is not None else pruned_weight(
                        dense[n], client_masks.get(i, f"layers.{li}.{n}").to(device))
                _forward(layer, inps, idx, kw, spec.batch_size, outs)
        for n, lin in lins.items():
            lin.weight.data = dense[n]
        inps = outs
        names = [f"layers.{li}.{n}" for n in lins]
        ckpt.save(li, inps, {"packed": {n: client_masks.packed[n] for n in names},
                             "shapes": {n: client_masks.shapes[n] for n in names},
                             "counts": {n: counts[n] for n in names if n in counts},
                             "final": {n: final[n] for n in names if n in final}},
                  extra=lambda: {"secagg": summer.accounting()})

    if strategy == "one-shot":  # steps 2-4 happen once, after every layer's local mask exists
        counts.update(_secure_counts(summer, client_masks, client_masks.names(), "model"))
        final = server_masks(counts, sparsity=spec.sparsity, group=server_group, seed=spec.seed)
    return FedResult(client_masks, counts, final, m, strategy, server_group, scaling, summer.stats())


def apply_masks(model, masks: dict[str, torch.Tensor], *, scales: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """Prune the model in place; returns the dense weights so that ``restore`` can undo it."""
    lins = all_prunable(model)
    backup = {}
    for name, mask in masks.items():
        lin = lins[name]
        backup[name] = lin.weight.data
        lin.weight.data = pruned_weight(lin.weight.data, mask, None if scales is None else scales[name])
    return backup


def restore(model, backup: dict[str, torch.Tensor]) -> None:
    lins = all_prunable(model)
    for name, w in backup.items():
        lins[name].weight.data = w
