"""Long-term identities: Ed25519 signing keys and the key directory the parties trust.

Bonawitz et al. (CCS 2017, Sec. 4, "active adversary" and Sec. 6.3) assume a PKI: every client u has a
long-term signing key d_u^SK, and every party knows every d_u^PK from a source other than the server.  Here
that source is a :class:`KeyDirectory`, a file of pinned public keys (client ids 0..n-1 and, for the HE
backend, the key holder), optionally signed by an authority other than the server.  Clients sign their
advertised keys, their view of the survivors, and (HE) their ciphertexts; receivers check the signatures
against the directory, so the server can neither substitute keys nor invent clients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secprune.outdir import write_private
from secprune.secagg.messages import KEY_HOLDER, party_name

__all__ = ["IdentityKey", "KeyDirectory", "generate_identities", "load_identities", "read_authority"]

FORMAT = "secprune-secagg-directory/1"


class IdentityKey:
    """A party's Ed25519 signing key (secret; stays inside the party's own object or file)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._sk = private
        self.public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                        serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> IdentityKey:
        """Read an unencrypted PKCS#8 PEM file written by :meth:`save`."""
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: expected an Ed25519 private key")
        return cls(key)

    def save(self, path: str | Path) -> None:
        """Write the key as PKCS#8 PEM, readable by the owner only."""
        pem = self._sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        write_private(Path(path), pem)

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message)


class KeyDirectory:
    """Pinned Ed25519 public keys per party id: clients 0..n-1, optionally the HE key holder."""

    def __init__(self, keys: Mapping[int, bytes], *, signer: bytes | None = None,
                 signature: bytes | None = None) -> None:
        self.keys = {int(k): bytes(v) for k, v in keys.items()}
        clients = sorted(k for k in self.keys if k != KEY_HOLDER)
        if clients != list(range(len(clients))):
            raise ValueError("key directory: client ids must be 0..n-1 without gaps")
        if any(len(v) != 32 for v in self.keys.values()):
            raise ValueError("key directory: every public key must be 32 raw Ed25519 bytes")
        self.n_clients = len(clients)
        self.signer, self.signature = signer, signature
        self._pk = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in self.keys.items()}

    def _body(self) -> bytes:
        return b"".join(k.to_bytes(4, "big") + v for k, v in sorted(self.keys.items()))

    @property
    def digest(self) -> bytes:
        """SHA-256 of the pinned keys; bound into every session so all parties use the same directory."""
        return hashlib.sha256(b"secprune/secagg/directory" + self._body()).digest()

    def verify(self, party: int, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``party``'s signature of ``message``."""
        key = self._pk.get(party)
        if key is None or len(signature) != 64:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def signed_by(self, authority: IdentityKey) -> KeyDirectory:
        """The same directory signed by ``authority`` (a party other than the server)."""
        return KeyDirectory(self.keys, signer=authority.public, signature=authority.sign(self.digest))

    def save(self, path: str | Path) -> None:
        data = {"format": FORMAT, "keys": {str(k): v.hex() for k, v in sorted(self.keys.items())}}
        if self.signature is not None:
            data.update(signer=self.signer.hex(), signature=self.signature.hex())
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path, *, authority: bytes | None = None) -> KeyDirectory:
        """Read a directory file; with ``authority`` (32-byte Ed25519 key) its signature must verify."""
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a secprune key directory (format {data.get('format')!r})")
        signer = bytes.fromhex(data["signer"]) if "signer" in data else None
        signature = bytes.fromhex(data["signature"]) if "signature" in data else None
        out = cls({int(k): bytes.fromhex(v) for k, v in data["keys"].items()}, signer=signer, signature=signature)
        if authority is not None:
            if signer != authority or signature is None:
                raise ValueError(f"{path}: the key directory is not signed by the expected authority")
            try:
                Ed25519PublicKey.from_public_bytes(authority).verify(signature, out.digest)
            except InvalidSignature:
                raise ValueError(f"{path}: the key directory's signature does not verify (tampered)") from None
        return out


def _key_file(folder: Path, party: int) -> Path:
    return folder / f"{party_name(party)}.pem"


AUTHORITY_KEY, AUTHORITY_PUB = "authority.pem", "authority.pub"


def generate_identities(folder: str | Path, *, n_clients: int, key_holder: bool = False,
                        authority: IdentityKey | None = None) -> KeyDirectory:
    """Create ``client{i}.pem`` (and ``keyholder.pem``) and ``directory.json`` in ``folder``; with ``authority``
    the directory is signed by it and its public key is written to ``authority.pub`` (hex)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parties = list(range(n_clients)) + ([KEY_HOLDER] if key_holder else [])
    keys = {}
    for party in parties:
        identity = IdentityKey.generate()
        identity.save(_key_file(folder, party))
        keys[party] = identity.public
    directory = KeyDirectory(keys)
    if authority is not None:
        directory = directory.signed_by(authority)
        (folder / AUTHORITY_PUB).write_text(authority.public.hex() + "\n")
    directory.save(folder / "directory.json")
    return directory


def read_authority(value: str | Path | bytes | None) -> bytes | None:
    """An authority's 32-byte Ed25519 public key from raw bytes, 64 hex digits, or a file holding them."""
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = str(value).strip()
    if len(text) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in text):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"authority {text!r}: expected 64 hex digits or a file holding them")
        text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("authority: expected a 32-byte Ed25519 public key as 64 hex digits")
    return key


def load_identities(folder: str | Path, *, authority: bytes | str | Path | None = None
                    ) -> tuple[KeyDirectory, dict[int, IdentityKey]]:
    """The directory and every private key found in ``folder``; each key must match its pinned public key.

    With ``authority`` (or an ``authority.pub`` in ``folder``) the directory's signature must verify."""
    folder = Path(folder)
    if authority is None and (folder / AUTHORITY_PUB).is_file():
        authority = folder / AUTHORITY_PUB
    directory = KeyDirectory.load(folder / "directory.json", authority=read_authority(authority))
    identities = {}
    for party in directory.keys:
        path = _key_file(folder, party)
        if path.exists():
            identities[party] = IdentityKey.load(path)
            if identities[party].public != directory.keys[party]:
                raise ValueError(f"{path}: the key does not match the directory's key for {party_name(party)}")
    return directory, identities
