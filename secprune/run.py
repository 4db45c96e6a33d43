"""`secprune prune`: calibration -> local masks -> (secure) aggregation -> global mask -> evaluation.

Outputs go to a temporary folder renamed to ``--out`` only when the run succeeds; per-layer
checkpoints live in ``<out>.partial/`` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from secprune import calibration
from secprune.aggregate import scale_factor
from secprune.comm import mask_communication
from secprune.config import PruneConfig
from secprune.evaluate import achieved_sparsity, perplexity
from secprune.federated import FedResult, LocalSpec, apply_masks, federated_prune, restore
from secprune.masks import MaskSet
from secprune.methods import make_method
from secprune.model import UsageError, load_model
from secprune.secagg import make_summer

console = Console(stderr=True)


def peak_memory_mb(device: str) -> dict:
    out = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def evaluate(model, tok, cfg: PruneConfig, masks: dict | None, scales: dict | None, label: str,
             progress: bool = True) -> dict:
    backup = apply_masks(model, masks, scales=scales) if masks else {}
    try:
        res = {name: perplexity(model, calibration.eval_set(name, tok, seqlen=cfg.eval_seqlen,
                                                            max_windows=cfg.eval_windows),
                                desc=f"{label} {name}", progress=progress) for name in cfg.eval}
        if masks:
            res["sparsity"] = achieved_sparsity(model)["overall"]
        return res
    finally:
        restore(model, backup)


def _prepare_out(cfg: PruneConfig) -> tuple[Path, Path, Path]:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise UsageError(f"--out: {out} exists and is not empty; pass --overwrite or choose another folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return out, tmp, out.with_name(out.name + ".partial")


def _finish(tmp: Path, out: Path, partial: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    shutil.rmtree(partial, ignore_errors=True)


def run_prune(cfg: PruneConfig, *, progress: bool = True) -> dict:
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    out, tmp, partial = _prepare_out(cfg)
    try:
        summary = _run(cfg, tmp, partial, progress=progress)
        _finish(tmp, out, partial)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _run(cfg: PruneConfig, tmp: Path, partial: Path, *, progress: bool) -> dict:
    if cfg.algorithm == "fedspallm":  # FedSpaLLM (docs/fedspallm.md)
        from secprune.fedspallm.run import run_fedspallm

        return run_fedspallm(cfg, tmp, partial, progress=progress)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok = load_model(cfg.model, device=cfg.device)
    calib = calibration.build(cfg, tok)
    m = len(calib.parts)
    spec = LocalSpec(make_method(cfg.method, sparsegpt_update=cfg.sparsegpt_update), cfg.sparsity,
                     cfg.local_group, cfg.seed, cfg.batch_size)
    summer = make_summer(cfg.secure_agg, n_clients=m, seed=cfg.seed,
                         **({"neighbours": cfg.secagg_neighbours} if cfg.secagg_neighbours else {}))
    console.print(f"[bold]secprune[/] {cfg.algorithm}/{cfg.method}: {m} clients, {len(calib.windows)} windows "
                  f"x {cfg.seqlen} tokens, sparsity {cfg.sparsity}, {cfg.strategy}, server {cfg.server_group}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    fed: FedResult = federated_prune(model, calib.windows, calib.parts, spec=spec, strategy=cfg.strategy,
                                     server_group=cfg.server_group, scaling=cfg.scaling, summer=summer,
                                     checkpoint=partial / "federated", desc="clients", progress=progress)
    timings["federated_prune_s"] = time.perf_counter() - t
    scales = {n: scale_factor(c, m) for n, c in fed.counts.items()} if cfg.scaling else None

    results: dict[str, dict] = {}
    if "dense" in cfg.baselines:
        results["dense"] = evaluate(model, tok, cfg, None, None, "dense")
    t = time.perf_counter()
    results["fedprllm"] = evaluate(model, tok, cfg, fed.final, scales, "fedprllm")
    timings["eval_s"] = time.perf_counter() - t
    if "centralized" in cfg.baselines:
        t = time.perf_counter()
        cen = federated_prune(model, calib.windows, [np.arange(len(calib.windows))], spec=spec,
                              checkpoint=partial / "centralized", desc="centralized", progress=progress)
        timings["centralized_prune_s"] = time.perf_counter() - t
        results["centralized"] = evaluate(model, tok, cfg, cen.final, None, "centralized")
    if "local-only" in cfg.baselines and cfg.local_only_clients > 0:
        k = min(cfg.local_only_clients, m)
        per_client = []
        for i in range(k):
            if cfg.strategy == "one-shot":  # one-shot client masks ARE each client's stand-alone masks
                masks = fed.client_masks.party(i)
            else:
                masks = federated_prune(model, calib.windows[torch.as_tensor(calib.parts[i])],
                                        [np.arange(len(calib.parts[i]))], spec=spec, progress=False).final
            per_client.append(evaluate(model, tok, cfg, masks, None, f"local {i}"))
        results["local-only"] = {
            name: float(np.mean([r[name] for r in per_client])) for name in cfg.eval} | {
            "clients_evaluated": k, "per_client": per_client}

    final = MaskSet(1)
    for name, mask in fed.final.items():
        final.put(name, 0, mask)
    final.save(tmp / "final_mask.safetensors")
    if cfg.save_client_masks:
        fed.client_masks.save(tmp / "client_masks.safetensors")
    torch.save({"windows": calib.windows, "parts": calib.parts, "sources": calib.sources},
               tmp / "calibration.pt")  # token ids for audits; the summary holds no text

    layer_entries = [0] * len(set(n.split(".")[1] for n in fed.final))
    for name, mask in fed.final.items():
        layer_entries[int(name.split(".")[1])] += mask.numel()
    summary = {
        "config": cfg.to_dict(),
        "calibration": calib.info,
        "results": results,
        "sparsity": achieved_sparsity_of_masks(fed.final),
        "communication": mask_communication(layer_entries=layer_entries, n_clients=m, strategy=cfg.strategy),
        "secure_aggregation": fed.secagg,
        "time_s": {**timings, "total_s": time.perf_counter() - t0},
        "peak_memory": peak_memory_mb(cfg.device),
        "files": {"final_mask": "final_mask.safetensors", "calibration": "calibration.pt",
                  **({"client_masks": "client_masks.safetensors"} if cfg.save_client_masks else {})},
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def achieved_sparsity_of_masks(masks: dict[str, torch.Tensor]) -> dict:
    per_layer: dict[str, list[int]] = {}
    for name, mask in masks.items():
        layer = ".".join(name.split(".")[:2])
        acc = per_layer.setdefault(layer, [0, 0])
        acc[0] += int(mask.sum())
        acc[1] += mask.numel()
    total = [sum(v[0] for v in per_layer.values()), sum(v[1] for v in per_layer.values())]
    return {"overall": total[0] / total[1], "per_layer": {k: v[0] / v[1] for k, v in per_layer.items()}}
