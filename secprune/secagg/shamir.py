"""t-of-h Shamir secret sharing (Shamir 1979) over GF(2^128), via pycryptodome.

A thin wrapper over the maintained ``Crypto.Protocol.SecretSharing.Shamir`` (which shares 16-byte secrets):
longer secrets are split into 16-byte blocks shared independently at the same x-coordinates, so a share
of a 32-byte secret is 32 bytes.  Bonawitz et al. (CCS 2017, Sec. 4) share the self-mask seed b_u and the
mask key s_u^SK this way; both are 16-byte seeds here.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

__all__ = ["BLOCK", "split", "combine"]

BLOCK = 16


def split(secret: bytes, *, threshold: int, n_shares: int) -> list[tuple[int, bytes]]:
    """Shares (x, y) for x = 1..n_shares; any ``threshold`` of them recover ``secret``."""
    if not secret or len(secret) % BLOCK:
        raise ValueError(f"secret: expected a non-empty multiple of {BLOCK} bytes, got {len(secret)}")
    if not 1 <= threshold <= n_shares:
        raise ValueError(f"threshold: expected 1 <= threshold <= n_shares={n_shares}, got {threshold}")
    if n_shares > 0xFFFF:
        raise ValueError(f"n_shares: expected at most 65535, got {n_shares}")
    blocks = [Shamir.split(threshold, n_shares, secret[i:i + BLOCK]) for i in range(0, len(secret), BLOCK)]
    return [(x, b"".join(block[x - 1][1] for block in blocks)) for x in range(1, n_shares + 1)]


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """Recover the secret from shares (x, y) (exactly ``threshold`` of them is fastest)."""
    if not shares:
        raise ValueError("shares: expected at least one share")
    size = len(shares[0][1])
    if size == 0 or size % BLOCK or any(len(y) != size for _, y in shares):
        raise ValueError(f"shares: expected equal-length shares, a multiple of {BLOCK} bytes")
    return b"".join(Shamir.combine([(x, y[i:i + BLOCK]) for x, y in shares]) for i in range(0, size, BLOCK))
