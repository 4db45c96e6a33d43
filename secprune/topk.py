"""Exactly-k selection inside comparison groups, with seeded tie-breaking.

FedPrLLM (Sec. 2, Table 2) compares weights inside a *layer*, a *row* (one output neuron, as Wanda does)
or a *column* (one input feature). In each group the ``k = int(sparsity * group_size)`` lowest scores are
pruned. Scores tie often (the packaged SmolLM2 weights were 4-bit, and server vote counts are small
integers), so ties are broken by a seeded random priority (or, with ``--numerics reference``, by the index
as upstream's stable sort does): we fuse (score, priority) into one unique int64 key and find the k-th key
with an O(n) selection (numpy's introselect on CPU, ``kthvalue`` on GPU) where a full sort is O(n log n).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

GROUPS = ("layer", "row", "column")


def priority(*, shape: tuple[int, ...], group: str, seed: int, tag: str) -> torch.Tensor:
    """Random tie-break priorities, unique within every group, from ``(seed, tag)``.

    Returns an int64 tensor broadcastable to ``shape`` (a matrix, or a stack of expert matrices that all
    get the same priorities): a permutation of the columns for row groups, of the rows for column groups,
    of all entries for the layer group.
    """
    digest = hashlib.sha256(f"{seed}:{tag}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return _per_group(shape, group, lambda n: torch.randperm(n, generator=gen))


def index_priority(*, shape: tuple[int, ...], group: str) -> torch.Tensor:
    """The tie-break of a stable sort (``torch.sort(..., stable=True)``, as upstream Wanda and FedPrLLM
    select): ties go to the lower index inside the group (``--numerics reference``)."""
    return _per_group(shape, group, torch.arange)


def _per_group(shape: tuple[int, ...], group: str, order: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``order(n)`` laid out over the group: along the columns for row groups, the rows for column groups,
    all entries (row-major) for the layer group."""
    rows, cols = shape[-2:]
    if group == "row":
        return order(cols).view(1, cols)
    if group == "column":
        return order(rows).view(rows, 1)
    if group == "layer":
        return order(rows * cols).view(rows, cols)
    raise ValueError(f"comparison group must be one of {GROUPS}, got {group!r}")


def tie_break(*, shape: tuple[int, ...], group: str, seed: int, tag: str, stable: bool = False) -> torch.Tensor:
    """:func:`index_priority` when ``stable``, else the seeded :func:`priority`."""
    return index_priority(shape=shape, group=group) if stable else priority(shape=shape, group=group, seed=seed,
                                                                            tag=tag)


def ordered_key(score: torch.Tensor, prio: torch.Tensor) -> torch.Tensor:
    """Map float scores to int64 keys that sort like the scores, ties ordered by ``prio``."""
    s = score.to(torch.float32).contiguous()
    bits = s.view(torch.int32)
    # IEEE-754 trick: negative floats sort in reverse as signed ints; flipping their magnitude bits fixes it.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return bits * (1 << 31) + prio.to(score.device)


def _kth(values: torch.Tensor, k: int, group: str) -> torch.Tensor:
    """The k-th smallest value (1-based) of every group, shaped to broadcast against ``values``. On CPU,
    numpy's introselect (``np.partition``) finds the same order statistic 1.4-3.3x faster than
    ``torch.kthvalue``, which also tracks indices; each client selects inside every matrix, so this is most
    of the simulation's overhead over a centralized run. Elsewhere (CUDA) ``torch.kthvalue`` stays on the
    device."""
    return (_kth_numpy if values.device.type == "cpu" else _kth_torch)(values, k, group)


# entries; below this a thread hand-off costs about what it saves (2 cores, row selection at 50 %: 1.0x at
# 110 k and 330 k entries, 1.4x at 800 k and 885 k, the MLP and 896 x 896 matrices of SmolLM2 and Qwen-0.5B)
_PARALLEL_MIN = 1 << 19
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    key = (os.getpid(), n)  # a forked child inherits the pool but not its threads: it makes its own
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(n, thread_name_prefix="secprune-select")
    return _POOLS[key]


def _kth_numpy(values: torch.Tensor, k: int, group: str) -> torch.Tensor:
    a, lead = values.numpy(), values.shape[:-2]
    if group == "layer":
        flat = a.reshape(*lead, -1)
        return torch.from_numpy(np.partition(flat, k - 1, axis=-1)[..., k - 1]).reshape(*lead, 1, 1)
    axis, split = (-1, -2) if group == "row" else (-2, -1)  # select along ``axis``, groups along ``split``

    def part(chunk: np.ndarray) -> np.ndarray:
        return np.take(np.partition(chunk, k - 1, axis=axis), [k - 1], axis=axis)

    # introselect is single-threaded but releases the GIL: groups are independent, so a large matrix is
    # split across the groups over torch's threads (1.3x on 2 cores for a 4864 x 896 matrix)
    n = min(torch.get_num_threads(), a.shape[split])
    if n < 2 or a.size < _PARALLEL_MIN:
        return torch.from_numpy(part(a))
    return torch.from_numpy(np.concatenate(list(_pool(n).map(part, np.array_split(a, n, axis=split))), axis=split))


def _kth_torch(values: torch.Tensor, k: int, group: str) -> torch.Tensor:
    lead = values.shape[:-2]
    if group == "row":
        return values.kthvalue(k, dim=-1, keepdim=True).values
    if group == "column":
        return values.kthvalue(k, dim=-2, keepdim=True).values
    return values.reshape(*lead, -1).kthvalue(k, dim=-1).values.reshape(*lead, 1, 1)


def _exactly_k(mask: torch.Tensor, k: int, group: str) -> bool:
    """Whether every group holds exactly k selected entries, given that each holds at least k (the entries
    up to the k-th smallest value): then the total is k times the number of groups only if none holds more."""
    return int(torch.count_nonzero(mask)) == k * (mask.numel() // group_size(tuple(mask.shape), group))


def group_size(shape: tuple[int, ...], group: str) -> int:
    """Entries of one comparison group of a matrix (the last two dimensions of ``shape``)."""
    rows, cols = shape[-2:]
    sizes = {"row": cols, "column": rows, "layer": rows * cols}
    if group not in sizes:
        raise ValueError(f"comparison group must be one of {GROUPS}, got {group!r}")
    return sizes[group]


def lowest_k_mask(score: torch.Tensor, *, sparsity: float, group: str, prio: torch.Tensor) -> torch.Tensor:
    """Boolean mask (True = pruned) of the ``int(sparsity * group_size)`` lowest scores of every group.

    ``score`` is a matrix (out, in) or a stack of them (experts, out, in): groups never cross the leading
    dimensions, so every expert's matrix is compared on its own."""
    if score.dim() < 2:
        raise ValueError(f"score must be a matrix or a stack of matrices, got shape {tuple(score.shape)}")
    k = int(group_size(tuple(score.shape), group) * sparsity)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    # Fast path: when no group has a tie at its threshold, the plain float selection is already the
    # unique answer (priorities would not change it). Real-valued Wanda scores almost never tie.
    s = score.to(torch.float32)
    if not bool(torch.isfinite(s.sum())) and bool(torch.isnan(s).any()):  # one reduction in the usual case
        raise ValueError("scores contain NaN")
    fast = s <= _kth(s, k, group)
    if _exactly_k(fast, k, group):
        return fast
    if group == "layer":
        key = ordered_key(s, prio)
        return key <= _kth(key, k, group)  # keys are unique, so exactly k per group
    # Row (column) groups: redo only the groups with a tie at their threshold, with the unique keys; the
    # others' float selection is already their answer (on 4-bit weights a few rows tie, not the matrix).
    rows_s, rows_fast = (s, fast) if group == "row" else (s.transpose(-1, -2), fast.transpose(-1, -2))
    rows_prio = (prio if group == "row" else prio.transpose(-1, -2)).to(s.device).expand(rows_s.shape)
    tied = rows_fast.sum(-1) != k
    key = ordered_key(rows_s[tied], rows_prio[tied])
    rows_fast[tied] = key <= _kth(key, k, "row")  # writes through the view into ``fast``
    return fast


def most_votes_mask(counts: torch.Tensor, *, sparsity: float, prio: torch.Tensor) -> torch.Tensor:
    """Layer group on integer vote counts: True on the ``int(sparsity * size)`` entries with the most votes,
    ties to the lowest priority; the same mask as ``lowest_k_mask(-counts, group="layer", prio=prio)``.

    Counts are small integers (0..m), so a histogram gives the threshold level in one pass; only the entries
    at that level need their priorities compared (FedPrLLM's server step, Fig. 1 step 4, without the
    int64 keys and the full selection). A stack of matrices (experts) is one group per matrix.
    """
    if counts.is_floating_point() or counts.dim() < 2:
        raise ValueError(f"counts must be an integer matrix or stack of matrices, got {counts.dtype} "
                         f"{tuple(counts.shape)}")
    if counts.dim() > 2:
        stack = counts.reshape(-1, *counts.shape[-2:])
        return torch.stack([most_votes_mask(c, sparsity=sparsity, prio=prio) for c in stack]).view(counts.shape)
    k = int(counts.numel() * sparsity)
    if k == 0:
        return torch.zeros_like(counts, dtype=torch.bool)
    if counts.device.type != "cpu":  # the server's counts live on the host (they arrive as numpy sums)
        return most_votes_mask(counts.cpu(), sparsity=sparsity, prio=prio.cpu()).to(counts.device)
    # numpy: torch's nonzero and boolean indexing are ~10x slower on CPU
    flat_prio = prio.expand(counts.shape).reshape(-1).numpy()
    return torch.from_numpy(_most_votes_numpy(counts.reshape(-1).numpy(), k, flat_prio)).view(counts.shape)


def _most_votes_numpy(c: np.ndarray, k: int, prio: np.ndarray) -> np.ndarray:
    lo = int(c.min())
    at_least = np.cumsum(np.bincount(c - lo if lo else c)[::-1])[::-1]  # entries with >= lo + i votes
    level = int(np.flatnonzero(at_least >= k)[-1])  # the highest level whose tail holds k entries
    mask = c > level + lo  # all pruned (fewer than k of them); the rest come from the tied level
    tied = np.flatnonzero(c == level + lo)
    need = k - (int(at_least[level + 1]) if level + 1 < len(at_least) else 0)  # 1 <= need <= len(tied)
    p = prio[tied]
    mask[tied[p <= np.partition(p, need - 1)[need - 1]]] = True  # priorities are unique
    return mask


def small_integer_range(counts: torch.Tensor) -> bool:
    """Whether :func:`most_votes_mask` applies: integer counts whose range is at most their number (vote
    counts, or counts with modest integer noise); a wide range would make the histogram the big cost."""
    if counts.is_floating_point() or counts.numel() == 0:
        return False
    return int(counts.max()) - int(counts.min()) <= counts.numel()
