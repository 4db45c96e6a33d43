"""``summary.json`` and ``log.json``: one versioned schema for both algorithms (documented in docs/outputs.md).

The summary is small and holds what a reader compares across runs (perplexities, sparsity, bytes, time);
per-round and per-sum detail goes to ``log.json``. Neither holds any client's text, token ids or
statistics: only counts, sizes and the server's outputs.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from secprune.model import decoder_layers, param_names, weight_inventory
from secprune.outdir import atomic_write

SCHEMA = "secprune.summary/1"
LOG_SCHEMA = "secprune.log/1"


def model_info(model, name: str) -> dict:
    """The model and what of it is pruned: ``pruned`` by kind of matrix, ``not_pruned`` by reason
    (:func:`secprune.model.weight_inventory`)."""
    inv = weight_inventory(model)
    return {"name": name, "class": type(model).__name__, "decoder_layers": len(decoder_layers(model)),
            "prunable_matrices": inv["pruned"]["matrices"], "prunable_parameters": inv["pruned"]["parameters"],
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "example_parameter": next(iter(param_names(model).values())),
            "pruned": inv["pruned"]["by_kind"], "not_pruned": inv["not_pruned"]} | _builtin_info(name)


def _builtin_info(name: str) -> dict:
    """For a built-in model: what its weights are (every table must say they were 4-bit) and their source."""
    from secprune.models_registry import MODELS

    m = MODELS.get(name)
    return {} if m is None else {"title": m.title, "weights": m.weights, "gguf_sha256": m.sha256}


def mask_sparsity(masks: dict[str, torch.Tensor], *, target: float) -> dict:
    """Fraction of entries the masks prune (True = pruned): overall and per decoder layer."""
    per_layer: dict[str, list[int]] = {}
    for name, mask in masks.items():
        acc = per_layer.setdefault(".".join(name.split(".")[:2]), [0, 0])
        acc[0] += int(mask.sum())
        acc[1] += mask.numel()
    pruned, total = sum(v[0] for v in per_layer.values()), sum(v[1] for v in per_layer.values())
    return {"target": target, "mask": pruned / total, "per_layer": {k: v[0] / v[1] for k, v in per_layer.items()}}


def fedprllm_communication(comm: dict) -> tuple[dict, dict]:
    """(summary part, log part) of :func:`secprune.fedprllm.comm.mask_communication`."""
    rounds = comm["per_round"]
    return ({"rounds": comm["rounds"],
             "upload_bytes_per_client": sum(r["upload_bytes"] for r in rounds),
             "download_bytes_per_client": sum(r["download_bytes"] for r in rounds),
             "total_bytes": comm["total_bytes"], "mask_entries_per_client": comm["per_client_entries"]},
            {"per_round": rounds})


def fedspallm_communication(comm: dict, *, n_clients: int) -> tuple[dict, dict]:
    """(summary part, log part) of :meth:`secprune.fedspallm.comm.CommLog.summary`."""
    down = comm["total_download_bytes"] + comm["final_download_bytes_total"]
    return ({"rounds": len(comm["rounds"]),
             "upload_bytes_per_client": comm["total_upload_bytes"] / n_clients,
             "download_bytes_per_client": down / n_clients,
             "total_bytes": comm["total_upload_bytes"] + down,
             "secure_upload_bytes_per_client": comm["total_secure_upload_bytes"] / n_clients,
             "final_download_bytes_per_client": comm["final_download_bytes_per_client"],
             "value_bytes": comm["value_bytes"], "dense_model_bytes": comm["dense_model_bytes"]},
            {"per_round": comm["rounds"]})


def secagg_parts(stats: dict, *, backend: str) -> tuple[dict, dict]:
    """(summary part, log part) of a summer's ``stats()`` or FedSpaLLM's per-summer list."""
    if "summers" in stats:  # FedSpaLLM: one summer per (participants, kind)
        summers = stats["summers"]
        extra = {k: stats[k] for k in ("fixed_point_bits", "max_abs_error", "max_abs_error_after_masking",
                                       "mask_flips", "clipped_entries", "clip_factor") if k in stats}
        client_bits = [s["client_sent_bits_per_entry"] for s in summers]
        return ({"backend": backend, "sessions": int(sum(s["rounds"] for s in summers)),
                 "total_bytes": int(stats["total_bytes"]),
                 "plaintext_packed_bytes": int(sum(s["plaintext_packed_bytes"] for s in summers)),
                 "client_sent_bits_per_entry": max(client_bits, default=0.0), **extra},
                {"summers": summers, "error_bound_note": stats.get("error_bound_note")})
    if "rounds" not in stats:  # no summer ran (FedSpaLLM's float aggregation)
        return {"backend": backend, "sessions": 0, "total_bytes": 0}, {}
    return ({"backend": backend, "sessions": stats["rounds"], "total_bytes": stats["total_bytes"],
             "plaintext_packed_bytes": stats["plaintext_packed_bytes"], "entries": stats["entries"],
             "client_sent_bits_per_entry": stats["client_sent_bits_per_entry"]},
            {"sent": stats["sent"], "received": stats["received"], "per_session": stats.get("per_round", {})})


def peak_memory_mb(device: str) -> dict:
    out = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def write(folder: Path, summary: dict, log: dict) -> None:
    from secprune import __version__

    head = {"schema": SCHEMA, "secprune_version": __version__}
    atomic_write(folder / "summary.json", json.dumps(head | summary, indent=1, default=float))
    atomic_write(folder / "log.json", json.dumps({"schema": LOG_SCHEMA} | log, indent=1, default=float))



def load(run_dir: Path, *, flag: str = "--run") -> dict:
    """A run's summary, refusing folders that are not a secprune prune output of this schema."""
    from secprune.errors import UsageError

    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise UsageError(f"{flag}: {run_dir} is not a `secprune prune` output folder (no summary.json)")
    summary = json.loads(path.read_text())
    if summary.get("schema") != SCHEMA:
        raise UsageError(f"{flag}: {run_dir} was written by another secprune version (summary schema "
                         f"{summary.get('schema')!r}, expected {SCHEMA!r}); rerun `secprune prune`")
    return summary
