"""Key derivations, MACs, commitments and the byte strings parties sign (Bonawitz et al., CCS 2017, Sec. 4).

Every derivation is bound to the 32-byte session digest (the hash of the session configuration) and, where
it matters, to an epoch and to the ordered pair of client ids, so that no key, mask or signature of one
session, epoch or pair is valid in another.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secprune.secagg.prg import derive_key

__all__ = ["AEADS", "MAC_BYTES", "COMMIT_BYTES", "KIND_SELF", "KIND_KEY", "public_bytes", "mask_secret_key",
           "self_mask_key", "pair_mask_key", "share_key", "mac_key", "mac", "mac_ok", "share_commitment",
           "seed_commitment", "graph_commitment", "graph_seed", "advertise_message",
           "ack_message", "survivors_message", "aead_encrypt", "aead_decrypt"]

AEADS = ("aes-gcm", "chacha20-poly1305")
MAC_BYTES = 16
COMMIT_BYTES = 16
KIND_SELF, KIND_KEY = 0, 1  # share of b_u (self-mask seed) / of s_u (mask key seed)
_LABEL = b"secprune/secagg/"


def _pair(u: int, v: int) -> bytes:
    return struct.pack(">II", min(u, v), max(u, v))


def public_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(sk: X25519PrivateKey, pk: bytes) -> bytes:
    return sk.exchange(X25519PublicKey.from_public_bytes(pk))


def mask_secret_key(seed: bytes, *, session: bytes, epoch: int) -> X25519PrivateKey:
    """s_u^SK of one epoch, derived from its 16-byte seed (the seed is what is Shamir-shared)."""
    return X25519PrivateKey.from_private_bytes(
        derive_key(seed, info=_LABEL + b"mask-sk" + session + struct.pack(">I", epoch)))


def self_mask_key(seed: bytes, *, session: bytes, epoch: int) -> bytes:
    """PRG key of the self mask PRG(b_u) of one epoch."""
    return derive_key(seed, info=_LABEL + b"self-mask" + session + struct.pack(">I", epoch))


def pair_mask_key(sk: X25519PrivateKey, pk: bytes, *, u: int, v: int, session: bytes, epoch: int) -> bytes:
    """PRG key of the pairwise mask s_uv = KA.agree(s_u^SK, s_v^PK) of one epoch (same for u and v)."""
    return derive_key(_dh(sk, pk), info=_LABEL + b"pairwise-mask" + session + struct.pack(">I", epoch) + _pair(u, v))


def share_key(esk: X25519PrivateKey | bytes, pk: bytes, *, dealer: int, holder: int, session: bytes) -> bytes:
    """AEAD key of the shares ``dealer`` sends ``holder``: KA.agree of the dealer's ephemeral key (one per SHARE
    message, kept by the dealer so that it can open that one message if the holder complains) with the holder's
    advertised c^PK; either end derives it (the holder from c^SK and the ephemeral public key)."""
    if isinstance(esk, bytes):
        esk = X25519PrivateKey.from_private_bytes(esk)
    return derive_key(_dh(esk, pk), info=_LABEL + b"share-enc" + session + struct.pack(">II", dealer, holder))


def mac_key(sk: X25519PrivateKey, pk: bytes, *, client: int, session: bytes) -> bytes:
    """Key shared by client u (c_u^SK) and the server (its session key), authenticating u's uploads."""
    return derive_key(_dh(sk, pk), info=_LABEL + b"client-server-mac" + session + struct.pack(">I", client))


def mac(key: bytes, *, position: bytes, data: bytes) -> bytes:
    """Poly1305 tag of ``data`` under a one-time key derived from ``key`` and the message's unique
    ``position`` (its header, epoch, matrix and offset): a party never sends two messages at one position."""
    return Poly1305.generate_tag(derive_key(key, info=_LABEL + b"mac" + position), data)


def mac_ok(key: bytes, *, position: bytes, data: bytes, tag: bytes) -> bool:
    try:
        Poly1305.verify_tag(derive_key(key, info=_LABEL + b"mac" + position), data, tag)
    except InvalidSignature:
        return False
    return True


def share_commitment(share: bytes, *, session: bytes, owner: int, holder: int, epoch: int, kind: int) -> bytes:
    """Commitment to one share: the dealer publishes it, the holder and the server check shares against it."""
    head = _LABEL + b"share-commit" + session + struct.pack(">IIIB", owner, holder, epoch, kind)
    return hashlib.sha256(head + share).digest()[:COMMIT_BYTES]


def seed_commitment(seed: bytes, *, session: bytes, owner: int, epoch: int) -> bytes:
    """Commitment to b_u of one epoch, signed in u's advertisement; checks the server's reconstruction."""
    return hashlib.sha256(_LABEL + b"seed-commit" + session + struct.pack(">II", owner, epoch) + seed).digest()


def graph_commitment(nonce: bytes, *, session: bytes, client: int) -> bytes:
    """Commitment to client u's graph nonce r_u, signed in its advertisement before any nonce is revealed."""
    return hashlib.sha256(_LABEL + b"graph-commit" + session + struct.pack(">I", client) + nonce).digest()


def graph_seed(reveals: dict[int, bytes], *, session: bytes) -> bytes:
    """Seed of the neighbour graph: the hash of every committed member's revealed nonce (no single party chooses
    it, and the member set was fixed, signed, before any nonce was revealed)."""
    body = b"".join(struct.pack(">I", u) + reveals[u] for u in sorted(reveals))
    return hashlib.sha256(_LABEL + b"graph-seed" + session + body).digest()


def advertise_message(keys_hash: bytes, commit: bytes, *, session: bytes, client: int) -> bytes:
    """What client u signs when it advertises its keys (Bonawitz et al.: sigma_u = SIG.sign(d_u^SK, c || s)):
    SHA-256 of its keys and its graph commitment, so the commitment can be checked without the keys."""
    return _LABEL + b"advertise" + session + struct.pack(">I", client) + keys_hash + commit


def ack_message(body: bytes, *, session: bytes, client: int) -> bytes:
    """What holder u signs when it acknowledges its shares (its complaints, with the SHARE messages in question)."""
    return _LABEL + b"ack" + session + struct.pack(">I", client) + hashlib.sha256(body).digest()


def survivors_message(survivors: list[int], *, session: bytes, epoch: int) -> bytes:
    """What a client signs in the consistency check: the survivor set U3 of one epoch."""
    ids = b"".join(struct.pack(">I", u) for u in survivors)
    return _LABEL + b"survivors" + session + struct.pack(">I", epoch) + hashlib.sha256(ids).digest()


def _aead(name: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if name == "aes-gcm" else ChaCha20Poly1305(key)


def aead_encrypt(name: str, key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return _aead(name, key).encrypt(nonce, plaintext, ad)


def aead_decrypt(name: str, key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """The plaintext, or None if authentication fails."""
    try:
        return _aead(name, key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        return None
