"""Server-side math of FedSpaLLM (Bai et al., NAACL 2025, Sec. 4.2): l0-norm aggregation and mask expansion.

Conventions: secprune masks are ``True`` where a weight is *pruned*; the paper's ``M_i`` is 1 where a weight
is *kept*, so ``M_i = ~pruned_i`` below. Every function works on one prunable matrix of one decoder layer,
over the ``N`` clients that pruned that layer in the current round (``N = |S_j|`` under layer sampling).

* Eq. 5, l0-norm aggregation: ``W_g = sum_i M_i * W_i / ||sum_i M_i||_l0``. The denominator is read entry by
  entry, as the paper's text states ("we compute the average only over the non-zero elements"): each weight
  is averaged over the clients that kept it, and is 0 where every client pruned it.
* Eq. 6: ``C_j = sum_i I(M_i^(j) = 0)``, the number of clients that pruned weight ``j``.
* Eq. 7: ``k = ceil(s * d) - sum_j I(C_j = N)`` more weights are pruned, chosen among those not pruned by
  every client in decreasing order of ``C_j`` (most agreement first). Ties in ``C_j`` are broken by the
  smaller aggregated magnitude ``|W_g|`` and then by a seeded random priority (the paper leaves ties open;
  :func:`tie_decided` counts the picks the tie-break decides).

Secure aggregation of the two sums of Eq. 5 (see :func:`secure_l0_sums`): the clients submit fixed-point
integers ``q_i = round(clip(M_i * W_i, -b, b) * 2^B / b) + 2^B`` in ``[0, 2^(B+1)]`` (``B`` = fractional
bits, ``b`` = a public bound) and their 0/1 kept masks; the server recovers
``sum_i M_i W_i = (sum_i q_i - N 2^B) * b / 2^B``. Pruned entries contribute exactly 0, so each average has
an absolute error of at most ``b / 2^(B+1)`` (half a quantization step) for entries not clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from secprune.experts import over_experts
from secprune.secagg import SecureSum
from secprune.topk import ordered_key, priority

#: public clipping bound of the fixed-point encoding, as a multiple of max |W| of the layer the server sent
DEFAULT_CLIP_FACTOR = 2.0


def target_pruned(*, sparsity: float, numel: int) -> int:
    """``ceil(s * d)`` of Eq. 7, computed exactly (``0.7 * 100`` is 70, not 71)."""
    return math.ceil(Fraction(repr(float(sparsity))) * numel)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(tensors) == 0:
        raise ValueError("need at least one client")
    return torch.stack([t.detach().to("cpu") for t in tensors])


def l0_average(*, weighted_sum: torch.Tensor, kept_count: torch.Tensor) -> torch.Tensor:
    """Eq. 5 from its two sums: ``sum_i M_i W_i / sum_i M_i`` per entry, 0 where no client kept it."""
    count = kept_count.to(weighted_sum.dtype)
    return torch.where(kept_count > 0, weighted_sum / count.clamp(min=1), torch.zeros_like(weighted_sum))


def l0_aggregate(*, weights: Sequence[torch.Tensor], pruned: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 in floating point. Returns ``(W_g, kept_count)`` with ``kept_count = sum_i M_i``.

    ``weights[i]`` is client i's pruned (OBS-updated) matrix, ``pruned[i]`` its mask (True = pruned).
    The sums run in float64, so the result does not depend on the order of the clients.
    """
    weighted_sum, kept_count = l0_sums(weights=weights, pruned=pruned)
    dtype = weights[0].dtype if weights[0].is_floating_point() else torch.float32
    return l0_average(weighted_sum=weighted_sum, kept_count=kept_count).to(dtype), kept_count


def l0_sums(*, weights: Sequence[torch.Tensor], pruned: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sums of Eq. 5 in float64 (what secure aggregation computes in fixed point):
    ``(sum_i M_i W_i, sum_i M_i)``."""
    W = _stack(weights).to(torch.float64)
    kept = ~_stack(pruned).to(torch.bool)
    if W.shape != kept.shape:
        raise ValueError(f"weights {tuple(W.shape)} and masks {tuple(kept.shape)} differ in shape")
    return torch.where(kept, W, torch.zeros_like(W)).sum(0), kept.sum(0)


def prune_counts(*, pruned: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 6: ``C_j``, how many clients pruned entry j (int64, shape of one mask)."""
    return _stack(pruned).to(torch.bool).sum(0)


def expansion_k(*, counts: torch.Tensor, n_clients: int, sparsity: float) -> int:
    """Eq. 7: ``k = ceil(s * d) - #{j : C_j = N}`` (negative when the clients already agree on more); summed
    over the experts of an expert stack (experts, out, in), each expert being its own matrix."""
    if counts.dim() == 3:
        return over_experts(lambda e, c: expansion_k(counts=c, n_clients=n_clients, sparsity=sparsity), counts,
                            combine=sum)
    return target_pruned(sparsity=sparsity, numel=counts.numel()) - int((counts == n_clients).sum())


def expand_mask(*, counts: torch.Tensor, n_clients: int, sparsity: float, magnitude: torch.Tensor | None = None,
                seed: int = 0, name: str = "") -> torch.Tensor:
    """Eqs. 6-7, adaptive mask expansion. Returns the global mask (True = pruned).

    The entries every client pruned (``C_j = N``) stay pruned; then the ``k`` of Eq. 7 entries with the
    largest ``C_j`` among the others are pruned too (ties: smaller ``|W_g|``, then a seeded priority from
    ``(seed, name)``), so exactly ``ceil(s * d)`` entries are pruned whenever ``k >= 0``. If ``k < 0`` (the
    clients pruned beyond the target everywhere they agree) nothing is added and the intersection is kept.
    An expert stack (experts, out, in) is expanded expert by expert.
    """
    if counts.dim() == 3:
        return over_experts(lambda e, c: expand_mask(counts=c, n_clients=n_clients, sparsity=sparsity, seed=seed,
                                                     magnitude=None if magnitude is None else magnitude[e],
                                                     name=f"{name}[{e}]"), counts)
    counts = counts.to("cpu", torch.int64)
    all_pruned = counts == n_clients
    k = expansion_k(counts=counts, n_clients=n_clients, sparsity=sparsity)
    if k <= 0:
        return all_pruned
    d = counts.numel()
    prio = priority(shape=(1, d), group="layer", seed=seed, tag=f"expand:{name}")
    mag = torch.zeros(counts.shape, dtype=torch.float32) if magnitude is None else magnitude.detach().to(
        "cpu", torch.float32).abs()
    # rank of (|W_g|, prio): unique integers 0..d-1, ascending magnitude
    minor = torch.empty(d, dtype=torch.int64)
    minor[torch.argsort(ordered_key(mag.reshape(1, -1), prio).reshape(-1))] = torch.arange(d)
    key = (n_clients - counts.reshape(-1)) * d + minor  # smaller = more agreement to prune, unique
    key = torch.where(all_pruned.reshape(-1), torch.full_like(key, -1), key)
    candidates = key[~all_pruned.reshape(-1)]
    thresh = candidates.kthvalue(min(k, candidates.numel())).values
    chosen = (key >= 0) & (key <= thresh)
    return all_pruned | chosen.reshape(counts.shape)


def tie_decided(*, counts: torch.Tensor, n_clients: int, mask: torch.Tensor) -> int:
    """How many of Eq. 7's expansion picks the tie-break decided: the picks at the lowest prune count ``C_j``
    the expansion reached, when it took only part of the entries with that count (the others of that
    level lost on ``|W_g|``, then the seeded priority). Summed over the experts of an expert stack."""
    if counts.dim() == 3:
        return over_experts(lambda e, c, m: tie_decided(counts=c, n_clients=n_clients, mask=m), counts, mask,
                            combine=sum)
    counts, mask = counts.to("cpu", torch.int64), mask.to("cpu", torch.bool)
    picked = mask & (counts < n_clients)
    if not bool(picked.any()):
        return 0
    level = int(counts[picked].min())
    at_level = counts == level
    taken = int((picked & at_level).sum())
    return taken if taken < int(at_level.sum()) else 0


@dataclass
class FixedPoint:
    """Fixed-point code of one matrix for the secure sum: ``q = round(clip(x, -bound, bound) * scale) + offset``.

    ``scale = 2^bits / bound`` and ``offset = 2^bits``, so ``q`` lies in ``[0, max_value]`` with
    ``max_value = 2^(bits+1)``; the quantization error of one entry is at most ``1 / (2 scale)``.
    """

    bits: int
    bound: float

    @property
    def scale(self) -> float:
        return float(2 ** self.bits) / self.bound

    @property
    def offset(self) -> int:
        return 2 ** self.bits

    @property
    def max_value(self) -> int:
        return 2 ** (self.bits + 1)

    @property
    def max_error(self) -> float:
        """Bound on the absolute error of an l0 average (half a quantization step)."""
        return 0.5 / self.scale

    def encode(self, x: torch.Tensor) -> tuple[np.ndarray, int]:
        """Flat int64 codes of ``x`` and how many entries were clipped to ``[-bound, bound]``."""
        v = x.detach().to("cpu", torch.float64).reshape(-1)
        clipped = int((v.abs() > self.bound).sum())
        q = torch.round(v.clamp(-self.bound, self.bound) * self.scale).to(torch.int64) + self.offset
        return q.clamp(0, self.max_value).numpy(), clipped

    def decode_sum(self, total: np.ndarray, n_clients: int) -> torch.Tensor:
        """``sum_i x_i`` from ``sum_i q_i`` of ``n_clients`` codes."""
        return torch.from_numpy((total.astype(np.int64) - n_clients * self.offset).astype(np.float64) / self.scale)


def secure_l0_sums(*, weights: Sequence[torch.Tensor], pruned: Sequence[torch.Tensor], code: FixedPoint,
                   weight_summer: SecureSum, mask_summer: SecureSum, key: str
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The two sums of Eq. 5 through secure summation: ``(sum_i M_i W_i, sum_i M_i, clipped entries)``.

    Each client submits ``code.encode(M_i * W_i)`` to ``weight_summer`` (built with ``max_value =
    code.max_value``) and its 0/1 kept mask ``M_i`` to ``mask_summer`` (``max_value = 1``); the server only
    learns the two element-wise sums. ``C_j`` of Eq. 6 is then ``N - sum_i M_i``.
    """
    n = len(weights)
    shape = weights[0].shape
    codes, clipped = [], 0
    kept_vectors = []
    for w, p in zip(weights, pruned, strict=True):
        kept = ~p.detach().to("cpu", torch.bool)
        x = torch.where(kept, w.detach().to("cpu", torch.float64), torch.zeros((), dtype=torch.float64))
        q, c = code.encode(x)
        codes.append(q)
        clipped += c
        kept_vectors.append(kept.reshape(-1).numpy().astype(np.uint8))
    kept_count = torch.from_numpy(mask_summer.sum(f"{key}.mask", kept_vectors).astype(np.int64)).view(shape)
    weighted_sum = code.decode_sum(weight_summer.sum(f"{key}.weight", codes), n).view(shape)
    return weighted_sum, kept_count, clipped


@dataclass
class LayerAggregate:
    """What the server computes for one matrix in one round."""

    weight: torch.Tensor  # new global matrix, 0 at pruned entries
    mask: torch.Tensor  # global mask, True = pruned
    counts: torch.Tensor  # C_j of Eq. 6
    k: int  # Eq. 7 (before clamping at 0)
    intersection_sparsity: float  # fraction with C_j = N (the sparsity without expansion)
    max_abs_error: float = 0.0  # secure fixed-point path: max |W_g(secure) - W_g(float)| over entries
    clipped: int = 0
    average: torch.Tensor | None = None  # W_g of Eq. 5 before the pruned entries are zeroed


def server_matrix(*, weighted_sum: torch.Tensor, kept_count: torch.Tensor, n_clients: int, sparsity: float,
                  dtype: torch.dtype, expansion: bool = True, seed: int = 0, name: str = "",
                  magnitude_ties: bool = True) -> LayerAggregate:
    """Algorithm 1 lines 15-18 for one matrix from the two sums of Eq. 5 (float or decoded fixed point): the l0
    average W_g (in ``dtype``, the layer's), C_j = N - sum_i M_i (Eq. 6), the expansion of Eq. 7 (ties by
    |W_g| when ``magnitude_ties``), and W_g zeroed where pruned.  The server step of a run and every test call
    this one function."""
    wg = l0_average(weighted_sum=weighted_sum, kept_count=kept_count).to(dtype)
    counts = n_clients - kept_count.to(torch.int64)
    inter = counts == n_clients
    mask = expand_mask(counts=counts, n_clients=n_clients, sparsity=sparsity, seed=seed, name=name,
                       magnitude=wg if magnitude_ties else None) if expansion else inter
    return LayerAggregate(weight=wg.masked_fill(mask.to(wg.device), 0.0), mask=mask, counts=counts,
                          k=expansion_k(counts=counts, n_clients=n_clients, sparsity=sparsity),
                          intersection_sparsity=float(inter.float().mean()), average=wg)


def aggregate_matrix(*, weights: Sequence[torch.Tensor], pruned: Sequence[torch.Tensor], sparsity: float,
                     expansion: bool = True, seed: int = 0, name: str = "", code: FixedPoint | None = None,
                     weight_summer: SecureSum | None = None, mask_summer: SecureSum | None = None
                     ) -> LayerAggregate:
    """Algorithm 1 lines 15-18 for one matrix: Eq. 5, then (optionally) Eqs. 6-7, then zero the pruned entries.

    With ``code`` and both summers the sums of Eq. 5 go through secure summation as fixed-point integers;
    the float aggregation is computed beside it only to report ``max_abs_error``.
    """
    float_wg, float_count = l0_aggregate(weights=weights, pruned=pruned)
    wsum, kept_count = l0_sums(weights=weights, pruned=pruned)
    clipped = 0
    if code is not None:
        if weight_summer is None or mask_summer is None:
            raise ValueError("secure aggregation needs both a weight summer and a mask summer")
        wsum, kept_count, clipped = secure_l0_sums(weights=weights, pruned=pruned, code=code,
                                                   weight_summer=weight_summer, mask_summer=mask_summer, key=name)
        if not torch.equal(kept_count, float_count):
            raise RuntimeError(f"{name}: secure mask count differs from the plaintext count")
    agg = server_matrix(weighted_sum=wsum, kept_count=kept_count, n_clients=len(weights), sparsity=sparsity,
                        dtype=float_wg.dtype, expansion=expansion, seed=seed, name=name)
    agg.clipped = clipped
    if code is not None and agg.average.numel():
        agg.max_abs_error = float((agg.average.double() - float_wg.double()).abs().max())
    return agg
