"""`secprune export`: a run's pruned model as a Hugging Face folder that loads with ``from_pretrained``.

The run's files are keyed by the model's own parameter names, so the export needs no secprune naming:
FedPrLLM: W <- W (.) (1 - M) (times (m - votes) / m with ``--scaling``, FedPrLLM step 6);
FedSpaLLM: W <- 0 where M, the aggregated kept values elsewhere. The arithmetic is the evaluation's own
(:func:`secprune.fedprllm.aggregate.pruned_weight`), so the exported float32 model gives the perplexity the run
reported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from secprune import log, outdir, summary
from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.fedprllm.aggregate import pruned_weight, scale_factor
from secprune.masks import MaskSet
from secprune.model import all_prunable, inspect_model, load_lm, load_tokenizer, param_names

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pruned_state(run_dir: Path, summ: dict, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pruned tensors of every matrix the run pruned, by parameter name, from the run's files.
    ``params`` are the model's prunable matrices by parameter name, in matrix orientation (docs/outputs.md)."""
    masks = MaskSet.load(run_dir / "final_mask.safetensors")
    kept = load_file(str(run_dir / "global_weights.safetensors")) if summ["algorithm"] == "fedspallm" else None
    counts_path = run_dir / "vote_counts.safetensors"
    if summ["config"]["scaling"] and not counts_path.is_file():
        raise UsageError(f"--run: {run_dir} ran with --scaling but has no vote_counts.safetensors")
    counts = load_numpy(str(counts_path)) if summ["config"]["scaling"] else None
    m = summ["calibration"]["clients"]
    out = {}
    for name in masks.names():
        if name not in params:
            raise UsageError(f"--run: the mask of {name} names no prunable matrix of the run's model "
                             f"({summ['config']['model']})")
        weight, mask = params[name], masks.get(0, name)
        if tuple(weight.shape) != tuple(mask.shape):
            raise UsageError(f"--run: the mask of {name} has shape {tuple(mask.shape)}, the model's weight "
                             f"{tuple(weight.shape)}")
        if kept is not None:
            w = torch.zeros_like(weight)
            w[~mask] = kept[name].to(weight.dtype)
        else:
            scale = scale_factor(torch.from_numpy(counts[name].astype("int64")), m) if counts is not None else None
            w = pruned_weight(weight, mask, scale)
        out[name] = w
    return out


def export_run(run: str | Path, out: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> dict:
    run_dir, out = Path(run), Path(out)
    if dtype not in DTYPES:
        raise UsageError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    summ = summary.load(run_dir)
    if not (run_dir / "final_mask.safetensors").is_file():
        raise UsageError(f"--run: {run_dir} has no final_mask.safetensors (a run that wrote no mask cannot be "
                         "exported); rerun `secprune prune`")
    cfg = PruneConfig(**summ["config"])
    outdir.check_target(out, overwrite=overwrite)
    path, config = inspect_model(cfg.model)
    tok = load_tokenizer(path)
    model = load_lm(path, config)
    names = param_names(model)
    mats = {names[full]: mat for full, mat in all_prunable(model).items()}
    new = pruned_state(run_dir, summ, {n: m.weight for n, m in mats.items()})
    with torch.no_grad():
        for name, w in new.items():
            mats[name].weight = w  # back in the parameter's own orientation (GPT-2's Conv1D: transposed)
    model.to(DTYPES[dtype])
    model.config.use_cache = True  # we switch the cache off for calibration; generation wants it back
    info = {"written_by": "secprune export", "run": str(run_dir.resolve()), "algorithm": summ["algorithm"],
            "model": cfg.model, "dtype": dtype, "pruned_matrices": len(new),
            "pruned_parameters": int(sum(int((w == 0).sum()) for w in new.values())),
            "mask_sparsity": summ["sparsity"]["mask"], "scaling": cfg.scaling,
            "run_results": summ["results"].get("federated")}
    tmp = outdir.staging(out, kind="export")
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():  # the pruned model holds no client data: readable as the user's umask allows
            if f.is_file() and f.name != outdir.MARKER:
                f.chmod(0o666 & ~_umask())
        (tmp / "secprune_export.json").write_text(json.dumps(info, indent=1) + "\n")
        outdir.commit(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"exported {len(new)} pruned matrices of {cfg.model} to {out}")
    return {"out": str(out), **{k: info[k] for k in ("algorithm", "model", "dtype", "pruned_matrices",
                                                      "mask_sparsity", "run_results")}}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
