"""The contract every secure-summation backend fulfils.

The pruning pipeline calls ``summer.sum(key, vectors)`` once per prunable matrix (layer by layer, so
memory stays near one layer's vectors). ``vectors[i]`` is client ``i``'s flattened non-negative integer
vector (a 0/1 mask, or fixed-point weights for FedSpaLLM); the result is their exact element-wise sum as
int64. ``bytes_log`` counts real serialized bytes sent and received per party and round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ByteLog:
    """Bytes sent / received per party, per round (round = the ``key`` of one sum)."""

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rounds: int = 0
    per_round: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    current: str | None = None  # label of the round being logged

    def start_round(self, key: str) -> None:
        """Open a round; its bytes also go to ``per_round[label]`` (label = key, made unique)."""
        self.rounds += 1
        label = key if key not in self.per_round else f"{key}#{self.rounds}"
        self.per_round[label] = {"sent": defaultdict(int), "received": defaultdict(int)}
        self.current = label

    def add(self, *, sender: str, receiver: str, nbytes: int) -> None:
        self.sent[sender] += nbytes
        self.received[receiver] += nbytes
        if self.current is not None:
            self.per_round[self.current]["sent"][sender] += nbytes
            self.per_round[self.current]["received"][receiver] += nbytes

    def summary(self) -> dict:
        per_round = {k: {"sent": dict(v["sent"]), "received": dict(v["received"])}
                     for k, v in self.per_round.items()}
        return {"rounds": self.rounds, "sent": dict(self.sent), "received": dict(self.received),
                "total_bytes": int(sum(self.sent.values())), "per_round": per_round}

    def load(self, summary: dict) -> None:
        """Continue from a :meth:`summary` (a resumed run keeps counting where the interrupted one stopped)."""
        self.sent = defaultdict(int, summary["sent"])
        self.received = defaultdict(int, summary["received"])
        self.rounds = summary["rounds"]
        self.per_round = {k: {"sent": defaultdict(int, v["sent"]), "received": defaultdict(int, v["received"])}
                          for k, v in summary["per_round"].items()}


class SecureSum:
    """Base class: subclasses implement ``_sum``; ``sum`` validates inputs first."""

    name = "base"

    def __init__(self, *, n_clients: int, max_value: int = 1) -> None:
        if n_clients < 1:
            raise ValueError(f"n_clients must be >= 1, got {n_clients}")
        self.n_clients = n_clients
        self.max_value = max_value  # largest entry a client may submit (1 for masks)
        self.log = ByteLog()
        self.plaintext_bytes = 0  # what a bit-packed plaintext upload would cost, for comparison
        self.entries = 0  # entries per client summed so far (all rounds)

    def sum(self, key: str, vectors: Sequence[np.ndarray]) -> np.ndarray:
        if not isinstance(key, str):
            raise ValueError(f"key: expected a str naming the round (layer), got {type(key).__name__}")
        vectors = [np.asarray(v) for v in vectors]
        if len(vectors) != self.n_clients:
            raise ValueError(f"expected {self.n_clients} client vectors, got {len(vectors)}")
        n = vectors[0].size
        for i, v in enumerate(vectors):
            if v.ndim != 1 or v.size != n:
                raise ValueError(f"client {i}: expected a flat vector of {n} entries, got shape {v.shape}")
            if not np.issubdtype(v.dtype, np.integer) and v.dtype != np.bool_:
                raise ValueError(f"client {i}: expected an integer or bool vector, got dtype {v.dtype}")
            if v.size and (int(v.min()) < 0 or int(v.max()) > self.max_value):
                raise ValueError(f"client {i}: entries must lie in [0, {self.max_value}]")
        self.log.start_round(key)
        bits_per_entry = max(1, int(self.max_value).bit_length())
        self.plaintext_bytes += self.n_clients * ((n * bits_per_entry + 7) // 8)
        self.entries += n
        return self._sum(key, [np.asarray(v) for v in vectors])

    def _sum(self, key: str, vectors: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def accounting(self) -> dict:
        """Byte and entry counters only (no keys or protocol state), for checkpoints."""
        return {"log": self.log.summary(), "plaintext_bytes": self.plaintext_bytes, "entries": self.entries}

    def restore_accounting(self, state: dict) -> None:
        self.log.load(state["log"])
        self.plaintext_bytes, self.entries = state["plaintext_bytes"], state["entries"]

    def stats(self) -> dict:
        """Bytes per party (total and per round) from the real serialized messages, beside the plaintext size.

        ``client_sent_bits_per_entry`` is all bytes the clients sent (every protocol message), in bits per
        summed entry per client.
        """
        summary = self.log.summary()
        client_sent = sum(v for k, v in summary["sent"].items() if k.startswith("client"))
        per_entry = 8 * client_sent / (self.entries * self.n_clients) if self.entries else 0.0
        return {"backend": self.name, "plaintext_packed_bytes": int(self.plaintext_bytes),
                "entries": int(self.entries), "client_sent_bits_per_entry": per_entry, **summary}
