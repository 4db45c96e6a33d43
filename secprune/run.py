"""`secprune prune`: calibration -> local masks -> (secure) aggregation -> global mask -> evaluation.

Every input is checked before any work (model, tokenizer, context length, test sets, client files). Outputs
go to a temporary folder renamed to ``--out`` only when the run succeeds; per-layer checkpoints live in the
owner-only ``<out>.partial/`` so an interrupted run resumes where it stopped. What lands in ``--out`` is
the server's output (global mask, counts with ``--scaling``) and numbers; a client's masks or calibration
token ids only when asked, owner-only, in ``<out>/private/``. See docs/outputs.md.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from secprune import calibration, log, outdir, summary
from secprune.aggregate import LazyScales, count_dtype
from secprune.comm import mask_communication
from secprune.config import PruneConfig
from secprune.errors import UsageError
from secprune.evaluate import build_evals, describe_evals, evaluate_model
from secprune.federated import FedResult, federated_prune, local_prune, spec_from_config
from secprune.masks import MaskSet
from secprune.model import inspect_model, load_lm, load_tokenizer, max_context, param_names
from secprune.secagg import make_summer


@dataclass
class Prepared:
    """What every run starts from, all of it checked."""

    model: torch.nn.Module
    tok: object
    calib: calibration.Calibration
    evals: dict[str, torch.Tensor]


def prepare(cfg: PruneConfig) -> Prepared:
    """Check the inputs that can be checked cheaply (model folder, context, test sets, client data), then load."""
    path, config = inspect_model(cfg.model)
    ctx = max_context(config)
    ppl = any(e != "zero-shot" for e in cfg.eval)
    for flag, n in (("--seqlen", cfg.seqlen), ("--eval-seqlen", cfg.eval_seqlen if ppl else 0)):
        if ctx is not None and n > ctx:
            raise UsageError(f"{flag} {n}: longer than the model's context ({ctx} tokens)")
    tok = load_tokenizer(path)
    evals = build_evals(cfg, tok, config)
    calib = calibration.build(cfg, tok)
    return Prepared(load_lm(path, config, device=cfg.device), tok, calib, evals)


def run_prune(cfg: PruneConfig, *, progress: bool = True) -> dict:
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA device is available")
    out = Path(cfg.out)
    outdir.check_target(out, overwrite=cfg.overwrite)
    partial = out.with_name(out.name + ".partial")
    tmp = outdir.staging(out, kind="prune")
    try:
        t0 = time.perf_counter()
        prep = prepare(cfg)
        outdir.private_dir(partial)
        if cfg.algorithm == "fedspallm":  # FedSpaLLM (docs/fedspallm.md)
            from secprune.fedspallm.run import run_fedspallm

            summ, details = run_fedspallm(cfg, prep, tmp, partial, progress=progress)
        else:
            summ, details = _run_fedprllm(cfg, prep, tmp, partial, progress=progress)
        summ["time_s"]["total_s"] = time.perf_counter() - t0
        summ["peak_memory"] = summary.peak_memory_mb(cfg.device)
        keep_private(cfg, prep, tmp, summ["files"])
        summary.write(tmp, summ, details)
        outdir.commit(tmp, out)
        shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summ


def secagg_options(cfg: PruneConfig) -> dict:
    """The backend options of the secure-aggregation flags (validated by ``PruneConfig.validate``): the threat
    as absolute counts of the whole federation (a FedSpaLLM layer's sub-federation may hold every colluder)."""
    if cfg.secure_agg == "none":
        return {}
    from secprune.secagg.params import threat

    opts: dict = {"threat": threat(cfg.clients, colluders=cfg.secagg_colluders, dropouts=cfg.secagg_dropouts,
                                   min_contributors=cfg.secagg_min_contributors)}
    if cfg.secagg_threshold is not None:
        opts["threshold"] = cfg.secagg_threshold
    if cfg.secure_agg == "he":
        opts["validate"] = cfg.secagg_validate
    if cfg.secure_agg == "pairwise":
        if cfg.secagg_neighbours:
            opts["neighbours"] = cfg.secagg_neighbours
        if cfg.secagg_keys:
            opts["key_dir"] = cfg.secagg_keys
    return opts


def keep_private(cfg: PruneConfig, prep: Prepared, folder: Path, files: dict) -> None:
    """``--keep-calibration``: the clients' token ids, owner-only, with a warning (never by default)."""
    if not cfg.keep_calibration:
        return
    path = outdir.private_dir(folder / "private") / "calibration.pt"
    with outdir.open_private(path) as f:
        torch.save({"windows": prep.calib.windows, "parts": prep.calib.parts, "sources": prep.calib.sources}, f)
    files["calibration"] = "private/calibration.pt"
    log.warn(f"--keep-calibration: every client's calibration token ids are kept in {cfg.out}/private/ "
             "(owner-only); they decode to the clients' text: delete them when the audit is done")


def common_summary(cfg: PruneConfig, prep: Prepared) -> dict:
    """The parts of the summary both algorithms fill the same way."""
    n, seqlen = prep.calib.windows.shape
    return {"algorithm": cfg.algorithm, "config": cfg.to_dict(), "model": summary.model_info(prep.model, cfg.model),
            "calibration": {**prep.calib.info, "windows": int(n), "seqlen": int(seqlen)},
            "evaluation": describe_evals(prep.evals)}


def save_final_mask(model, masks: dict[str, torch.Tensor], folder: Path) -> None:
    final = MaskSet(1)
    for name, mask in masks.items():
        final.put(name, 0, mask)
    final.save(folder / "final_mask.safetensors", names=param_names(model))


def mean_over_clients(per_client: list[dict], names: list[str]) -> dict:
    from secprune.zeroshot import mean_over_models

    keys = [n for n in (*names, "weight_sparsity", "mask_sparsity") if all(n in r for r in per_client)]
    return {n: (mean_over_models([r[n] for r in per_client]) if isinstance(per_client[0][n], dict)
                else float(np.mean([r[n] for r in per_client]))) for n in keys} | {
        "clients_evaluated": len(per_client), "per_client": per_client}


def _run_fedprllm(cfg: PruneConfig, prep: Prepared, tmp: Path, partial: Path, *, progress: bool
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
    return summ, {"communication": comm_log, "secure_aggregation": sec_log}


def _layer_entries(masks: dict[str, torch.Tensor]) -> list[int]:
    entries = [0] * len({n.split(".")[1] for n in masks})
    for name, mask in masks.items():
        entries[int(name.split(".")[1])] += mask.numel()
    return entries
