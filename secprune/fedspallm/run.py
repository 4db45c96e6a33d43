"""`secprune prune --algorithm fedspallm`: FedSpaLLM rounds -> baselines -> evaluation, on the shared schema.

Writes into the run's temporary folder (renamed to ``--out`` by :func:`secprune.run.run_prune`):
``final_mask.safetensors`` (the global mask, keyed by the model's parameter names),
``global_weights.safetensors`` (the kept values of every aggregated matrix, float32, in row-major mask
order, keyed by parameter name; ``secprune export`` turns both into a Hugging Face model folder), and the
summary fields of docs/outputs.md (``local-only`` is the paper's "standalone"); per-round logs go to log.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from secprune import log, summary
from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.evaluate import evaluate_model
from secprune.fedspallm.baselines import random_masks, standalone_model
from secprune.fedspallm.driver import fedspallm_prune, spec_from_config
from secprune.fedspallm.sampling import schedule
from secprune.model import decoder_layers, param_names
from secprune.run_common import common_summary, mean_over_clients, save_final_mask, secagg_options


def run_fedspallm(cfg: PruneConfig, prep, tmp: Path, partial: Path, *, progress: bool = True) -> tuple[dict, dict]:
    torch.manual_seed(cfg.seed)
    model, calib, evals = prep.model, prep.calib, prep.evals
    m = len(calib.parts)
    spec = spec_from_config(cfg)
    try:  # Corollary 4.1 feasibility, before any work
        schedule(resources=spec.resources, n_clients=m, n_layers=len(decoder_layers(model)), rounds=spec.rounds,
                 seed=spec.seed, sampling=spec.layer_sampling)
    except ValueError as exc:
        raise UsageError(f"--resources: {exc}") from None
    secure = cfg.secure_agg if cfg.secure_agg != "none" else None
    options = secagg_options(cfg)
    n_standalone = min(cfg.local_only_clients, m) if "local-only" in cfg.baselines else 0
    log.info(f"[bold]secprune[/] fedspallm/sparsegpt+OBS: {m} clients, {len(calib.windows)} windows x "
             f"{cfg.seqlen} tokens, sparsity {cfg.sparsity}, {cfg.rounds} round(s), expansion "
             f"{'on' if cfg.expansion else 'off'}, layer sampling {'on' if cfg.layer_sampling else 'off'}, "
             f"secure sum {cfg.secure_agg}", markup=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    fed = fedspallm_prune(model, calib.windows, calib.parts, spec=spec, secure=secure, secagg_options=options,
                          keep_clients=list(range(n_standalone)), desc="fedspallm", progress=progress,
                          checkpoint=partial / "fedspallm")
    timings["prune_s"] = time.perf_counter() - t
    guarantee = getattr(spec.method, "guarantee", None)  # --dp statistics: before the baselines reuse it
    guarantee = guarantee() if guarantee else None

    results: dict[str, dict] = {}
    sparsity = summary.mask_sparsity(fed.masks, target=cfg.sparsity)
    if "dense" in cfg.baselines:
        results["dense"] = evaluate_model(model, evals, label="dense", progress=progress)
    t = time.perf_counter()
    results["federated"] = evaluate_model(model, evals, weights=fed.weights, label="federated",
                                          progress=progress) | {"mask_sparsity": sparsity["mask"]}
    timings["eval_s"] = time.perf_counter() - t
    if n_standalone:
        t = time.perf_counter()
        per_client = []
        for i in range(n_standalone):
            w = fed.standalone.get(i)
            if w is None:  # layer sampling: the client never pruned its whole model in round 1
                w = standalone_model(model, calib.windows, calib.parts[i], spec=spec,
                                     checkpoint=partial / f"standalone{i}")
            # SparseGPT returns weights only: their zeros (weight_sparsity) include the checkpoint's own zeros
            per_client.append(evaluate_model(model, evals, weights=w, label=f"local {i}", progress=progress))
        results["local-only"] = mean_over_clients(per_client, list(evals))
        timings["local_only_s"] = time.perf_counter() - t
    if "random" in cfg.baselines:
        masks = random_masks(model, sparsity=cfg.sparsity, seed=cfg.seed)
        results["random"] = evaluate_model(model, evals, masks=masks, label="random", progress=progress) | {
            "mask_sparsity": summary.mask_sparsity(masks, target=cfg.sparsity)["mask"]}
    if "centralized" in cfg.baselines:
        t = time.perf_counter()
        w = standalone_model(model, calib.windows, np.arange(len(calib.windows)), spec=spec, progress=progress,
                             checkpoint=partial / "centralized")
        timings["centralized_prune_s"] = time.perf_counter() - t
        results["centralized"] = evaluate_model(model, evals, weights=w, label="centralized", progress=progress)

    save_final_mask(model, fed.masks, tmp)
    names = param_names(model)
    save_file({names[n]: fed.weights[n][~fed.masks[n]].contiguous().cpu() for n in fed.masks},
              str(tmp / "global_weights.safetensors"), metadata={"format": "secprune-fedspallm-kept-values-v1"})
    comm, comm_log = summary.fedspallm_communication(fed.communication, n_clients=m)
    sec, sec_log = summary.secagg_parts(fed.secagg, backend=cfg.secure_agg)
    summ = common_summary(cfg, prep) | {
        "results": results, "sparsity": sparsity, "communication": comm, "secure_aggregation": sec,
        "fedspallm": {"rounds": cfg.rounds, "expansion": cfg.expansion, "layer_sampling": cfg.layer_sampling,
                      "sparsity_intersection": [r["sparsity_intersection"] for r in fed.rounds],
                      "expansion_k_total": [r["expansion_k_total"] for r in fed.rounds],
                      "expansion_tie_decided_total": [r["expansion_tie_decided_total"] for r in fed.rounds]},
        "time_s": timings, **({"differential_privacy": guarantee} if guarantee else {}),
        "files": {"final_mask": "final_mask.safetensors", "global_weights": "global_weights.safetensors",
                  "summary": "summary.json", "log": "log.json"}}
    details = {"communication": comm_log, "secure_aggregation": sec_log, "fedspallm_rounds": fed.rounds,
               "schedule": fed.schedule if cfg.layer_sampling else "every client prunes every layer"}
    return summ, details
