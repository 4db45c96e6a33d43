"""The one layer-replay loop: calibration windows flow through the decoder stack one layer at a time.

Every pruning driver, audit and client process uses it (FedPrLLM and FedSpaLLM simulations, the Flower
client, the audits' layer-0 statistics). Each window has an *owner*: the simulated client it belongs to
(or, for per-window statistics, the window itself). Per layer:

* :meth:`Replay.statistics`: the windows through the layer (dense, or with the weights the server sent),
  the method's statistics of every linear accumulated per owner (Wanda's squared input norms,
  SparseGPT's Hessian X^T X). Linears that receive the very same input tensor (q/k/v, gate/up) share one
  accumulation. Every owner's windows run in batches of their own, so a client in its own process
  computes the very same numbers as the simulation;
* :meth:`Replay.advance`: the next layer's inputs, each group of windows through the layer with the
  weights its owner continues with (its own pruned layer, the global one, or the dense one).

Layer 0's inputs come from one embedding pass (:func:`secprune.capture.first_layer_inputs`); the keyword
arguments every layer receives are recorded once (:func:`secprune.capture.layer_kwargs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from secprune.capture import first_layer_inputs, layer_kwargs, run_layer
from secprune.errors import UsageError
from secprune.matrices import Matrix, observe
from secprune.methods import Method
from secprune.model import decoder_layers, prunable_matrices


def check_parts(parts: Sequence[np.ndarray], n_windows: int) -> None:
    """Every window must belong to exactly one client."""
    owner = torch.full((n_windows,), -1, dtype=torch.long)
    for i, idx in enumerate(parts):
        owner[torch.as_tensor(np.asarray(idx), dtype=torch.long)] = i
    if (owner < 0).any() or sum(len(p) for p in parts) != n_windows:
        raise ValueError("client partitions must cover every window exactly once")


class Replay:
    """Windows at the input of one decoder layer; ``layer`` says which."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 8) -> None:
        self.model = model
        self.windows = windows
        self.batch_size = batch_size
        self.layers = decoder_layers(model)
        self._kwargs: list[dict] | None = None
        self.inps: torch.Tensor | None = None
        self.layer = 0

    @property
    def kwargs(self) -> list[dict]:
        """Keyword arguments of every layer, recorded on first use (a resumed, finished run needs none)."""
        if self._kwargs is None:
            self._kwargs = layer_kwargs(self.model, self.windows[:1])
        return self._kwargs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def start(self) -> None:
        """Inputs of layer 0 (the embeddings of every window)."""
        self.inps = first_layer_inputs(self.model, self.windows, batch_size=self.batch_size)
        self.layer = 0

    def resume(self, layer: int, inps: torch.Tensor) -> None:
        self.inps, self.layer = inps.to(self.device), layer

    def linears(self, layer: int | None = None) -> dict[str, Matrix]:
        """The prunable matrices of a layer (default: the current one), by name inside the layer."""
        return prunable_matrices(self.layers[self.layer if layer is None else layer])

    @contextmanager
    def weights(self, weights: dict[str, torch.Tensor] | None) -> Iterator[None]:
        """The current layer's matrices carry ``weights`` (by name inside the layer) for the block."""
        lins = self.linears()
        saved = {n: lin.weight for n, lin in lins.items()}
        try:
            for n, w in (weights or {}).items():
                lins[n].weight = w.to(saved[n].device, saved[n].dtype)
            yield
        finally:
            for n, lin in lins.items():
                lin.weight = saved[n]

    def _forward(self, idx: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> None:
        layer, kw = self.layers[self.layer], self.kwargs[self.layer]
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        for s in range(0, len(idx), self.batch_size):
            chunk = idx[s:s + self.batch_size]
            y = run_layer(layer, self.inps[chunk], kw)
            if out is not None:
                out[chunk] = y

    @torch.no_grad()
    def statistics(self, method: Method, *, groups: Sequence[np.ndarray],
                   weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor | None]:
        """Statistics of every matrix of the current layer for each owner: ``groups[s]`` are the windows of
        owner ``s``, in its own order. Each owner's windows run in batches of their own, exactly as they run
        in the owner's own process (Flower), so both give the same numbers bit for bit. A matrix's input
        arrives as (batch, tokens, in), flattened (batch * tokens, in) (OPT, Qwen2-MoE's shared expert) or
        as the tokens routed to one expert: every token of a batch belongs to the batch's one owner, so the
        routed tokens are credited to it. An expert stack's statistics are (owners, experts, ...)."""
        lins = self.linears()
        if not method.needs_data or not groups:
            return {n: None for n in lins}
        stats = {n: _new_stats(method, lin, len(groups), self.device) for n, lin in lins.items()}
        alias: dict[str, str] = {}
        seen: list[tuple[torch.Tensor, str]] = []  # inputs of the current chunk, kept alive (identity is safe)
        current: dict[str, torch.Tensor | None] = {"owner": None}

        def record(n: str, expert: int | None, x: torch.Tensor) -> None:
            if expert is None:
                for t, other in seen:
                    if t is x:
                        alias[n] = other
                        return
                seen.append((x, n))
            if expert is None:  # (batch, tokens, in) or flattened (batch * tokens, in): windows batch-major
                method.accumulate(stats[n], x.detach().reshape(len(current["owner"]), -1, x.shape[-1]),
                                  current["owner"])
            else:  # the tokens routed to one expert, all of them the chunk owner's
                if getattr(method, "bounds_windows", False):
                    raise UsageError("--dp statistics: a fused MoE expert sees the tokens of several windows at "
                                     "once, so a window's contribution cannot be bounded; not supported yet")
                method.accumulate(stats[n][:, expert], x.detach().reshape(1, -1, x.shape[-1]),
                                  current["owner"][:1])

        layer, kw = self.layers[self.layer], self.kwargs[self.layer]
        handles = observe(lins, record)
        try:
            with self.weights(weights):
                for slot, idx in enumerate(groups):
                    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
                    for s in range(0, len(idx), self.batch_size):
                        chunk = idx[s:s + self.batch_size]
                        current["owner"] = torch.full((len(chunk),), slot, dtype=torch.long)
                        run_layer(layer, self.inps[chunk], kw)
                        seen.clear()
        finally:
            for h in handles:
                h.remove()
        released = method.release({n: s for n, s in stats.items() if n not in alias})  # nothing reads them before
        return {n: released[alias.get(n, n)] for n in stats}

    @torch.no_grad()
    def advance(self, groups: Iterable[tuple[np.ndarray, dict[str, torch.Tensor] | None]]) -> None:
        """Move to the next layer: each owner's windows ``idx`` go through the current layer with the weights
        that owner continues with (``None`` = the layer as it is), in batches of their own; together the
        groups must cover every window. ``groups`` may be a generator, so that only one owner's weights
        exist at a time."""
        outs = torch.empty_like(self.inps)
        for idx, weights in groups:
            with self.weights(weights):
                self._forward(idx, outs)
        self.inps = outs
        self.layer += 1


def _new_stats(method: Method, mat: Matrix, owners: int, device: torch.device) -> torch.Tensor | None:
    """A method's statistics of one matrix for ``owners`` owners; (owners, experts, ...) for expert stacks."""
    if not mat.experts:
        return method.new_stats(n_clients=owners, in_features=mat.in_features, device=device)
    flat = method.new_stats(n_clients=owners * mat.experts, in_features=mat.in_features, device=device)
    return None if flat is None else flat.view(owners, mat.experts, *flat.shape[1:])
