"""The contract every secure-summation backend fulfils.

``summer.sum(key, vectors)`` sums one matrix: ``vectors[i]`` is client ``i``'s flattened non-negative integer
vector (a 0/1 mask, or fixed-point weights for FedSpaLLM); the result is their exact element-wise sum as
int64.  ``summer.sum_many(key, lengths, vector)`` sums many matrices in one session (one key agreement for
a whole model); ``summer.open_session(key, epochs)`` opens one session for several epochs that are summed one
after another (iterative FedPrLLM: one epoch per decoder layer).  There ``vector(i, name)`` is read lazily,
one matrix at a time, by client ``i`` itself.  ``log`` counts real serialized bytes sent and received per
party and session.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
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


VectorSource = Callable[[int, str], np.ndarray]  # (client, matrix name) -> that client's flat vector
Epochs = Sequence[tuple[str, Mapping[str, int]]]  # (epoch key, {matrix name: entries}) in summing order


def check_layout(epochs: Epochs) -> list[tuple[str, dict[str, int]]]:
    """Validate a session layout: at least one epoch, canonical matrix names (each once in the whole layout:
    one input, one sum) and non-negative int lengths."""
    from secprune.secagg.session import check_name

    out, seen = [], set()
    for key, lengths in epochs:
        if not isinstance(key, str):
            raise ValueError(f"epoch key: expected a str, got {type(key).__name__}")
        lengths = dict(lengths)
        if not lengths:
            raise ValueError(f"epoch {key!r}: no matrix to sum")
        for name, length in lengths.items():
            check_name(name, who=f"epoch {key!r}: matrix name")
            if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
                raise ValueError(f"epoch {key!r}: expected int lengths >= 0, got {name!r}: {length!r}")
            if name in seen:
                raise ValueError(f"epoch {key!r}: {name} is summed twice in one session (one input, one sum)")
            seen.add(name)
        out.append((key, {name: int(length) for name, length in lengths.items()}))
    if not out:
        raise ValueError("epochs: expected at least one epoch")
    return out


def check_vector(vector, *, length: int, max_value: int, who: str) -> np.ndarray:
    """``vector`` as an array after checking its shape, dtype and range (raises ``ValueError``)."""
    v = np.asarray(vector)
    if v.ndim != 1 or v.size != length:
        raise ValueError(f"{who}: expected a flat vector of {length} entries, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.integer) and v.dtype != np.bool_:
        raise ValueError(f"{who}: expected an integer or bool vector, got dtype {v.dtype}")
    if v.size and (int(v.min()) < 0 or int(v.max()) > max_value):
        raise ValueError(f"{who}: entries must lie in [0, {max_value}]")
    return v


class Session:
    """One session of a backend: ``sum_epoch(e, vector)`` for e = 0, 1, ... in order.

    The default implementation (plaintext and HE backends) runs ``summer._sum_matrix`` per matrix.
    """

    def __init__(self, summer: SecureSum, key: str, epochs: list[tuple[str, dict[str, int]]],
                 rules: Mapping | None = None) -> None:
        self.summer, self.key, self.epochs = summer, key, epochs
        self.rules = dict(rules or {})  # matrix name -> what a valid input is (backends that check inputs)
        self.next_epoch = 0

    def _start(self, epoch: int) -> None:
        if epoch != self.next_epoch:
            raise ValueError(f"session {self.key!r}: epoch {epoch} summed out of order (next is {self.next_epoch})")
        self.next_epoch += 1
        self.summer._account(self.epochs[epoch][1])

    def sum_epoch(self, epoch: int, vector: VectorSource) -> dict[str, np.ndarray]:
        self._start(epoch)
        s = self.summer
        out = {}
        for name, length in self.epochs[epoch][1].items():
            vectors = [check_vector(vector(i, name), length=length, max_value=s.max_value,
                                    who=f"client {i}: {name}") for i in range(s.n_clients)]
            out[name] = s._sum_matrix(name, vectors, self.rules.get(name))
        return out


class SecureSum:
    """Base class: subclasses implement ``_sum_matrix`` (one matrix) or their own :class:`Session`."""

    name = "base"
    exact = True  # the sums are the exact sums of the inputs (a noisy wrapper says otherwise)

    def __init__(self, *, n_clients: int, max_value: int = 1) -> None:
        if n_clients < 1:
            raise ValueError(f"n_clients must be >= 1, got {n_clients}")
        self.n_clients = n_clients
        self.max_value = max_value  # largest entry a client may submit (1 for masks)
        self.log = ByteLog()
        self.plaintext_bytes = 0  # what a bit-packed plaintext upload would cost, for comparison
        self.entries = 0  # entries per client summed so far (all rounds)

    def sum(self, key: str, vectors: Sequence[np.ndarray]) -> np.ndarray:
        """The exact element-wise sum of one matrix; every vector is checked before anything is sent."""
        if not isinstance(key, str):
            raise ValueError(f"key: expected a str naming the round (layer), got {type(key).__name__}")
        vectors = [np.asarray(v) for v in vectors]
        if len(vectors) != self.n_clients:
            raise ValueError(f"expected {self.n_clients} client vectors, got {len(vectors)}")
        n = vectors[0].size
        vectors = [check_vector(v, length=n, max_value=self.max_value, who=f"client {i}")
                   for i, v in enumerate(vectors)]
        return self.sum_many(key, {key: n}, lambda i, _name: vectors[i])[key]

    def sum_many(self, key: str, lengths: Mapping[str, int], vector: VectorSource) -> dict[str, np.ndarray]:
        """The sums of every matrix in ``lengths`` ({name: entries}) in one session and one epoch.

        ``vector(i, name)`` is client ``i``'s flat vector of matrix ``name``, read once, lazily.
        """
        return self.open_session(key, [(key, lengths)]).sum_epoch(0, vector)

    def open_session(self, key: str, epochs: Epochs, rules: Mapping | None = None) -> Session:
        """One session (one setup) for ``epochs`` = [(epoch key, {name: entries}), ...], summed in order.
        ``rules`` ({name: :class:`~secprune.secagg.he_validation.Rule`}) say what a valid input of a matrix is,
        for backends that check each client's input (he)."""
        if not isinstance(key, str):
            raise ValueError(f"key: expected a str naming the session, got {type(key).__name__}")
        layout = check_layout(epochs)
        self.log.start_round(key)
        session = self._session(key, layout)
        session.rules = dict(rules or {})
        return session

    def _session(self, key: str, epochs: list[tuple[str, dict[str, int]]]) -> Session:
        return Session(self, key, epochs)

    def _account(self, lengths: Mapping[str, int]) -> None:
        """Entries and plaintext-equivalent bytes of one epoch (for ``stats``)."""
        bits_per_entry = max(1, int(self.max_value).bit_length())
        for n in lengths.values():
            self.plaintext_bytes += self.n_clients * ((n * bits_per_entry + 7) // 8)
            self.entries += n

    def _sum_matrix(self, key: str, vectors: list[np.ndarray], rule=None) -> np.ndarray:
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
