"""The Table 1 script's Markdown and the plot's error bars, from summaries with known numbers."""

import argparse
import json
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


def _fedspa_cache() -> dict:
    st = "pc32x256-wiki-lead-ev16x512-s0"
    data = {f"{st}|dense": {"ptb": 90.0, "wiki-lead": 19.0}, f"{st}|random|s0.5": {"ptb": 1e6, "wiki-lead": 1e6}}
    for n in (4, 8):
        for s in (0.5, 0.7):
            base = 100 * n + 1000 * s
            data[f"{st}|fedspallm|c{n}|s{s}"] = {"ptb": base + 1, "wiki-lead": base / 10}
            data[f"{st}|fedprllm|c{n}|s{s}"] = {"ptb": base + 2, "wiki-lead": base / 10 + 1}
            data[f"{st}|standalone|c{n}|s{s}"] = {"ptb": base + 3, "wiki-lead": base / 10 + 2, "per_client": [
                {"ptb": base, "wiki-lead": base / 10}, {"ptb": base + 6, "wiki-lead": base / 10 + 4}]}
    return data


def test_fedspallm_plot_series_follow_the_cache_along_both_axes(tmp_path):
    from secprune.experiments.plot_fedspallm import cells, main, series, settings

    # prepare: a cache with known cells at 4 and 8 clients, 50 and 70 %
    data = _fedspa_cache()
    found = cells(data, setting=settings(data)[0])
    # execute / assert: along sparsity at 4 clients, then along clients at 70 %; the standalone bars span
    # the evaluated clients (mean 3 above base, clients at base and base + 6)
    assert series(found, method="fedspallm", dataset="ptb", clients=4) == ([0.5, 0.7], [901.0, 1101.0],
                                                                           [(0, 0), (0, 0)])
    xs, ys, err = series(found, method="standalone", dataset="ptb", sparsity=0.7)
    assert (xs, ys, err) == ([4, 8], [1103.0, 1503.0], [(3.0, 3.0), (3.0, 3.0)])
    assert len(found) == 12  # dense and random cells are not method cells
    # the script writes the PNG whole, and refuses a cache that holds two settings without --setting
    out = tmp_path / "f.png"
    cache = tmp_path / "c.json"
    cache.write_text(json.dumps(data))
    assert main(["--cache", str(cache), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "f.png"]  # no temporary file left
    data["n32x256-wiki-lead-ev4x512-s0|dense"] = {"ptb": 1.0, "wiki-lead": 1.0}
    cache.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="--setting: the cache holds 2 settings"):
        main(["--cache", str(cache), "--out", str(out)])
