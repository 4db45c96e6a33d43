"""Distributed differential privacy around any secure sum: each client adds its own Skellam share.

:class:`NoisySum` has the methods the pruning pipeline uses on a summer (``open_session``, ``sum(key, vectors)``,
``stats()``, ``accounting()``, ``restore_accounting()``, ``n_clients``) and wraps an inner secure sum
(:func:`secprune.secagg.make_summer`, any backend). For every sum:

1. each client ``i`` draws its share ``Poisson(mu) - Poisson(mu)`` per entry with its own generator,
   clipped to ``[-B, B]`` (:func:`secprune.dp.client_noise_share`; a Flower client app calls the same
   pure function in its own process), and submits ``mask + share + B`` plus one entry equal to 1
   (:func:`secprune.dp.client_submission`): non-negative integers in ``[0, 1 + 2B]``;
2. the inner secure sum, built with ``max_value = 1 + 2B``, adds the submissions; the server never sees
   a noise-free vote vector, only the sum;
3. the server removes the public offsets: the last entry counts the submissions that arrived (dropouts
   included), and ``survivors * B`` comes off every other entry (:func:`secprune.dp.server_unoffset`).

``mu = lam / (m - dropouts - colluders)`` so that the honest survivors add at least ``Sk(lam, lam)``;
:meth:`NoisySum.privacy` gives the accounting with those assumptions
(:func:`secprune.dp.distributed_skellam_accounting`). ``B`` makes a share's clip probability at most
``e^-200`` (Chernoff), which the accounting adds to delta.

Noise generators: by default every client's generator is seeded from 128 bits of OS entropy
(``secrets``), per sum; ``noise_seed`` makes runs reproducible for tests only (a predictable seed lets the
server subtract the noise).
"""

from __future__ import annotations

import secrets
import zlib

import numpy as np

from secprune import dp
from secprune.secagg.base import check_layout, check_vector


class NoisySum:
    """A secure sum whose output is the vote sum plus distributed Skellam noise (module doc)."""

    exact = False  # noisy counts: no per-group totals to check

    def __init__(self, inner, *, lam: float, dropouts: int = 0, colluders: int = 0, delta: float = 1e-5,
                 noise_seed: int | None = None, log_tail: float = -200.0) -> None:
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        m = inner.n_clients
        if dropouts < 0 or colluders < 0 or dropouts + colluders >= m:
            raise ValueError(f"dropouts ({dropouts}) + colluders ({colluders}) must be >= 0 and below the "
                             f"{m} clients")
        self.inner = inner
        self.lam, self.dropouts, self.colluders, self.delta = lam, dropouts, colluders, delta
        self.mu = lam / (m - dropouts - colluders)
        self.log_tail = log_tail
        self.bound = dp.skellam_share_bound(mu=self.mu, log_tail=log_tail)
        if inner.max_value < self.required_max_value(self.bound):
            raise ValueError(f"the inner secure sum takes entries up to {inner.max_value}; noisy submissions need "
                             f"{self.required_max_value(self.bound)} (build it with NoisySum.make)")
        self._seed = noise_seed
        self._round = 0
        self.entries = 0  # noised entries per client, all sums
        self.sums = 0
        self.clipped = 0  # share entries clipped (expected 0)
        self.min_survivors = m
        self.name = inner.name

    @staticmethod
    def required_max_value(bound: int) -> int:
        return 1 + 2 * bound

    @classmethod
    def make(cls, backend: str, *, n_clients: int, lam: float, dropouts: int = 0, colluders: int = 0,
             delta: float = 1e-5, seed: int = 0, noise_seed: int | None = None, **options) -> NoisySum:
        """Build the inner backend with the range the noisy submissions need, then wrap it."""
        from secprune.secagg import make_summer

        mu = lam / max(n_clients - dropouts - colluders, 1)
        bound = dp.skellam_share_bound(mu=mu)
        inner = make_summer(backend, n_clients=n_clients, max_value=cls.required_max_value(bound), seed=seed,
                            **options)
        return cls(inner, lam=lam, dropouts=dropouts, colluders=colluders, delta=delta, noise_seed=noise_seed)

    @property
    def n_clients(self) -> int:
        return self.inner.n_clients

    @property
    def max_value(self) -> int:
        return 1  # what the clients' own vectors (masks) may hold

    @property
    def log(self):
        return self.inner.log  # the real protocol bytes (the pipeline counts each client's upload from it)

    def _client_rng(self, i: int, label: str) -> np.random.Generator:
        if self._seed is None:
            return np.random.default_rng(secrets.randbits(128))
        return np.random.default_rng([self._seed, zlib.crc32(label.encode()), i])

    def open_session(self, key: str, epochs, rules=None) -> _NoisySession:
        """A session of the inner backend over the same matrices, each one entry longer (the survivor count).
        ``rules`` are not passed on: noisy shares are not masks (the inner sum checks their range only)."""
        layout = check_layout(epochs)
        inner = self.inner.open_session(key, [(e, {n: length + 1 for n, length in lengths.items()})
                                              for e, lengths in layout])
        return _NoisySession(self, key, layout, inner)

    def sum(self, key: str, vectors) -> np.ndarray:
        """The noisy sum of one matrix (``vectors[i]``: client ``i``'s 0/1 vector)."""
        vectors = [np.asarray(v) for v in vectors]
        if len(vectors) != self.n_clients:
            raise ValueError(f"expected {self.n_clients} client vectors, got {len(vectors)}")
        n = vectors[0].size
        return self.open_session(key, [(key, {key: n})]).sum_epoch(0, lambda i, _name: vectors[i])[key]

    def _submission(self, i: int, label: str, vector) -> np.ndarray:
        """Client ``i``'s side: its share drawn with its own generator, offset into the inner range."""
        v = check_vector(vector, length=np.asarray(vector).size, max_value=1, who=f"client {i}: {label}")
        share, clipped = dp.client_noise_share(size=v.size, mu=self.mu, bound=self.bound,
                                               rng=self._client_rng(i, label))
        self.clipped += clipped
        return dp.client_submission(vector=v, share=share, bound=self.bound)

    def _unoffset(self, total: np.ndarray) -> np.ndarray:
        noisy, survivors = dp.server_unoffset(total=np.asarray(total, dtype=np.int64), bound=self.bound)
        self._round += 1
        self.sums += 1
        self.entries += noisy.size
        self.min_survivors = min(self.min_survivors, survivors)
        return noisy

    def privacy(self) -> dict:
        """The (eps, delta) accounting of every sum so far (the ``differential_privacy`` summary section)."""
        acc = dp.distributed_skellam_accounting(lam=self.lam, n_clients=self.n_clients, dropouts=self.dropouts,
                                                colluders=self.colluders, entries=self.entries, delta=self.delta,
                                                secure=self.inner.name != "none", log_tail=self.log_tail)
        return {**acc, "sums": self.sums, "share_clip_bound": self.bound, "shares_clipped": self.clipped,
                "min_survivors": self.min_survivors, "submission_max_value": self.required_max_value(self.bound),
                "noise_generator": "OS entropy per client and sum" if self._seed is None else
                "seeded (reproducible; NOT private)"}

    def stats(self) -> dict:
        return self.inner.stats()

    def accounting(self) -> dict:
        return {"inner": self.inner.accounting(), "dp": {"entries": self.entries, "sums": self.sums,
                                                         "clipped": self.clipped, "round": self._round,
                                                         "min_survivors": self.min_survivors}}

    def restore_accounting(self, state: dict) -> None:
        self.inner.restore_accounting(state["inner"])
        d = state["dp"]
        self.entries, self.sums, self.clipped = d["entries"], d["sums"], d["clipped"]
        self._round, self.min_survivors = d["round"], d["min_survivors"]


class _NoisySession:
    """One session of :class:`NoisySum`: the inner session sums the clients' offset submissions lazily,
    matrix by matrix, as each client produces them; the server removes the public offsets."""

    def __init__(self, owner: NoisySum, key: str, epochs, inner) -> None:
        self.owner, self.key, self.epochs, self.inner = owner, key, epochs, inner

    def sum_epoch(self, epoch: int, vector) -> dict[str, np.ndarray]:
        label = f"{self.key}/{self.epochs[epoch][0]}"
        totals = self.inner.sum_epoch(epoch, lambda i, name: self.owner._submission(i, f"{label}/{name}",
                                                                                     vector(i, name)))
        return {name: self.owner._unoffset(totals[name]) for name in self.epochs[epoch][1]}
