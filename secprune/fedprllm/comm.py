"""Communication accounting as in FedPrLLM Table 3 (entries = mask parameters; bytes when bit-packed).

One-shot: one round, each client uploads every layer's mask once. Iterative: one round per decoder
layer, each client uploads that layer's mask and downloads the global mask, so twice the entries.
"""

from __future__ import annotations


def mask_communication(*, layer_entries: list[int], n_clients: int, strategy: str) -> dict:
    total = sum(layer_entries)
    if strategy == "one-shot":
        rounds = [{"round": 0, "upload_entries": total, "download_entries": 0}]
    else:
        rounds = [{"round": i, "upload_entries": e, "download_entries": e} for i, e in enumerate(layer_entries)]
    per_client = sum(r["upload_entries"] + r["download_entries"] for r in rounds)
    for r in rounds:
        r["upload_bytes"] = (r["upload_entries"] + 7) // 8
        r["download_bytes"] = (r["download_entries"] + 7) // 8
    return {
        "strategy": strategy,
        "rounds": len(rounds),
        "per_client_entries": per_client,
        "per_client_bytes": sum(r["upload_bytes"] + r["download_bytes"] for r in rounds),
        "total_entries": per_client * n_clients,
        "total_bytes": sum(r["upload_bytes"] + r["download_bytes"] for r in rounds) * n_clients,
        "per_round": rounds,
    }
