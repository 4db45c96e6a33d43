"""What every algorithm's run shares: the checked inputs it starts from, the secure-aggregation options, the
summary fields both algorithms fill the same way, and the final mask file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secprune import calibration, summary
from secprune.config import PruneConfig
from secprune.evaluate import describe_evals
from secprune.masks import MaskSet
from secprune.model import param_names


@dataclass
class Prepared:
    """What every run starts from, all of it checked."""

    model: torch.nn.Module
    tok: object
    calib: calibration.Calibration
    evals: dict[str, torch.Tensor]


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


def common_summary(cfg: PruneConfig, prep: Prepared) -> dict:
    """The parts of the summary both algorithms fill the same way."""
    n, seqlen = prep.calib.windows.shape
    return {"algorithm": cfg.algorithm, "config": public_config(cfg),
            "model": summary.model_info(prep.model, cfg.model),
            "calibration": {**prep.calib.info, "windows": int(n), "seqlen": int(seqlen)},
            "evaluation": describe_evals(prep.evals)}


def redacted_paths(n: int) -> list[str]:
    """What ``summary.json`` keeps of ``n`` clients' file paths."""
    return [f"<client file {i} of {n}: path not recorded>" for i in range(n)]


def public_config(cfg: PruneConfig) -> dict:
    """The run's configuration as ``summary.json`` keeps it: the clients' file paths (names and folders can say
    whose text it is) become placeholders; `secprune audit --run` asks for the files again."""
    d = cfg.to_dict()
    d["client_data"] = redacted_paths(len(d["client_data"]))
    return d


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
