"""Pseudo-random masks: a 32-byte seed expanded into a uniform vector over Z_(2^b).

Bonawitz et al. (CCS 2017, Sec. 4, "PRG") expand a seed into the mask; we use the keystream of AES-256-CTR
(default) or ChaCha20 from ``cryptography`` (OpenSSL), reinterpreted as little-endian unsigned integers of
the ring dtype.  Every keystream byte is uniform, so the low ``b`` bits of each word are uniform over
Z_(2^b).  The keystream is produced in chunks into reusable buffers (``update_into``) and added or
subtracted in place with wraparound, so a client adds its self mask and k pairwise masks to one vector with
O(chunk) extra memory.  Counter blocks are addressed by offset, so chunks are independent of chunk size, and
``offset`` places a vector anywhere in the stream: one key covers every matrix of a session, each matrix (and
each upload chunk) reading its own stretch of the keystream.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["CIPHERS", "MaskPRG", "derive_key"]

CIPHERS = ("aes-ctr", "chacha20")
_CHUNK = 1 << 22  # keystream bytes per chunk (multiple of 64)
_ZEROS = bytes(0)  # shared read-only plaintext of zeros that the keystream is written over


def _grow_zeros(size: int) -> None:
    global _ZEROS
    _ZEROS = bytes(max(size, 2 * len(_ZEROS)))


def derive_key(secret: bytes, *, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret``, bound to ``info`` (and ``salt``)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


class MaskPRG:
    """Expand 32-byte keys into ring vectors; ``cipher`` is ``"aes-ctr"`` or ``"chacha20"``."""

    def __init__(self, *, cipher: str = "aes-ctr", chunk_bytes: int = _CHUNK) -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"cipher: expected one of {', '.join(CIPHERS)}, got {cipher!r}")
        if chunk_bytes < 64 or chunk_bytes % 64:
            raise ValueError(f"chunk_bytes: expected a positive multiple of 64, got {chunk_bytes}")
        self.cipher = cipher
        self.chunk_bytes = chunk_bytes
        self._out = bytearray()  # keystream buffer, grown on demand and dropped by ``release``

    def release(self) -> None:
        """Free the keystream buffer (a party holding many idle PRGs keeps no chunk-sized memory)."""
        self._out = bytearray()

    def _encryptor(self, key: bytes, byte_offset: int):
        if len(key) != 32:
            raise ValueError(f"key: expected 32 bytes, got {len(key)}")
        if self.cipher == "aes-ctr":
            counter = (byte_offset // 16).to_bytes(16, "big")
            return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
        nonce = (byte_offset // 64).to_bytes(4, "little") + bytes(12)  # RFC 7539 block counter || nonce
        return Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def _apply(self, acc: np.ndarray, key: bytes, sign: int, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset: expected >= 0, got {offset}")
        flat = acc.reshape(-1)
        item = flat.dtype.itemsize
        per_chunk = self.chunk_bytes // item
        for start in range(0, flat.size, per_chunk):
            stop = min(flat.size, start + per_chunk)
            nbytes = (stop - start) * item
            first = (offset + start) * item  # keystream byte where this piece starts
            skip = first % 64  # start at a 64-byte block boundary (AES: 4 blocks, ChaCha20: 1) and skip
            enc = self._encryptor(key, first - skip)
            if len(self._out) < nbytes + skip + 64:
                self._out = bytearray(max(nbytes + skip, min(self.chunk_bytes, 4 * (nbytes + skip))) + 128)
            if len(_ZEROS) < nbytes + skip:
                _grow_zeros(nbytes + skip)
            enc.update_into(memoryview(_ZEROS)[:nbytes + skip], self._out)
            stream = np.frombuffer(self._out, dtype=flat.dtype, count=stop - start, offset=skip)
            if sign > 0:
                np.add(flat[start:stop], stream, out=flat[start:stop])
            else:
                np.subtract(flat[start:stop], stream, out=flat[start:stop])

    def add(self, acc: np.ndarray, key: bytes, *, offset: int = 0) -> None:
        """acc += PRG(key)[offset : offset + acc.size]  (mod 2^(8 * itemsize), hence mod 2^b), in place."""
        self._apply(acc, key, +1, offset)

    def sub(self, acc: np.ndarray, key: bytes, *, offset: int = 0) -> None:
        """acc -= PRG(key)[offset : offset + acc.size], in place."""
        self._apply(acc, key, -1, offset)

    def expand(self, key: bytes, n: int, dtype: np.dtype, *, offset: int = 0) -> np.ndarray:
        """PRG(key) words ``offset .. offset + n - 1`` of ``dtype`` (not reduced mod 2^b)."""
        out = np.zeros(n, dtype)
        self.add(out, key, offset=offset)
        return out
