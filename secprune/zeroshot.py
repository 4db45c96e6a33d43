"""Zero-shot multiple-choice accuracy, scored the way lm-evaluation-harness (v0.4.13) scores it.

Tasks, data and prompts: :mod:`secprune.zeroshot_data`. What follows lm-eval here, piece by piece:
- tokens: ``api/model.py::_encode_pair`` (trailing spaces of the context move to the continuation; the
  continuation is ``encode(context + continuation)[len(encode(context)):]``) with ``tok_encode``'s default of
  the tokenizer's own special tokens (a BOS where the tokenizer adds one);
- log-likelihood: ``models/huggingface.py::_loglikelihood_tokens`` (input ``(ctx + cont)[-(max_length+1):][:-1]``,
  right-padded batch, float32 log-softmax, sum over the continuation tokens); ``max_length`` as
  ``models/utils.py::resolve_max_length``;
- metrics: ``api/task.py::process_results`` (acc = argmax of the sums; acc_norm = argmax of sum / character
  length of the choice) and ``mean_stderr``; acc_norm is reported where the task's YAML lists it.

What we do differently, for speed on CPU: the choices of a question share its context, so the context runs
once with a KV cache and the continuations run as one batch on top of it (a single pass when every
continuation is one token: BoolQ, RTE). ``tests/test_zeroshot.py`` checks this against the plain
per-request computation on tiny LLaMA, Qwen2 and Gemma-3 models, and ``tests/test_zeroshot_real.py`` checks
our prompts, per-request log-likelihoods and accuracies against lm-eval's own, stored by
``experiments/lmeval_fixture.py`` in ``tests/fixtures/lmeval_smollm2.json``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from secprune import zeroshot_data
from secprune.zeroshot_data import PIP, TASK_SPECS, Example

DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when neither config nor tokenizer gives one
# --- tokens -------------------------------------------------------------------------------------------------

def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` for causal models, with ``tok_encode``'s default special tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@dataclass(frozen=True)
class Encoded:
    contexts: tuple[tuple[int, ...], ...]
    continuations: tuple[tuple[int, ...], ...]
    char_lens: tuple[int, ...]
    gold: int

    @property
    def shared(self) -> bool:
        return all(c == self.contexts[0] for c in self.contexts)


def encode(tokenizer, ex: Example) -> Encoded:
    pairs = [encode_pair(tokenizer, c, k) for c, k in zip(ex.contexts, ex.continuations, strict=True)]
    if any(not c or not k for c, k in pairs):
        raise ValueError("empty context or continuation after tokenization")
    return Encoded(tuple(tuple(c) for c, _ in pairs), tuple(tuple(k) for _, k in pairs),
                   tuple(len(c) for c in ex.choices), ex.gold)


def max_length(config, tokenizer=None) -> int:
    """lm-eval's ``resolve_max_length``: text config, then config, then the tokenizer, then 2048."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 1e29:  # transformers' VERY_LARGE_INTEGER means unset
        return int(limit)
    return DEFAULT_MAX_LENGTH


# --- scoring ------------------------------------------------------------------------------------------------

def _gather(logp: torch.Tensor, tokens: list[int]) -> float:
    """Sum of log-probabilities of ``tokens`` (float32, as lm-eval sums them)."""
    return float(logp.gather(-1, torch.tensor(tokens, device=logp.device)[:, None]).sum())


@torch.no_grad()
def loglikelihoods_plain(model, enc: Encoded, *, max_len: int) -> list[float]:
    """Every (context, continuation) as its own row of one right-padded batch, as lm-eval computes them."""
    device = next(model.parameters()).device
    rows = [(list(c) + list(k))[-(max_len + 1):][:-1] for c, k in zip(enc.contexts, enc.continuations,
                                                                      strict=True)]
    width = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, :len(r)] = torch.tensor(r)
    logits = model(batch.to(device), use_cache=False).logits.float()
    out = []
    for i, (r, k) in enumerate(zip(rows, enc.continuations, strict=True)):
        logp = F.log_softmax(logits[i, len(r) - len(k):len(r)], dim=-1)
        out.append(_gather(logp, list(k)))
    return out


@torch.no_grad()
def loglikelihoods_cached(model, enc: Encoded, *, keep_arg: bool) -> list[float]:
    """Shared context once (KV cache), then every continuation but its last token as one batch on top of it."""
    device = next(model.parameters()).device
    ctx = torch.tensor([enc.contexts[0]], device=device)
    kw = {"logits_to_keep": 1} if keep_arg else {}
    out = model(ctx, use_cache=True, **kw)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
    lls = [float(first[k[0]]) for k in enc.continuations]
    longer = [i for i, k in enumerate(enc.continuations) if len(k) > 1]
    if not longer:
        return lls
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(longer))
    width = max(len(enc.continuations[i]) - 1 for i in longer)
    batch = torch.zeros(len(longer), width, dtype=torch.long)
    for row, i in enumerate(longer):
        k = enc.continuations[i][:-1]
        batch[row, :len(k)] = torch.tensor(k)
    logits = model(batch.to(device), past_key_values=cache, use_cache=True).logits.float()
    for row, i in enumerate(longer):
        k = list(enc.continuations[i])
        logp = F.log_softmax(logits[row, :len(k) - 1], dim=-1)
        # first token from the context pass (float32 log-softmax of the same logits), the rest from this pass
        lls[i] = float(torch.tensor([lls[i], _gather(logp, k[1:])], dtype=torch.float32).sum())
    return lls


def loglikelihoods(model, enc: Encoded, *, max_len: int, prefix_cache: bool = True) -> list[float]:
    fits = len(enc.contexts[0]) + max(len(k) for k in enc.continuations) <= max_len + 1
    if prefix_cache and enc.shared and fits:
        keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        return loglikelihoods_cached(model, enc, keep_arg=keep)
    return loglikelihoods_plain(model, enc, max_len=max_len)


def _stderr(xs: np.ndarray) -> float:
    """Standard error of the mean with the sample standard deviation (lm-eval's ``mean_stderr``)."""
    return float(np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")


def score(all_lls: list[list[float]], encs: list[Encoded], *, norm: bool) -> dict:
    """acc (and acc_norm) over the examples from their per-choice log-likelihoods (lm-eval's process_results)."""
    acc = np.array([float(np.argmax(ll) == e.gold) for ll, e in zip(all_lls, encs, strict=True)])
    res = {"acc": float(acc.mean()), "acc_stderr": _stderr(acc)}
    if norm:
        accn = np.array([float(np.argmax(np.array(ll) / np.array(e.char_lens, dtype=float)) == e.gold)
                         for ll, e in zip(all_lls, encs, strict=True)])
        res |= {"acc_norm": float(accn.mean()), "acc_norm_stderr": _stderr(accn)}
    return res | {"n": len(encs)}


# --- the evaluation set used by `secprune prune --eval zero-shot` --------------------------------------------

@dataclass
class ZeroShotSet:
    """Examples of every task, selected and tokenized once for a model's tokenizer."""

    tasks: dict[str, list[Encoded]]
    indices: dict[str, list[int]]
    budget: int
    seed: int
    max_len: int

    def info(self) -> dict:
        """What the summary records about the set (no text)."""
        return {"tasks": {t: {"n": len(v), "of": len(zeroshot_data.load_task(t)), "split": TASK_SPECS[t].split}
                          for t, v in self.tasks.items()},
                "examples_per_task": self.budget or "all", "seed": self.seed,
                "selection": "numpy default_rng([seed, crc32(task)]).choice without replacement, sorted",
                "data": PIP, "scoring": "lm-evaluation-harness 0.4.13 multiple_choice (acc, acc_norm by characters)"}


def build(tokenizer, config, *, tasks: list[str], budget: int, seed: int) -> ZeroShotSet:
    chosen, indices = {}, {}
    for t in tasks:
        examples = zeroshot_data.load_task(t)
        idx = zeroshot_data.subset(len(examples), budget, seed=seed, task=t)
        chosen[t] = [encode(tokenizer, examples[i]) for i in idx]
        indices[t] = idx.tolist()
    return ZeroShotSet(chosen, indices, budget, seed, max_length(config, tokenizer))


def evaluate(model, zs: ZeroShotSet, *, prefix_cache: bool = True, progress: bool = False,
             desc: str = "zero-shot") -> dict:
    """Per task {acc, acc_stderr, (acc_norm, acc_norm_stderr), n}, and the means over the tasks:
    ``mean_acc`` and ``mean_acc_norm`` (acc_norm where the task reports it, acc elsewhere)."""
    from tqdm.auto import tqdm

    per_task = {}
    total = sum(len(v) for v in zs.tasks.values())
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for t, encs in zs.tasks.items():
            lls = []
            for e in encs:
                lls.append(loglikelihoods(model, e, max_len=zs.max_len, prefix_cache=prefix_cache))
                bar.update(1)
            per_task[t] = score(lls, encs, norm=TASK_SPECS[t].norm)
    return {"tasks": per_task} | means(per_task)


def means(per_task: dict[str, dict]) -> dict:
    acc = [r["acc"] for r in per_task.values()]
    norm = [r.get("acc_norm", r["acc"]) for r in per_task.values()]
    return {"mean_acc": float(np.mean(acc)), "mean_acc_norm": float(np.mean(norm)), "tasks_in_mean": len(acc)}


def mean_over_models(results: list[dict]) -> dict:
    """Average of several models' zero-shot results (the local-only clients), task by task."""
    tasks = {}
    for t in results[0]["tasks"]:
        rows = [r["tasks"][t] for r in results]
        tasks[t] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "n" and
                    not k.endswith("stderr")} | {"n": rows[0]["n"]}
    return {"tasks": tasks} | means(tasks)
