"""Communication accounting of FedSpaLLM, per client and round (Algorithm 1 lines 6 and 13, Fig. 1).

* download (line 6): the server sends client ``i`` only its sampled layers ``L_i`` of the current global
  model: dense values while a layer has never been aggregated (round 1), afterwards a sparse layer =
  its mask (1 bit per entry) plus the kept values;
* upload (line 13): client ``i`` sends, for every layer of ``L_i``, its pruned weights ``W'_i`` as the mask
  (1 bit per entry) plus the kept values. Under secure aggregation the upload is instead what the client
  really sent in the two secure sums of Eq. 5 (``secure_upload_bytes``, from the summers' byte logs);
* ``final_download``: the final global model (mask + kept values of every layer) sent once to each client.

Values are counted at ``value_bytes`` each (4 = the fp32 weights we run; pass 2 for fp16 transfer).
"""

from __future__ import annotations

from collections import defaultdict


class CommLog:
    def __init__(self, *, n_clients: int, value_bytes: int = 4) -> None:
        self.n_clients = n_clients
        self.value_bytes = value_bytes
        self.rounds: dict[int, dict[int, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(int)))
        self.final: dict[str, int] = defaultdict(int)
        self.model_entries = 0  # prunable entries of the whole model

    def _bytes(self, *, numel: int, kept: int | None) -> tuple[int, int, int]:
        """(value entries, mask entries, bytes) of one matrix; ``kept=None`` = dense (no mask)."""
        if kept is None:
            return numel, 0, numel * self.value_bytes
        return kept, numel, kept * self.value_bytes + (numel + 7) // 8

    def download(self, *, round: int, client: int, numel: int, kept: int | None) -> None:
        v, m, b = self._bytes(numel=numel, kept=kept)
        rec = self.rounds[round][client]
        rec["download_values"] += v
        rec["download_mask_bits"] += m
        rec["download_bytes"] += b

    def upload(self, *, round: int, client: int, numel: int, kept: int) -> None:
        v, m, b = self._bytes(numel=numel, kept=kept)
        rec = self.rounds[round][client]
        rec["upload_values"] += v
        rec["upload_mask_bits"] += m
        rec["upload_bytes"] += b
        rec["layers_sampled_entries"] += numel

    def secure_upload(self, *, round: int, client: int, nbytes: int) -> None:
        self.rounds[round][client]["secure_upload_bytes"] += nbytes

    def final_download(self, *, numel: int, kept: int) -> None:
        v, m, b = self._bytes(numel=numel, kept=kept)
        self.final["values"] += v
        self.final["mask_bits"] += m
        self.final["bytes"] += b

    def state(self) -> dict:
        """Plain-dict copy (for checkpoints); :meth:`load_state` puts it back."""
        return {"rounds": {t: {i: dict(r) for i, r in c.items()} for t, c in self.rounds.items()},
                "final": dict(self.final), "model_entries": self.model_entries}

    def load_state(self, state: dict) -> None:
        for t, clients in state["rounds"].items():
            for i, rec in clients.items():
                self.rounds[t][i].update(rec)
        self.final.update(state["final"])
        self.model_entries = state["model_entries"]

    def summary(self) -> dict:
        per_round = []
        for t in sorted(self.rounds):
            clients = [{"client": i, **dict(self.rounds[t][i])} for i in sorted(self.rounds[t])]
            per_round.append({"round": t, "clients": clients,
                              "upload_bytes": sum(c.get("upload_bytes", 0) for c in clients),
                              "download_bytes": sum(c.get("download_bytes", 0) for c in clients),
                              "secure_upload_bytes": sum(c.get("secure_upload_bytes", 0) for c in clients)})
        up = sum(r["upload_bytes"] for r in per_round)
        down = sum(r["download_bytes"] for r in per_round)
        dense_round = self.model_entries * self.value_bytes  # full dense model, one direction, one client
        return {
            "value_bytes": self.value_bytes,
            "rounds": per_round,
            "total_upload_bytes": up,
            "total_download_bytes": down,
            "total_secure_upload_bytes": sum(r["secure_upload_bytes"] for r in per_round),
            "final_download_bytes_per_client": int(self.final.get("bytes", 0)),
            "final_download_bytes_total": int(self.final.get("bytes", 0)) * self.n_clients,
            "dense_model_bytes": dense_round,
            "full_model_exchange_bytes": 2 * dense_round * self.n_clients * len(per_round),
        }
