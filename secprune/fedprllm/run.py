"""`secprune prune --algorithm fedprllm`: local masks -> (secure) vote sum -> top-k -> baselines -> evaluation.

Writes into the run's temporary folder (renamed to ``--out`` by :func:`secprune.run.run_prune`):
``final_mask.safetensors``, ``vote_counts.safetensors`` with ``--scaling``, a client's masks only with
``--save-client-masks`` (owner-only, ``private/``), and the summary fields of docs/outputs.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.numpy import save_file

from secprune import log, outdir, summary
from secprune.config import PruneConfig
from secprune.evaluate import evaluate_model
from secprune.fedprllm.aggregate import LazyScales, count_dtype
from secprune.fedprllm.comm import mask_communication
from secprune.fedprllm.driver import FedResult, federated_prune, local_prune, spec_from_config
from secprune.model import param_names
from secprune.run_common import Prepared, common_summary, mean_over_clients, save_final_mask, secagg_options
from secprune.secagg import make_summer


def run_fedprllm(cfg: PruneConfig, prep: Prepared, tmp: Path, partial: Path, *, progress: bool
                  ) -> tuple[dict, dict]:
    torch.manual_seed(cfg.seed)
    model, calib, evals = prep.model, prep.calib, prep.evals
    m = len(calib.parts)
    spec, alone = spec_from_config(cfg), spec_from_config(cfg, alone=True)
    if cfg.dp_noise == "skellam":  # each client adds its noise share inside the secure sum (secprune.dp_sum)
        from secprune.dp_sum import NoisySum

        summer = NoisySum.make(cfg.secure_agg, n_clients=m, lam=cfg.dp_lambda, dropouts=cfg.dp_dropouts,
                               colluders=cfg.dp_colluders, delta=cfg.dp_delta, seed=cfg.seed, **secagg_options(cfg))
    else:
        summer = make_summer(cfg.secure_agg, n_clients=m, seed=cfg.seed, **secagg_options(cfg))
    n_local = min(cfg.local_only_clients, m) if "local-only" in cfg.baselines else 0
    keep = list(range(n_local)) if cfg.sparsegpt_update and cfg.strategy == "one-shot" else []
    log.info(f"[bold]secprune[/] fedprllm/{cfg.method}: {m} clients, {len(calib.windows)} windows x {cfg.seqlen} "
             f"tokens, sparsity {cfg.sparsity}, {cfg.strategy}, server group {cfg.server_group}, "
             f"secure sum {cfg.secure_agg}", markup=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    fed: FedResult = federated_prune(model, calib.windows, calib.parts, spec=spec, strategy=cfg.strategy,
                                     server_group=cfg.server_group, scaling=cfg.scaling, summer=summer,
                                     checkpoint=partial / "federated", keep_weights=keep, desc="clients",
                                     progress=progress, record_clients=m if cfg.save_client_masks
                                     else n_local if cfg.strategy == "one-shot" else 0, keep_counts=False)
    timings["prune_s"] = time.perf_counter() - t
    guarantee = getattr(spec.method, "guarantee", None)  # --dp statistics: before the baselines reuse it
    guarantee = guarantee() if guarantee else None
    scales = LazyScales(fed.counts, m) if cfg.scaling else None
    sparsity = summary.mask_sparsity(fed.final, target=cfg.sparsity)

    results: dict[str, dict] = {}
    if "dense" in cfg.baselines:
        results["dense"] = evaluate_model(model, evals, label="dense", progress=progress)
    t = time.perf_counter()
    results["federated"] = evaluate_model(model, evals, masks=fed.final, scales=scales, label="federated",
                                          progress=progress) | {"mask_sparsity": sparsity["mask"]}
    timings["eval_s"] = time.perf_counter() - t
    if "centralized" in cfg.baselines:  # one party holding every window: plain local pruning, no server top-k
        t = time.perf_counter()
        masks, weights = local_prune(model, calib.pooled, spec=alone, checkpoint=partial / "centralized",
                                     keep_weights=cfg.sparsegpt_update, desc="centralized", progress=progress)
        timings["centralized_prune_s"] = time.perf_counter() - t
        results["centralized"] = evaluate_model(model, evals, masks=masks, weights=weights,
                                                label="centralized", progress=progress) | {
            "mask_sparsity": summary.mask_sparsity(masks, target=cfg.sparsity)["mask"]}
    if n_local:
        per_client = []
        for i in range(n_local):
            if cfg.strategy == "one-shot":  # one-shot client masks ARE each client's stand-alone masks
                masks, weights = fed.client_masks.party(i), fed.weights.get(i)
            else:  # iterative: the client's own model, pruned alone (its masks; no server top-k)
                masks, weights = local_prune(model, calib.windows[torch.as_tensor(calib.parts[i])], spec=alone,
                                             progress=False)
            per_client.append(evaluate_model(model, evals, masks=masks, weights=weights, label=f"local {i}",
                                             progress=progress) | {
                "mask_sparsity": summary.mask_sparsity(masks, target=cfg.sparsity)["mask"]})
        results["local-only"] = mean_over_clients(per_client, list(evals))

    save_final_mask(model, fed.final, tmp)
    files = {"final_mask": "final_mask.safetensors", "summary": "summary.json", "log": "log.json"}
    names = param_names(model)
    if cfg.scaling:  # the secure sum's output, which the scale factors are computed from
        save_file({names[n]: c.numpy().astype(count_dtype(m)) for n, c in fed.counts.items()},
                  str(tmp / "vote_counts.safetensors"), metadata={"format": "secprune-vote-counts-v1",
                                                                  "clients": str(m)})
        files["vote_counts"] = "vote_counts.safetensors"
    if cfg.save_client_masks:
        path = outdir.private_dir(tmp / "private") / "client_masks.safetensors"
        with outdir.owner_only():
            fed.client_masks.save(path, names=names)
        files["client_masks"] = "private/client_masks.safetensors"
        log.warn(f"--save-client-masks: every client's own mask is kept in {cfg.out}/private/ (owner-only); "
                 "a client's mask leaks its data (see `secprune audit`)")
    comm, comm_log = summary.fedprllm_communication(
        mask_communication(layer_entries=_layer_entries(fed.final), n_clients=m, strategy=cfg.strategy))
    sec, sec_log = summary.secagg_parts(fed.secagg, backend=cfg.secure_agg)
    summ = common_summary(cfg, prep) | {
        "results": results, "sparsity": sparsity, "communication": comm, "secure_aggregation": sec,
        "time_s": timings, "files": files}
    if hasattr(summer, "privacy"):  # --dp-noise: the (epsilon, delta) accounting (docs/outputs.md)
        summ["differential_privacy"] = summer.privacy()
    if guarantee is not None:
        summ["differential_privacy"] = guarantee
    return summ, {"communication": comm_log, "secure_aggregation": sec_log}


def _layer_entries(masks: dict[str, torch.Tensor]) -> list[int]:
    entries = [0] * len({n.split(".")[1] for n in masks})
    for name, mask in masks.items():
        entries[int(name.split(".")[1])] += mask.numel()
    return entries
