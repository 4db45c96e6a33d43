"""`secprune prune --algorithm fedspallm`: calibration -> FedSpaLLM rounds -> baselines -> evaluation.

Writes into the run's temporary folder (renamed to ``--out`` by :func:`secprune.run.run_prune`):

* ``summary.json``: config, calibration info, perplexities (fedspallm, dense, standalone, random,
  centralized as requested by ``--baselines``; ``local-only`` is the paper's "standalone"), achieved
  sparsity, per-round logs (sparsity before/after expansion, layers per client), communication per client
  and round, secure-aggregation bytes and fixed-point error, timings and peak memory;
* ``final_mask.safetensors`` (global mask, bit-packed as :class:`~secprune.masks.MaskSet`) and
  ``global_weights.safetensors`` (the kept values of every matrix, float32, in row-major mask order);
* ``calibration.pt``: the token ids and the client split, for audits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import save_file

from secprune import calibration
from secprune.config import PruneConfig
from secprune.fedspallm.baselines import random_masks, standalone_model
from secprune.fedspallm.driver import FedSpaSpec, apply_weights, fedspallm_prune, restore_weights
from secprune.fedspallm.sampling import schedule
from secprune.masks import MaskSet
from secprune.model import UsageError, decoder_layers, load_model
from secprune.run import achieved_sparsity_of_masks, evaluate, peak_memory_mb

console = Console(stderr=True)


def evaluate_weights(model, tok, cfg: PruneConfig, weights: dict[str, torch.Tensor], label: str,
                     progress: bool = True) -> dict:
    """Perplexities of the model with ``weights`` loaded in place of the dense matrices (then restored)."""
    backup = apply_weights(model, weights)
    try:
        return evaluate(model, tok, cfg, None, None, label, progress=progress)
    finally:
        restore_weights(model, backup)


def spec_from_config(cfg: PruneConfig) -> FedSpaSpec:
    return FedSpaSpec(sparsity=cfg.sparsity, rounds=cfg.rounds, expansion=cfg.expansion,
                      layer_sampling=cfg.layer_sampling, resources=list(cfg.resources), local_group=cfg.local_group,
                      seed=cfg.seed, batch_size=cfg.batch_size, fixed_point_bits=cfg.fixed_point_bits)


def run_fedspallm(cfg: PruneConfig, tmp: Path, partial: Path, *, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok = load_model(cfg.model, device=cfg.device)
    calib = calibration.build(cfg, tok)
    m = len(calib.parts)
    spec = spec_from_config(cfg)
    try:  # Corollary 4.1 feasibility, before any work
        schedule(resources=spec.resources, n_clients=m, n_layers=len(decoder_layers(model)), rounds=spec.rounds,
                 seed=spec.seed, sampling=spec.layer_sampling)
    except ValueError as exc:
        raise UsageError(f"--resources: {exc}") from None
    secure = cfg.secure_agg if cfg.secure_agg != "none" else None
    options = {"neighbours": cfg.secagg_neighbours} if cfg.secagg_neighbours else {}
    n_standalone = min(cfg.local_only_clients, m) if "local-only" in cfg.baselines else 0
    console.print(f"[bold]secprune[/] fedspallm/sparsegpt+OBS: {m} clients, {len(calib.windows)} windows x "
                  f"{cfg.seqlen} tokens, sparsity {cfg.sparsity}, {cfg.rounds} round(s), expansion "
                  f"{'on' if cfg.expansion else 'off'}, layer sampling {'on' if cfg.layer_sampling else 'off'}, "
                  f"secure sum {cfg.secure_agg}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    fed = fedspallm_prune(model, calib.windows, calib.parts, spec=spec, secure=secure, secagg_options=options,
                          keep_clients=list(range(n_standalone)), desc="fedspallm", progress=progress,
                          checkpoint=partial / "fedspallm")
    timings["fedspallm_prune_s"] = time.perf_counter() - t

    results: dict[str, dict] = {}
    sparsity = achieved_sparsity_of_masks(fed.masks)
    if "dense" in cfg.baselines:
        results["dense"] = evaluate(model, tok, cfg, None, None, "dense", progress=progress)
    t = time.perf_counter()
    results["fedspallm"] = evaluate_weights(model, tok, cfg, fed.weights, "fedspallm", progress) | {
        "sparsity": sparsity["overall"]}
    timings["eval_s"] = time.perf_counter() - t
    if n_standalone:
        t = time.perf_counter()
        per_client = []
        for i in range(n_standalone):
            w = fed.standalone.get(i)
            if w is None:  # layer sampling: the client never pruned its whole model in round 1
                w = standalone_model(model, calib.windows, calib.parts[i], spec=spec,
                                     checkpoint=partial / f"standalone{i}")
            per_client.append(evaluate_weights(model, tok, cfg, w, f"standalone {i}", progress))
        results["standalone"] = {name: float(np.mean([r[name] for r in per_client])) for name in cfg.eval} | {
            "clients_evaluated": n_standalone, "per_client": per_client}
        timings["standalone_s"] = time.perf_counter() - t
    if "random" in cfg.baselines:
        masks = random_masks(model, sparsity=cfg.sparsity, seed=cfg.seed)
        results["random"] = evaluate(model, tok, cfg, masks, None, "random", progress=progress)
    if "centralized" in cfg.baselines:
        t = time.perf_counter()
        w = standalone_model(model, calib.windows, np.arange(len(calib.windows)), spec=spec, progress=progress,
                             checkpoint=partial / "centralized")
        timings["centralized_prune_s"] = time.perf_counter() - t
        results["centralized"] = evaluate_weights(model, tok, cfg, w, "centralized", progress)

    final = MaskSet(1)
    for name, mask in fed.masks.items():
        final.put(name, 0, mask)
    final.save(tmp / "final_mask.safetensors")
    save_file({name: fed.weights[name][~fed.masks[name]].contiguous() for name in fed.masks},
              str(tmp / "global_weights.safetensors"), metadata={"format": "secprune-fedspallm-kept-values-v1"})
    torch.save({"windows": calib.windows, "parts": calib.parts, "sources": calib.sources}, tmp / "calibration.pt")
    summary = {
        "config": cfg.to_dict(),
        "algorithm": {"name": "fedspallm", "local_method": "sparsegpt+obs", "aggregation": "l0-norm (Eq. 5)",
                      "expansion": cfg.expansion, "layer_sampling": cfg.layer_sampling, "rounds": cfg.rounds},
        "calibration": calib.info,
        "results": results,
        "sparsity": sparsity,
        "rounds": fed.rounds,
        "schedule": fed.schedule if cfg.layer_sampling else "every client prunes every layer",
        "communication": fed.communication,
        "secure_aggregation": fed.secagg,
        "time_s": {**timings, "total_s": time.perf_counter() - t0},
        "peak_memory": peak_memory_mb(cfg.device),
        "files": {"final_mask": "final_mask.safetensors", "global_weights": "global_weights.safetensors",
                  "calibration": "calibration.pt"},
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
