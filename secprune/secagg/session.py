"""Public parameters of one pairwise session: one key agreement for every matrix of a model.

A session is one setup (AdvertiseKeys, ShareKeys of Bonawitz et al., CCS 2017, Sec. 4) followed by one or
more *epochs*.  An epoch is one MaskedInputCollection + ConsistencyCheck + Unmasking over a list of
matrices: every matrix reads its own stretch of the epoch's mask streams, addressed by offset (one-shot
FedPrLLM: one epoch holding the whole model; iterative FedPrLLM: one epoch per decoder layer).  Each
epoch has its own self-mask seed and mask key per client, all shared in the one ShareKeys round, so that
unmasking one epoch (which reveals b_u or s_u of that epoch) reveals nothing about another.

The configuration travels as bytes in the SESSION message; its SHA-256 digest is bound into every signature
and key derivation, so clients shown different configurations cannot complete the session together.  It
holds no graph seed: a sparse graph is drawn from the clients' committed nonces after the session is fixed.
Matrix names are canonical (``NAME_PATTERN``: dot-separated words, no path separators, no empty, ``.`` or
``..`` parts) and appear once in the whole layout, so no two epochs (and no two spellings) can name one input.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from functools import cached_property

from secprune.secagg.crypto import AEADS
from secprune.secagg.errors import ProtocolError
from secprune.secagg.messages import Reader
from secprune.secagg.params import Threat, check_pairwise
from secprune.secagg.prg import CIPHERS
from secprune.secagg.ring import ring_bits

__all__ = ["SessionConfig", "Layout", "MAX_CHUNK", "NAME_PATTERN", "check_name"]

Layout = tuple[tuple[tuple[str, int], ...], ...]  # epochs -> matrices (name, entries)
MAX_CHUNK = 1 << 28
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_HEAD = struct.Struct(">IBQIIIBBI32s32s16sI")


def check_name(name: object, *, who: str = "matrix name") -> str:
    """``name`` if it is a canonical matrix name (at most 255 characters of ``NAME_PATTERN``), else ValueError."""
    if not isinstance(name, str) or len(name) > 255 or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{who} {name!r}: expected dot-separated words of letters, digits, '_' or '-' "
                         f"(no '/', no empty, '.' or '..' parts), at most 255 characters")
    return name


@dataclass(frozen=True)
class SessionConfig:
    """Everything the parties of one session must agree on (sent by the server, checked by every client)."""

    n_clients: int
    bits: int
    max_value: int
    threshold: int
    degree: int  # 0 = complete graph; else an even k >= 4 (Harary graph on a ring drawn from the clients' nonces)
    min_contributors: int  # every released sum covers at least this many clients
    epochs: Layout
    server_key: bytes  # the server's X25519 session key (client -> server MACs)
    directory: bytes  # digest of the key directory every party pins
    nonce: bytes  # 16 fresh bytes chosen by the server
    cipher: str = "aes-ctr"
    aead: str = "aes-gcm"
    chunk_entries: int = 1 << 22  # entries per MASKED message

    def encode(self) -> bytes:
        head = _HEAD.pack(self.n_clients, self.bits, self.max_value, self.threshold, self.degree,
                          self.min_contributors, CIPHERS.index(self.cipher), AEADS.index(self.aead), self.chunk_entries,
                          self.server_key, self.directory, self.nonce, len(self.epochs))
        body = []
        for matrices in self.epochs:
            body.append(struct.pack(">I", len(matrices)))
            for name, length in matrices:
                raw = name.encode()
                body.append(struct.pack(">H", len(raw)) + raw + struct.pack(">Q", length))
        return head + b"".join(body)

    @classmethod
    def decode(cls, data: bytes) -> SessionConfig:
        r = Reader(data)
        (n, bits, max_value, threshold, degree, contributors, cipher, aead, chunk, server_key, directory, nonce,
         count) = _HEAD.unpack(r.take(_HEAD.size))
        if cipher >= len(CIPHERS) or aead >= len(AEADS) or count > 1 << 20:
            raise ProtocolError("session: unknown cipher or AEAD, or an absurd epoch count")
        epochs = []
        for _ in range(count):
            matrices = []
            for _ in range(r.u32()):
                try:
                    name = r.take(r.u16()).decode()
                except UnicodeDecodeError:
                    raise ProtocolError("session: a matrix name is not UTF-8") from None
                matrices.append((name, r.u64()))
            epochs.append(tuple(matrices))
        r.done()
        return cls(n_clients=n, bits=bits, max_value=max_value, threshold=threshold, degree=degree,
                   min_contributors=contributors, epochs=tuple(epochs), server_key=server_key, directory=directory,
                   nonce=nonce, cipher=CIPHERS[cipher], aead=AEADS[aead], chunk_entries=chunk)

    @cached_property
    def digest(self) -> bytes:
        """32-byte session digest bound into every signature, MAC key and mask derivation."""
        return hashlib.sha256(b"secprune/secagg/session" + self.encode()).digest()

    @property
    def session_id(self) -> int:
        """The 64-bit id carried in every message header."""
        return int.from_bytes(self.digest[:8], "big")

    def validate(self, *, directory_digest: bytes, threat: Threat) -> None:
        """Refuse a configuration below the safe levels of ``threat`` (this party's own), inconsistent with the
        pinned key directory, or whose layout names an input twice or not canonically.  Raises
        :class:`ProtocolError`."""
        try:
            check_pairwise(n_clients=self.n_clients, degree=self.degree or None, threshold=self.threshold,
                           min_contributors=self.min_contributors, threat=threat)
        except ValueError as exc:
            raise ProtocolError(f"session: {exc}") from None
        if not ring_bits(n_clients=self.n_clients, max_value=self.max_value) <= self.bits <= 64:
            raise ProtocolError(f"session: a {self.bits}-bit ring cannot hold a sum of {self.n_clients} "
                                f"entries <= {self.max_value}")
        if directory_digest != self.directory:
            raise ProtocolError("session: the configuration names another key directory than the pinned one")
        if not 64 <= self.chunk_entries <= MAX_CHUNK:
            raise ProtocolError(f"session: chunk of {self.chunk_entries} entries outside 64..{MAX_CHUNK}")
        if not self.epochs:
            raise ProtocolError("session: no epoch to sum")
        seen: set[str] = set()
        for e, matrices in enumerate(self.epochs):
            for name, _ in matrices:
                try:
                    check_name(name)
                except ValueError as exc:
                    raise ProtocolError(f"session: epoch {e}: {exc}") from None
                if name in seen:
                    raise ProtocolError(f"session: the layout names {name} twice (one input, one sum)")
                seen.add(name)
        if len(self.server_key) != 32 or len(self.nonce) != 16:
            raise ProtocolError("session: bad server key or nonce")

    def matrices(self, epoch: int) -> list[tuple[str, int, int]]:
        """(name, offset in the epoch's mask stream, entries) of every matrix of ``epoch``."""
        out, offset = [], 0
        for name, length in self.epochs[epoch]:
            out.append((name, offset, length))
            offset += length
        return out

    def chunks(self, epoch: int) -> list[tuple[int, int, int, int]]:
        """Every upload chunk of ``epoch`` in order: (matrix index, offset in matrix, entries, stream offset)."""
        out = []
        for index, (_, base, length) in enumerate(self.matrices(epoch)):
            for start in range(0, max(length, 1), self.chunk_entries):  # an empty matrix: one empty chunk
                out.append((index, start, min(self.chunk_entries, length - start), base + start))
        return out
