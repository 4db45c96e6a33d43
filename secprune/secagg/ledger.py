"""A client's ledger: every input goes into at most one sum that can complete, across sessions, rounds and runs.

Two sums that share all inputs but one differ by that input: a server that gets sum(all) and sum(all but
v), in two sessions, two epochs or two HE rounds, has v's vector exactly, however well each sum is protected.
So a client refuses to release the same vector twice.  An input is identified by its content (a digest of
its values, independent of dtype, chunking and every session parameter, so neither a new session, a renamed
or aliased matrix, another epoch layout nor a new run id makes it look new), keyed with a secret of the
ledger so that a stray digest cannot be used to test a guess.  All-zero vectors are exempt: they are the
placeholders of clients that did not sample a layer (FedSpaLLM) and carry nothing of a client's data.

**When an input is spent.** At upload, before its first byte leaves the client, for both backends.  In the
pairwise protocol the server can unmask an upload without its owner's help: t of the owner's share holders
sign the survivor set and reveal shares of its self mask.  So "spent once the owner answers an unmask
request" would not do: a server that never asks the owner (and some other uploaders) to unmask can complete
the first sum with the other holders' shares and then ask them again, and the two sums differ by a signed
combination of a few clients' vectors, which leaks their 0/1 entries wherever the combination is +-1
(docs/secagg.md; ``tests/test_secagg_ledger.py`` runs this attack).  A session that aborts before the upload
spends nothing, and a retry uses fresh masks in a new session; an input that was uploaded stays spent even if
the session then aborted, since the client cannot know that its upload can never be unmasked.

**Graph draws.** A sparse neighbour graph is drawn from nonces the clients commit to and reveal
(:mod:`secprune.secagg.pairwise_client`), so the server cannot choose it, but it can abort a session whose
graph it dislikes and start another.  The ledger counts the sessions whose graph this client helped draw and
that never reached its upload; past ``redraws`` of them it refuses to reveal again, which bounds the graphs a
server can try (the bound enters the parameters, :mod:`secprune.secagg.params`).

The ledger lives in the client's own state (a Flower node keeps it, owner-only, in its state folder, outside
any run's folder), never with the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from secprune.secagg.errors import ProtocolError

__all__ = ["Ledger", "content_digest", "BLOCK"]

FORMAT = "secprune-secagg-ledger/1"
BLOCK = 1 << 16  # entries hashed per block: a client-side constant, independent of any session parameter
_LABEL = b"secprune/secagg/input"


def content_digest(vector, *, max_value: int | None = None, who: str = "input") -> bytes | None:
    """SHA-256 of a non-negative integer vector's values (None for an all-zero vector), read block by block.

    Values are hashed block by block in the smallest unsigned type that holds the block's maximum, so the
    digest depends on the values only (not on the dtype they come in).  With ``max_value``, entries outside
    [0, max_value] raise ``ValueError`` (the client's range check, done in the same pass).
    """
    shape = getattr(vector, "shape", None)  # an array, or a lazily sliced source with .shape
    v = vector if shape is not None else np.asarray(vector)
    shape = tuple(v.shape)
    if len(shape) != 1:
        raise ValueError(f"{who}: expected a flat vector, got shape {shape}")
    h = hashlib.sha256(_LABEL + shape[0].to_bytes(8, "big"))
    nonzero = False
    for start in range(0, shape[0], BLOCK):
        part = np.asarray(v[start:start + BLOCK])
        low, top = int(part.min()), int(part.max())
        if low < 0 or (max_value is not None and top > max_value):
            raise ValueError(f"{who}: entries must lie in [0, {max_value}]")
        if top == 0:
            h.update(b"z" + part.size.to_bytes(8, "big"))
            continue
        nonzero = True
        dtype = np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.uint32 if top < 1 << 32 \
            else np.uint64
        h.update(np.dtype(dtype).char.encode())
        h.update(memoryview(np.ascontiguousarray(part, dtype=np.dtype(dtype).newbyteorder("<"))).cast("B"))
    return h.digest() if nonzero else None


class Ledger:
    """One client's spent inputs and pending graph draws; persisted to ``path`` (owner-only) when given."""

    def __init__(self, path: str | Path | None = None, *, redraws: int = 16) -> None:
        self.path = Path(path) if path is not None else None
        self.redraws = redraws
        self._key = os.urandom(32)
        self._spent: set[str] = set()
        self._draws: set[str] = set()  # sessions whose graph was drawn and whose upload did not happen
        if self.path is not None and self.path.exists():
            self._load()

    # -- persistence ---------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            self._key = bytes.fromhex(data["key"])
            self._spent = set(data["spent"])
            self._draws = set(data["draws"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # never start afresh silently: an empty ledger would release spent inputs again
            raise ProtocolError(f"ledger {self.path}: unreadable ({exc}); refusing to release inputs (move it "
                                f"aside only if this client's earlier uploads no longer matter)") from None

    def _save(self) -> None:
        if self.path is None:
            return
        from secprune.outdir import open_private

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        data = {"format": FORMAT, "key": self._key.hex(), "spent": sorted(self._spent), "draws": sorted(self._draws)}
        try:
            with open_private(tmp) as f:
                f.write(json.dumps(data).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    # -- inputs ----------------------------------------------------------------------------------------------
    def _entry(self, digest: bytes) -> str:
        return hmac.new(self._key, digest, hashlib.sha256).hexdigest()

    def spend(self, inputs: Iterable[tuple[str, bytes | None]], *, who: str) -> None:
        """Record ``(name, content digest)`` pairs as released, all or none; raises :class:`ProtocolError` if
        one of them was released before (or appears twice) and records nothing then."""
        fresh: dict[str, str] = {}
        for name, digest in inputs:
            if digest is None:
                continue  # an all-zero placeholder
            entry = self._entry(digest)
            if entry in self._spent or entry in fresh.values():
                raise ProtocolError(f"{who}: the input {name} was already released into another sum (or is asked "
                                    f"for twice); a second sum of the same input would reveal differences of "
                                    f"inputs; refused")
            fresh[name] = entry
        if fresh:
            self._spent.update(fresh.values())
            self._save()

    def spent(self, digest: bytes | None) -> bool:
        return digest is not None and self._entry(digest) in self._spent

    # -- graph draws ----------------------------------------------------------------------------------------
    def draw(self, session: bytes, *, who: str) -> None:
        """Count a session whose graph this client is about to help draw (refused past the budget)."""
        key = session.hex()
        if key in self._draws:
            raise ProtocolError(f"{who}: asked to reveal a graph nonce twice for one session; refused")
        if len(self._draws) >= self.redraws:
            raise ProtocolError(f"{who}: {len(self._draws)} sessions drew a neighbour graph and never reached this "
                                f"client's upload (the limit is {self.redraws}); a server could be trying graphs "
                                f"until one suits it; refusing to draw another (docs/secagg.md)")
        self._draws.add(key)
        self._save()

    def settle(self, session: bytes) -> None:
        """The session drawn with :meth:`draw` reached this client's upload: no longer a pending draw."""
        if session.hex() in self._draws:
            self._draws.discard(session.hex())
            self._save()

    @property
    def pending_draws(self) -> int:
        return len(self._draws)
