"""Explicit byte formats of every protocol message.

Every message starts with a 20-byte big-endian header::

    magic "SA" (2) | version (1) | type (1) | session or round id (8) | sender id (4) | receiver id (4)

followed by a type-specific payload.  Clients are ids 0..n-1; the server is ``SERVER`` and the HE key holder
``KEY_HOLDER``.  Receivers check magic, version, type, session and receiver; each party's state machine then
accepts a message only in its own stage and only once.  Encrypted shares use the header of the forwarded
message (and the share commitments) as AEAD associated data, which binds session, sender and receiver
(Bonawitz et al., CCS 2017, Sec. 4, round "ShareKeys", where u || v is bound to each ciphertext).  One
message type per protocol stage, so each can travel as its own transport message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from secprune.secagg.errors import ProtocolError

__all__ = ["HEADER", "SERVER", "KEY_HOLDER", "MsgType", "Header", "encode", "decode", "ReplayGuard",
           "Reader", "party_name"]

MAGIC = b"SA"
VERSION = 3
HEADER = struct.Struct(">2sBBQII")
SERVER = 0xFFFFFFFF
KEY_HOLDER = 0xFFFFFFFE


class MsgType(IntEnum):
    """One type per protocol stage; payloads are documented in docs/secagg.md ("Message formats")."""

    SESSION = 1  # server -> client: the session configuration (SessionConfig.encode)
    ADVERTISE = 2  # client -> server: c_pk | E x s_pk | E x b-commitment | signature
    ROSTER = 3  # server -> client: count | count x [id | neighbour's ADVERTISE payload]
    SHARE_BUNDLE = 4  # client -> server: count | count x [len | SHARE message] | MAC
    SHARE = 5  # client -> server -> client: 2E commitments | nonce | AEAD(u | v | E x (b-share, s-share))
    MASKED = 6  # client -> server: epoch | matrix | offset | count | bits | packed chunk | MAC
    SURVIVORS = 7  # server -> client: epoch | count | ids (U3), to be signed
    SURVIVORS_SIGNATURE = 8  # client -> server: epoch | signature of (session, epoch, U3)
    UNMASK_REQUEST = 9  # server -> client: epoch | count | count x [signer id | signature]
    UNMASK_RESPONSE = 10  # client -> server: epoch | count | count x [kind | owner | share] | MAC
    COMMITS = 11  # server -> client (sparse graph): count | count x [id | keys hash | graph commitment | signature]
    REVEAL = 12  # client -> server (sparse graph): the graph nonce r_u
    SHARES_ACK = 13  # client -> server: count | count x [dealer | len | SHARE] (complaints) | signature
    OPEN_REQUEST = 14  # server -> client: count | count x [len | a holder's signed SHARES_ACK naming it]
    OPEN = 15  # client -> server: count | count x [holder | ephemeral secret key] | MAC
    HE_CONTEXT = 16  # key holder -> server -> client: TenSEAL public context | signature
    HE_CIPHERTEXTS = 17  # client -> server: c_pk | B | P | n | count | ciphertexts | signature
    HE_FORWARD = 18  # server -> key holder: one client's HE_CIPHERTEXTS message, unchanged
    HE_DECRYPT = 19  # server -> key holder: count | sender ids whose uploads were forwarded
    HE_RESULT = 20  # key holder -> server: bits | slots | packed masked slot sums
    CONFIRM = 21  # server -> client: count | ids of U2 (accepted sharers) | count | [excluded id | reason]
    HE_VERIFY = 22  # key holder -> server: client | its random draw | its share of the client's checks
    HE_DECIDE = 23  # server -> key holder: client | its share of the client's checks


def party_name(party: int) -> str:
    """Name of a party id in byte logs: ``client{i}``, ``server`` or ``keyholder``."""
    if party == SERVER:
        return "server"
    if party == KEY_HOLDER:
        return "keyholder"
    return f"client{party}"


@dataclass(frozen=True)
class Header:
    type: MsgType
    round_id: int
    sender: int
    receiver: int

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, int(self.type), self.round_id, self.sender, self.receiver)


def encode(msg_type: MsgType, *, round_id: int, sender: int, receiver: int, payload: bytes = b"") -> bytes:
    """Header followed by ``payload``."""
    return Header(msg_type, round_id, sender, receiver).pack() + payload


def decode(data: bytes, *, expect: MsgType, round_id: int | None,
           receiver: int | None = None) -> tuple[Header, bytes]:
    """Parse and check a message's header; return (header, payload).  Raises :class:`ProtocolError`.

    ``round_id`` None skips the session check (the SESSION message, whose id is the digest of its payload).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message: expected bytes, got {type(data).__name__}")
    if len(data) < HEADER.size:
        raise ProtocolError(f"message: expected at least {HEADER.size} header bytes, got {len(data)}")
    magic, version, mtype, rid, sender, recv = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("message: bad magic or version")
    if mtype != expect:
        got = MsgType(mtype).name if mtype in MsgType._value2member_map_ else str(mtype)
        raise ProtocolError(f"message: expected type {expect.name}, got {got}")
    if round_id is not None and rid != round_id:
        raise ProtocolError(f"message: from round {rid:#018x}, expected round {round_id:#018x}")
    if receiver is not None and recv != receiver:
        raise ProtocolError(f"message: addressed to {party_name(recv)}, expected {party_name(receiver)}")
    return Header(MsgType(mtype), rid, sender, recv), bytes(data[HEADER.size:])


class ReplayGuard:
    """Accept each (type, sender) at most once per round: ``check`` before processing a message, ``mark``
    once it was processed successfully (so a forged message cannot lock out the genuine one)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def check(self, header: Header) -> None:
        if (int(header.type), header.sender) in self._seen:
            raise ProtocolError(f"message: replayed {header.type.name} from {party_name(header.sender)}")

    def mark(self, header: Header) -> None:
        self.check(header)
        self._seen.add((int(header.type), header.sender))


class Reader:
    """Sequential reader of a payload that raises :class:`ProtocolError` on truncation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message: truncated payload")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"message: {len(self.data) - self.pos} unexpected trailing bytes")
