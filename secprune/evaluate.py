"""Perplexity as Wanda/SparseGPT measure it, zero-shot accuracy as lm-eval does, and the sparsity achieved.

The test text is joined once and tokenized once; it is cut into ``numel // seqlen`` non-overlapping
windows (optionally only the first ``max_windows``); perplexity = exp(sum of token NLL / predicted tokens).
Zero-shot accuracy: :mod:`secprune.zeroshot`. Every model of a run (dense, federated, centralized, each
local-only client) goes through :func:`evaluate_model`, which applies its masks or weights and restores
the dense model afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from secprune.model import all_prunable

LOGIT_BUDGET = 2 ** 24  # logits (floats) held at once: 64 MB, whatever the vocabulary


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final hidden states, with the head's post-processing of the families that have one
    (Gemma-2/3 ``final_logit_softcapping``, Cohere ``logit_scale``, Granite ``logits_scaling``), as their
    ``*ForCausalLM.forward`` applies it."""
    cfg = model.config
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    if getattr(cfg, "logit_scale", None) is not None:
        logits = logits * cfg.logit_scale
    if getattr(cfg, "logits_scaling", None) is not None:
        logits = logits / cfg.logits_scaling
    return logits


def _nll_chunked(model, x: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of a batch, the LM head applied to a few hundred tokens at a time: the
    (batch, tokens, vocabulary) logits (1.2 GB for 4 x 512 tokens of a 152k vocabulary) never exist."""
    out = model.base_model(input_ids=x, use_cache=False)
    hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])[:, :-1]
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), x[:, 1:].reshape(-1)
    step = max(1, LOGIT_BUDGET // model.get_output_embeddings().weight.shape[0])
    return sum(F.cross_entropy(head_logits(model, hidden[i:i + step]), targets[i:i + step], reduction="sum")
               for i in range(0, len(targets), step))


def _nll_full(model, x: torch.Tensor) -> torch.Tensor:
    logits = model(x, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")


CHECK_TOKENS = 64  # tokens of the once-per-model check: its full logits are 39 MB, not 0.6 GB, at 152k x 512


def _chunked_ok(model, x: torch.Tensor) -> bool:
    """Whether the chunked head gives the model's own logits (checked once per model on the first
    ``CHECK_TOKENS`` tokens of one window, enough to see the head's post-processing; a family with other
    post-processing falls back to the full logits)."""
    if not hasattr(model, "_secprune_chunked_ok"):
        probe = x[:1, :CHECK_TOKENS]
        try:
            ok = torch.allclose(_nll_chunked(model, probe), _nll_full(model, probe), rtol=1e-4)
        except (AttributeError, TypeError, ValueError):
            ok = False
        model._secprune_chunked_ok = ok
    return model._secprune_chunked_ok


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, *, batch_size: int = 4, desc: str = "eval",
               progress: bool = True) -> float:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for s in tqdm(range(0, windows.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        x = windows[s:s + batch_size].to(device)
        nll += float(_nll_chunked(model, x) if _chunked_ok(model, x) else _nll_full(model, x))
        count += x[:, 1:].numel()
    return math.exp(nll / count)


def achieved_sparsity(model) -> dict:
    """Fraction of exact zeros per prunable matrix, per decoder layer and overall."""
    per_matrix, per_layer, zeros, total = {}, {}, 0, 0
    for name, lin in all_prunable(model).items():
        z, n = int((lin.weight == 0).sum()), lin.weight.numel()
        per_matrix[name] = z / n
        layer = ".".join(name.split(".")[:2])
        lz, ln = per_layer.get(layer, (0, 0))
        per_layer[layer] = (lz + z, ln + n)
        zeros += z
        total += n
    return {"overall": zeros / total, "per_layer": {k: z / n for k, (z, n) in per_layer.items()},
            "per_matrix": per_matrix}


def build_evals(cfg, tokenizer, model_config) -> dict:
    """The run's evaluation sets: token windows per perplexity set, a ZeroShotSet for ``zero-shot``."""
    from secprune import calibration

    evals: dict = {}
    for name in cfg.eval:
        if name == "zero-shot":
            from secprune import zeroshot

            evals[name] = zeroshot.build(tokenizer, model_config, tasks=list(cfg.zeroshot_tasks),
                                         budget=cfg.zeroshot_examples, seed=cfg.seed)
        else:
            evals[name] = calibration.eval_set(name, tokenizer, seqlen=cfg.eval_seqlen, max_windows=cfg.eval_windows)
    return evals


def describe_evals(evals: dict) -> dict:
    """What the summary says about each evaluation set (sizes, selection; no text)."""
    return {name: (w.info() if hasattr(w, "info") else {"windows": int(w.shape[0]), "seqlen": int(w.shape[1])})
            for name, w in evals.items()}


def evaluate_one(model, name: str, data, *, label: str, progress: bool):
    if isinstance(data, torch.Tensor):
        return perplexity(model, data, desc=f"{label} {name}", progress=progress)
    from secprune import zeroshot

    return zeroshot.evaluate(model, data, desc=f"{label} {name}", progress=progress)


def evaluate_model(model, evals: dict, *, masks: dict[str, torch.Tensor] | None = None,
                   scales: dict[str, torch.Tensor] | None = None, weights: dict[str, torch.Tensor] | None = None,
                   label: str = "eval", progress: bool = True) -> dict:
    """Perplexity on every test set (zero-shot accuracies for ``zero-shot``) of the model pruned by ``masks``
    (times ``scales``) or carrying ``weights`` in place of its dense matrices; the dense model is restored.
    With a pruned model the result also gives ``weight_sparsity``: the fraction of exact zeros, which can
    exceed the mask's sparsity when the dense weights already hold zeros (4-bit dequantized checkpoints do)."""
    from secprune.surgery import pruned

    with pruned(model, masks=masks, scales=scales, weights=weights):
        res = {name: evaluate_one(model, name, w, label=label, progress=progress) for name, w in evals.items()}
        if weights or masks:
            res["weight_sparsity"] = achieved_sparsity(model)["overall"]
        return res
