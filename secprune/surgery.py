"""Model surgery: put pruned masks, scales or other weights into a model, and take them out again.

Every caller that evaluates a pruned model (the run's evaluation, the audits, the experiments) goes through
:func:`pruned`, so none of them imports an algorithm's driver to borrow its helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from secprune.model import all_prunable
from secprune.stash import WeightStash


def apply_masks(model, masks: dict[str, torch.Tensor], *, scales: dict[str, torch.Tensor] | None = None
                ) -> WeightStash:
    """Prune the model in place (W (.) (1 - M), times the scale if given); the dense weights go to a
    :class:`~secprune.stash.WeightStash` on disk, not to memory, and ``restore`` puts them back."""
    lins = all_prunable(model)
    stash = WeightStash()
    try:
        for name, mask in masks.items():
            mat = lins[name]
            stash.put(name, mat.data)
            w = mat.weight  # a view of the parameter: pruning it prunes the model
            w.masked_fill_(mask.to(w.device), 0.0)
            if scales is not None:
                w.mul_(scales[name].to(w.device, w.dtype))
    except BaseException:
        restore(model, stash)
        raise
    return stash


def restore(model, backup: WeightStash) -> None:
    """Undo :func:`apply_masks`: every stashed matrix gets its dense weights back, and the stash is closed."""
    lins = all_prunable(model)
    try:
        for name in backup:
            backup.take(name, lins[name].data)
    finally:
        backup.close()


def apply_weights(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load matrices into the model; returns the previous tensors so that ``restore_weights`` can undo it."""
    lins = all_prunable(model)
    backup = {}
    for name, w in weights.items():
        backup[name] = lins[name].weight
        lins[name].weight = w.to(backup[name].device, backup[name].dtype)
    return backup


def restore_weights(model, backup: dict[str, torch.Tensor]) -> None:
    lins = all_prunable(model)
    for name, w in backup.items():
        lins[name].weight = w


@contextmanager
def pruned(model, *, masks: dict[str, torch.Tensor] | None = None, scales: dict[str, torch.Tensor] | None = None,
           weights: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
    """The model carrying ``weights`` (a client's own pruned matrices), or pruned by ``masks`` (times
    ``scales``), for the ``with`` block; the dense model comes back however the block ends."""
    backup_w = apply_weights(model, weights) if weights else {}
    backup_m = apply_masks(model, masks, scales=scales) if masks and not weights else None
    try:
        yield
    finally:
        if backup_m is not None:
            restore(model, backup_m)
        restore_weights(model, backup_w)
