"""Per-expert inputs of fused mixture-of-experts weights, for the pruning statistics.

transformers >= 5 stores the experts of Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE as two 3-D parameters
(``*Experts`` classes decorated with ``@use_experts_implementation``, see their ``modeling_*.py``): the
block's router picks ``top_k_index`` (tokens, k) and the experts module computes, for every expert ``e``
and the tokens routed to it, ``h = act(x W_gate[e]^T) * (x W_up[e]^T)`` from ``gate_up_proj[e]`` and
then ``h W_down[e]^T``. Its fast paths (``grouped_mm``, ``batched_mm``) never expose ``x`` or ``h`` per
expert, so a forward pre-hook recomputes them as the eager path does: expert ``e``'s statistics then come
from exactly the tokens routed to it, and its weights are its own comparison group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def over_experts(fn: Callable, *stacks: torch.Tensor, combine: Callable = torch.stack):
    """``combine([fn(e, stacks[0][e], stacks[1][e], ...) for every expert e])``: a one-matrix function applied
    to expert stacks (experts, out, in), each expert its own matrix (its own Hessian, comparison groups,
    expansion); ``combine`` is ``torch.stack`` for a stacked result, ``sum`` for a count, ``list`` to keep."""
    return combine([fn(e, *parts) for e, parts in enumerate(zip(*stacks, strict=True))])


def _arg(args: tuple, kwargs: dict, pos: int, name: str):
    return args[pos] if len(args) > pos else kwargs[name]


@torch.no_grad()
def expert_inputs(module: nn.Module, args: tuple, kwargs: dict) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(e, x, h)`` for every expert that receives tokens: ``x`` (tokens routed to e, hidden) is the input of
    ``gate_up_proj[e]``, ``h`` (same tokens, intermediate) the input of ``down_proj[e]``."""
    hidden = _arg(args, kwargs, 0, "hidden_states")
    index = _arg(args, kwargs, 1, "top_k_index")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    index = index.reshape(hidden.shape[0], -1)
    for e in range(int(module.num_experts)):
        tokens = (index == e).any(dim=-1).nonzero().squeeze(-1)
        if tokens.numel() == 0:
            continue
        x = hidden[tokens]
        h = module._apply_gate(F.linear(x, module.gate_up_proj[e]))
        yield e, x, h
