"""Fast masks for many calibration sets: the cheap path every many-shadow audit and attack uses.

Two engines, both reusing the pruning core (``secprune.methods`` scores, ``secprune.topk`` selection
with the same seeded tie-break priorities as :func:`secprune.fedprllm.driver.federated_prune`):

* :class:`LayerZeroMasks` -- *exact* local Wanda / magnitude masks of decoder layer 0 for any subset of
  a pool of windows. Wanda's statistic is additive over windows (||X_j||^2 = sum over windows of the
  per-window sum of squares, Sun et al. 2024 Eq. 1), and layer 0's inputs do not depend on any pruning,
  so we run layer 0 once over the pool, keep one (window, in_features) table of squared norms per
  linear, and a calibration set's mask is a sum of table rows plus one top-k per row: milliseconds.
  Deeper layers see the client's own pruned earlier layers (one-shot strategy), so they are not additive;
  the shadow-set attacks therefore use layer 0 only, and every report says so.
* :func:`full_depth_masks` -- exact masks of *every* layer for a handful of calibration sets: one call of
  ``federated_prune`` in which every set is a "client" (windows are duplicated when sets overlap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from secprune.fedprllm.driver import LocalSpec, federated_prune
from secprune.methods import Wanda, wanda_score
from secprune.model import decoder_layers, prunable_linears
from secprune.replay import Replay
from secprune.topk import lowest_k_mask, tie_break


@dataclass
class MaskLayout:
    """Where each matrix lives in a flattened layer-0 mask vector."""

    names: list[str]  # full names, "layers.0.self_attn.q_proj"
    shapes: list[tuple[int, ...]]  # (out, in), or (experts, out, in) for an expert stack
    offsets: list[int]

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def slice(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])


class LayerZeroMasks:
    """Exact local masks of decoder layer 0 for arbitrary subsets of a pool of calibration windows."""

    def __init__(self, model, pool: torch.Tensor, *, method: str = "wanda", sparsity: float = 0.5,
                 local_group: str = "row", seed: int = 0, batch_size: int = 8,
                 matrices: list[str] | None = None, stable: bool = False) -> None:
        if method not in ("wanda", "magnitude"):
            raise ValueError(f"layer-0 engine supports wanda and magnitude, got {method!r}")
        self.method = method
        self.sparsity = sparsity
        self.group = local_group
        layer = decoder_layers(model)[0]
        lins = prunable_linears(layer)
        if matrices:
            lins = {n: lins[n] for n in matrices}
        self.short = list(lins)
        self.weights = {n: lin.weight.detach().float().cpu().clone() for n, lin in lins.items()}
        self.prio = {n: tie_break(shape=tuple(w.shape), group=local_group, seed=seed, tag=f"local:0.{n}",
                                  stable=stable) for n, w in self.weights.items()}
        shapes = [tuple(w.shape) for w in self.weights.values()]
        offs = [0]
        for s in shapes:
            offs.append(offs[-1] + math.prod(s))
        self.layout = MaskLayout([f"layers.0.{n}" for n in self.short], shapes, offs)  # type: ignore[arg-type]
        self.pool = pool
        self.stats: dict[str, torch.Tensor] = {}
        if method == "wanda":
            self.stats = self._per_window_stats(model, layer, lins, pool, batch_size)

    @staticmethod
    @torch.no_grad()
    def _per_window_stats(model, layer, lins, pool, batch_size) -> dict[str, torch.Tensor]:
        """Wanda's statistic of layer 0 for every window of the pool: the replay loop with one owner per window."""
        replay = Replay(model, pool, batch_size=batch_size)
        replay.start()
        stats = replay.statistics(Wanda(), groups=[np.array([w]) for w in range(pool.shape[0])])
        return {n: stats[n].cpu() for n in lins}

    def sq_norms(self, members) -> dict[str, torch.Tensor]:
        """Squared input column norms (the Wanda statistic) of a calibration set (indices into the pool)."""
        idx = torch.as_tensor(np.asarray(members, dtype=np.int64))
        return {n: s[idx].sum(0) for n, s in self.stats.items()}

    def mask_from_norms(self, sq: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {f"layers.0.{n}": _local_mask(self.method, self.weights[n], None if sq is None else sq[n],
                                             sparsity=self.sparsity, group=self.group, prio=self.prio[n])
                for n in self.short}

    def masks(self, members) -> dict[str, torch.Tensor]:
        """Per-matrix masks (True = pruned) of the calibration set ``members``."""
        return self.mask_from_norms(self.sq_norms(members) if self.method == "wanda" else None)

    def flat(self, members) -> torch.Tensor:
        """The same mask as one flat bool vector in ``self.layout`` order."""
        m = self.masks(members)
        return torch.cat([m[n].reshape(-1) for n in self.layout.names])

    def flat_many(self, sets) -> torch.Tensor:
        """(len(sets), layout.size) bool: masks of many calibration sets."""
        return torch.stack([self.flat(s) for s in sets]) if len(sets) else torch.zeros(0, self.layout.size,
                                                                                      dtype=torch.bool)


def _local_mask(method: str, weight: torch.Tensor, sq: torch.Tensor | None, *, sparsity: float, group: str,
                prio: torch.Tensor) -> torch.Tensor:
    score = weight.abs().float() if method == "magnitude" else wanda_score(weight, sq)
    return lowest_k_mask(score, sparsity=sparsity, group=group, prio=prio)


@torch.no_grad()
def full_depth_masks(model, windows: torch.Tensor, sets: list[np.ndarray], *, spec: LocalSpec,
                     progress: bool = False) -> list[dict[str, torch.Tensor]]:
    """Exact one-shot local masks of every layer for each calibration set (index arrays into ``windows``).

    One run of the FedPrLLM simulation in which every set is a client (windows shared by several sets are
    duplicated, so that each client owns its copy); the client masks are the sets' masks.
    """
    rows, parts, start = [], [], 0
    for s in sets:
        s = np.asarray(s, dtype=np.int64)
        rows.append(s)
        parts.append(np.arange(start, start + len(s)))
        start += len(s)
    stacked = windows[torch.as_tensor(np.concatenate(rows))]
    res = federated_prune(model, stacked, parts, spec=spec, progress=progress, desc="audit masks")
    return [res.client_masks.party(i) for i in range(len(sets))]


def hamming(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """Hamming distance (fraction of differing bits) per matrix, per layer and in total."""
    per_matrix, per_layer, tot = {}, {}, [0, 0]
    for n in a:
        d, size = int((a[n] != b[n]).sum()), a[n].numel()
        per_matrix[n] = d / size
        layer = ".".join(n.split(".")[:2])
        acc = per_layer.setdefault(layer, [0, 0])
        acc[0] += d
        acc[1] += size
        tot[0] += d
        tot[1] += size
    return {"total": tot[0] / max(tot[1], 1), "bits": tot[0],
            "per_layer": {k: v[0] / v[1] for k, v in per_layer.items()}, "per_matrix": per_matrix}
