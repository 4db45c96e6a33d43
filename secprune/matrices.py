"""What to prune inside a decoder block, for every causal-LM family transformers ships.

A *matrix* is one weight of a block seen as ``(out_features, in_features)`` (Wanda's and SparseGPT's
orientation: a row is an output neuron), or a stack ``(experts, out, in)`` of them:

* ``nn.Linear`` and its subclasses (LLaMA, Mistral, Qwen2/3, Gemma-2/3, Phi, Phi-3's fused ``qkv_proj``,
  OPT, GPT-NeoX, Falcon's ``FalconLinear``): the weight as it is;
* GPT-2's ``Conv1D`` (``transformers.pytorch_utils``; it computes ``x @ W + b`` with ``W`` stored
  ``(in, out)``): the transpose, a view of the parameter;
* fused mixture-of-experts weights (``@use_experts_implementation`` classes of transformers >= 5:
  Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): ``gate_up_proj`` ``(E, 2I, H)`` and ``down_proj`` ``(E, H, I)``,
  one matrix per expert. Comparison groups never cross experts, and each expert's statistics come from
  the tokens the router sent to it (:mod:`secprune.experts`).

Never pruned, and reported as such (:func:`inventory`): embeddings and the LM head (outside the blocks),
routers (``*TopKRouter`` weights, or an ``nn.Linear`` with one output per expert), gates of shared experts
(an ``nn.Linear`` with a single output, Qwen2-MoE's ``shared_expert_gate``), norms and biases.

Drivers read and write a matrix only through :attr:`Matrix.weight` (always in matrix orientation); a
stored file keys it by :attr:`Matrix.param`, the model's own parameter name inside the block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from secprune.errors import UsageError

Kind = Literal["linear", "conv1d", "experts"]
EXPERT_PARAMS = ("gate_up_proj", "down_proj")


@dataclass(eq=False)
class Matrix:
    """One prunable weight of a block: ``module.<attr>``, presented as ``(..., out, in)``."""

    module: nn.Module
    attr: str
    kind: Kind
    param: str  # parameter name inside the block ('self_attn.q_proj.weight', 'mlp.experts.down_proj')

    @property
    def _tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr).data

    @property
    def data(self) -> torch.Tensor:
        """The parameter's tensor as the model stores it (Conv1D: ``(in, out)``; experts: the whole stack)."""
        return self._tensor

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``(out, in)`` (``(experts, out, in)`` for expert stacks): a view, never a copy."""
        w = self._tensor
        return w.t() if self.kind == "conv1d" else w

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        getattr(self.module, self.attr).data = value.t().contiguous() if self.kind == "conv1d" else value

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def experts(self) -> int:
        """Number of stacked expert matrices (0 for a plain matrix)."""
        return int(self._tensor.shape[0]) if self.kind == "experts" else 0

    def numel(self) -> int:
        return self._tensor.numel()


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _is_fused_experts(module: nn.Module) -> bool:
    params = dict(module.named_parameters(recurse=False))
    return any(p.dim() == 3 for p in params.values())


def skip_reason(name: str, module: nn.Module, experts: int) -> str | None:
    """Why an ``nn.Linear`` inside a block is not pruned: a router or a shared-expert gate (else None)."""
    leaf = name.rsplit(".", 1)[-1]
    if module.out_features == 1:
        return "shared-expert gate"
    if experts and module.out_features == experts and ("gate" in leaf or "router" in leaf):
        return "router"  # a router kept as nn.Linear (e.g. Mixtral's block_sparse_moe.gate before transformers 5)
    return None


def check_experts(name: str, module: nn.Module) -> None:
    """The fused layouts :mod:`secprune.experts` replays: concatenated [gate; up], (out, in), no bias."""
    params = {n for n, p in module.named_parameters(recurse=False) if p.dim() == 3}
    unsupported = [flag for flag, bad in (("transposed weights", getattr(module, "is_transposed", False)),
                                          ("expert biases", getattr(module, "has_bias", False)),
                                          ("interleaved gate/up", not getattr(module, "is_concatenated", True)),
                                          ("no gate", not getattr(module, "has_gate", True)),
                                          ("post-expert norm", getattr(module, "has_post_expert_norm", False)))
                   if bad]
    if params != set(EXPERT_PARAMS) or unsupported or not hasattr(module, "num_experts"):
        raise UsageError(f"--model: experts {name} ({type(module).__name__}: {sorted(params)}"
                         f"{', ' + ', '.join(unsupported) if unsupported else ''}) are not a layout secprune can "
                         "prune (expected gate_up_proj and down_proj, (E, out, in), no bias)")


def block_matrices(layer: nn.Module, *, experts: int = 0) -> tuple[dict[str, Matrix], dict[str, str]]:
    """(prunable matrices by name inside the block, skipped weights -> reason) of one decoder block."""
    found: dict[str, Matrix] = {}
    skipped: dict[str, str] = {}
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            reason = skip_reason(name, module, experts)
            if reason:
                skipped[f"{name}.weight"] = reason
            else:
                found[name] = Matrix(module, "weight", "linear", f"{name}.weight")
        elif _is_conv1d(module):
            found[name] = Matrix(module, "weight", "conv1d", f"{name}.weight")
        elif _is_fused_experts(module):
            check_experts(name, module)
            for attr in EXPERT_PARAMS:
                found[f"{name}.{attr}"] = Matrix(module, attr, "experts", f"{name}.{attr}")
        else:
            for pname, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:  # e.g. a *TopKRouter's (experts, hidden) weight
                    skipped[f"{name}.{pname}" if name else pname] = "router" if experts else "other"
    return found, skipped


Record = Callable[[str, "int | None", torch.Tensor], None]


def observe(mats: dict[str, Matrix], record: Record) -> list:
    """Hooks that report the input of every matrix in ``mats`` as the block runs: ``record(name, expert, x)``
    with ``x`` of shape (..., in_features); ``expert`` is None for plain matrices, else the expert index and
    ``x`` the tokens routed to it. Returns the hook handles (remove them when done)."""
    from secprune.experts import expert_inputs

    handles = []
    by_module: dict[int, list[tuple[str, Matrix]]] = {}
    for name, mat in mats.items():
        by_module.setdefault(id(mat.module), []).append((name, mat))
    for entries in by_module.values():
        module = entries[0][1].module
        if entries[0][1].kind != "experts":
            name = entries[0][0]
            handles.append(module.register_forward_hook(
                lambda _m, inp, _out, name=name: record(name, None, inp[0])))
            continue
        names = {mat.attr: name for name, mat in entries}

        def pre(mod, args, kwargs, names=names):
            for e, x, h in expert_inputs(mod, args, kwargs):
                record(names["gate_up_proj"], e, x)
                record(names["down_proj"], e, h)

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    return handles
