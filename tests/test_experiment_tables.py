"""The Table 1 script's Markdown and the plot's error bars, from summaries with known numbers."""

import argparse
import math

import pytest

from secprune.experiments.fedprllm_table1 import ROWS, table
from secprune.experiments.plot_table1 import mean_stderr
from secprune.zeroshot_data import FEDPRLLM_TASKS


def _zs(acc: float) -> dict:
    return {"mean_acc": acc, "tasks": {t: {"acc": acc + 0.01 * i, "acc_stderr": 0.05, "n": 100}
                                       for i, t in enumerate(FEDPRLLM_TASKS)}}


def _summary(ppl0: float) -> dict:
    res = {key: {"ptb": ppl0 + i, "wiki-lead": ppl0 / 2 + i, "zero-shot": _zs(0.4 - 0.01 * i)}
           for i, (key, _) in enumerate(ROWS)}
    return {"model": {"class": "LlamaForCausalLM", "decoder_layers": 30, "weights": "4-bit GGUF"},
            "evaluation": {"zero-shot": {"tasks": {t: {"n": 100} for t in FEDPRLLM_TASKS}}}, "results": res}


def test_table_rows_carry_each_summary_number():
    # prepare: two sparsities with distinct, known numbers
    args = argparse.Namespace(model="smollm2-135m", zeroshot_tasks=FEDPRLLM_TASKS, clients=16, nsamples=32,
                              seqlen=512, calib="wiki-lead", seed=0, eval_windows=16, eval_seqlen=512,
                              local_only_clients=2)
    # execute
    md = table(args, {0.5: _summary(100.0), 0.7: _summary(1000.0)})
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and "%" in line.split(" | ")[0]]
    # assert: one dense row (from the lowest sparsity), three methods per sparsity, in order, numbers as given
    assert [(r[0], r[1]) for r in rows] == [("| 0%", "Dense")] + [
        (f"| {s}%", label) for s in (50, 70) for key, label in ROWS if key != "dense"]
    fed70 = rows[-1]
    assert fed70[2:5] == ["1003.00", "503.00", f"{100 * (0.4 - 0.03):.2f}"]
    assert fed70[5].strip() == f"{100 * (0.4 - 0.03):.1f}" and "Weights: 4-bit GGUF." in md


def test_mean_stderr_combines_independent_task_errors():
    zs = {"tasks": {"a": {"acc_stderr": 0.03}, "b": {"acc_stderr": 0.04}}}
    assert mean_stderr(zs) == pytest.approx(0.05 / 2)  # sqrt(0.03^2 + 0.04^2) / 2 tasks
    assert math.isnan(mean_stderr({"tasks": {"a": {"acc": 0.5}}}))
