"""Capture what every decoder layer receives, so layers can be replayed one at a time.

Transformers passes decoder layers keyword arguments that differ by layer type (rotary
``position_embeddings``; Gemma-3 alternates sliding-window and global masks and rotary bases), so we
record the keyword arguments of *every* layer from one forward pass of a single window, and the
hidden-state input of layer 0 for all windows (stopping the forward there: only embeddings run).
Arguments a model passes positionally (GPT-2) are recorded by name.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from secprune.model import decoder_layers


class _Stop(Exception):
    pass


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _without_hidden(layer: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Everything but the hidden states, by name: positional arguments after them (GPT-2's blocks receive
    ``past_key_values, attention_mask, encoder_hidden_states`` positionally) are named from the signature."""
    kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    if len(args) > 1:
        params = [p for p in inspect.signature(layer.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(params) < len(args) or any(p.kind == p.POSITIONAL_ONLY for p in params[1:len(args)]):
            raise RuntimeError(f"decoder layer {type(layer).__name__} received positional arguments that cannot "
                               "be replayed by name")
        kw |= {p.name: a for p, a in zip(params[1:], args[1:], strict=False)}
    kw["use_cache"] = False
    kw.pop("past_key_values", None)
    kw.pop("past_key_value", None)
    return kw


@torch.no_grad()
def layer_kwargs(model: nn.Module, window: torch.Tensor) -> list[dict[str, Any]]:
    """Keyword arguments each decoder layer receives for a (1, seqlen) input (batch 1: they broadcast)."""
    layers = decoder_layers(model)
    recorded: list[dict[str, Any] | None] = [None] * len(layers)

    def hook(idx):
        def pre(module, args, kwargs):
            recorded[idx] = _without_hidden(module, args, kwargs)
        return pre

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model(window.view(1, -1).to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert all(r is not None for r in recorded)
    return recorded  # type: ignore[return-value]


@torch.no_grad()
def first_layer_inputs(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """Hidden states entering decoder layer 0 for every window: (n, seqlen, hidden)."""
    layer0 = decoder_layers(model)[0]
    out: list[torch.Tensor] = []

    def pre(_module, args, kwargs):
        out.append(_hidden(args, kwargs).detach())
        raise _Stop

    handle = layer0.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(windows[start:start + batch_size].to(model.device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(out, dim=0)


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out
