"""Message contents as plain dicts, and their Flower form (``RecordDict``).

A content dict maps names to ``bytes``, ``int``, ``float``, ``str``, ``bool``, lists of those, or numpy
arrays. Arrays travel in an ``ArrayRecord``, everything else in a ``ConfigRecord``; nothing else is sent,
so what a party can receive is exactly what these dicts hold (protocol bytes, layouts, sizes, weights the
server already knows). :func:`wire_bytes` is the serialized size Flower puts on the wire.
"""

from __future__ import annotations

import numpy as np


def to_record(content: dict):
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    arrays = {k: Array(np.ascontiguousarray(v)) for k, v in content.items() if isinstance(v, np.ndarray)}
    config = {k: v for k, v in content.items() if not isinstance(v, np.ndarray)}
    record = RecordDict()
    if config:
        record["c"] = ConfigRecord(config)
    if arrays:
        record["a"] = ArrayRecord(arrays)
    return record


def from_record(record) -> dict:
    out: dict = {}
    if "c" in record:
        out.update(dict(record["c"]))
    if "a" in record:
        out.update({k: v.numpy() for k, v in record["a"].items()})
    return out


def wire_bytes(record) -> int:
    """Bytes of the serialized content (Flower's protobuf), as it crosses the network."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(record).ByteSize()


def pack_vector(v: np.ndarray, max_value: int) -> np.ndarray:
    """A plaintext upload at its natural width: bits for masks, the smallest unsigned type otherwise."""
    v = np.asarray(v)
    if max_value == 1:
        return np.packbits(v.astype(np.uint8))
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return v.astype(dt)
    raise ValueError(f"max_value {max_value} too large")


def unpack_vector(packed: np.ndarray, *, length: int, max_value: int) -> np.ndarray:
    if max_value == 1:
        return np.unpackbits(packed, count=length).astype(np.int64)
    return packed.astype(np.int64)
