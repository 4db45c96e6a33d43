"""LLaMA-7B-scale secure sum (pairwise, active-server version): per-client cost measured, then extrapolated.

A LLaMA-7B mask has 32 decoder layers x 7 matrices (q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096; down:
4096 x 11008) = 6.48e9 entries, summed in one session (one key agreement) and one epoch.  This script:

1. sets up one session for ``--clients`` clients and the server over the first layers of that layout, about
   ``--entries`` entries (default 1e9: 5 layers = 1.01e9), and times the setup;
2. streams client 0's whole masked upload (chunk by chunk, ``--chunk`` entries per message) from a lazily
   read source into the server, timing the client's side (read, range check and ledger digest, k + 1 PRG
   streams, b-bit packing, MAC) and the server's side (MAC check, unpack, add), and measuring the client's
   peak memory
   (tracemalloc peak of the upload loop; every numpy buffer is traced);
3. extrapolates time and upload linearly to 6.48e9 entries (the client's work is linear in L; its memory is
   O(chunk) and does not depend on L);
4. with ``--full`` (entries), runs a complete session of all clients on that many entries per client and checks
   the sum chunk by chunk against the plaintext sum.

The degree and threshold are derived from the threat (``--colluders``, default 1/3 of the clients: the complete
graph at 16 clients; ``--colluders 0 --neighbours 8`` is the earlier sparse configuration).
Usage: ``python experiments/bench_secagg_7b.py [--clients 16] [--entries 1e9] [--full 1e8] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secprune.secagg.identity import IdentityKey, KeyDirectory  # noqa: E402
from secprune.secagg.pairwise import run_setup  # noqa: E402
from secprune.secagg.pairwise_client import PairwiseClient  # noqa: E402
from secprune.secagg.pairwise_server import PairwiseServer  # noqa: E402
from secprune.secagg.params import pairwise_parameters, threat  # noqa: E402
from secprune.secagg.ring import ring_bits  # noqa: E402

HIDDEN, INTER, LAYERS = 4096, 11008, 32
MATRICES = (("q_proj", HIDDEN * HIDDEN), ("k_proj", HIDDEN * HIDDEN), ("v_proj", HIDDEN * HIDDEN),
            ("o_proj", HIDDEN * HIDDEN), ("gate_proj", INTER * HIDDEN), ("up_proj", INTER * HIDDEN),
            ("down_proj", HIDDEN * INTER))
LLAMA7B = LAYERS * sum(m for _, m in MATRICES)


def layout(entries: float) -> list[tuple[str, int]]:
    """The first matrices of LLaMA-7B's layout, whole layers, until at least ``entries`` entries."""
    out = []
    for layer in range(LAYERS):
        out += [(f"layers.{layer}.{name}", m) for name, m in MATRICES]
        if sum(m for _, m in out) >= entries:
            break
    return out


class Tiled:
    """A lazily read 0/1 vector: ``pattern`` rotated by ``shift`` and repeated (a distinct input per matrix);
    slices at chunk boundaries are views (no copy)."""

    def __init__(self, pattern: np.ndarray, length: int, shift: int = 0) -> None:
        pattern = np.roll(pattern, shift)
        self.pattern, self.shape, self.dtype = pattern, (length,), pattern.dtype

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop = item.start, min(item.stop, self.shape[0])
        period = self.pattern.size
        if start // period == (stop - 1) // period:
            return self.pattern[start % period: start % period + stop - start]
        return np.resize(np.roll(self.pattern, -(start % period)), stop - start)


def session(n: int, matrices: list[tuple[str, int]], *, neighbours, chunk: int, rule):
    ids = {i: IdentityKey.generate() for i in range(n)}
    directory = KeyDirectory({i: k.public for i, k in ids.items()})
    degree, t = pairwise_parameters(n_clients=n, threat=rule, neighbours=neighbours or None)
    server = PairwiseServer(directory=directory, bits=ring_bits(n_clients=n, max_value=1), max_value=1,
                            threshold=t, degree=degree, min_contributors=rule.min_contributors,
                            epochs=[tuple(matrices)], threat=rule, chunk_entries=chunk)
    clients = [PairwiseClient(i, identity=ids[i], directory=directory, threat=rule) for i in range(n)]
    t0 = time.perf_counter()
    run_setup(server, clients)
    return server, clients, time.perf_counter() - t0, degree, t


def _stream(client: PairwiseClient, sources: dict, server: PairwiseServer | None) -> tuple[float, float, int, int]:
    """(client seconds, server seconds, upload bytes, chunks) of one client's whole upload."""
    client_s = server_s = 0.0
    upload = chunks = 0
    stream = client.upload(0, lambda name: sources[name])
    while True:
        t0 = time.perf_counter()
        msg = next(stream, None)
        client_s += time.perf_counter() - t0
        if msg is None:
            return client_s, server_s, upload, chunks
        upload += len(msg)
        chunks += 1
        if server is not None:
            t0 = time.perf_counter()
            server.receive_masked(msg)
            server_s += time.perf_counter() - t0
        del msg


def per_client(args) -> dict:
    """Client 0's upload twice, in two sessions: alone under tracemalloc (its peak memory; the RSS high-water
    mark of this process grows by the client's memory only, since the idle server's sum is not touched), then
    timed with the server ingesting every chunk."""
    matrices = layout(args.entries)
    entries = sum(m for _, m in matrices)
    patterns = [np.random.default_rng(i).integers(0, 2, args.chunk).astype(np.uint8) for i in range(args.clients)]
    sources = {name: Tiled(patterns[0], m, k) for k, (name, m) in enumerate(matrices)}
    rule = threat(args.clients, colluders=args.colluders, dropouts=args.dropout_budget)
    _, clients, _, _, _ = session(args.clients, matrices, neighbours=args.neighbours, chunk=args.chunk, rule=rule)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    alone_s, _, _, _ = _stream(clients[0], sources, None)
    client_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    server, clients, setup_s, degree, t = session(args.clients, matrices, neighbours=args.neighbours, chunk=args.chunk,
                                                  rule=rule)
    client_s, server_s, upload, chunks = _stream(clients[0], sources, None if args.client_only else server)
    scale = LLAMA7B / entries
    return {"clients": args.clients, "colluders": rule.colluders, "degree": degree or args.clients - 1,
            "threshold": t, "bits": server.cfg.bits,
            "entries": entries, "matrices": len(matrices), "chunk_entries": args.chunk, "chunks": chunks,
            "setup_all_parties_s": setup_s, "client_upload_s": client_s, "client_upload_s_under_tracemalloc": alone_s,
            "client_upload_bytes": upload, "client_bits_per_entry": 8 * upload / entries,
            "client_entries_per_s": entries / client_s, "client_peak_traced_mb": client_peak / 2**20,
            "client_peak_rss_growth_mb": rss_growth, "process_peak_rss_mb": base_rss / 1024,
            "server_ingest_s_per_client": server_s if not args.client_only else None,
            "llama7b_entries": LLAMA7B, "llama7b_client_s": client_s * scale,
            "llama7b_client_upload_gb": upload * scale / 1e9,
            "llama7b_server_ingest_s_per_client": server_s * scale if not args.client_only else None}


def full(args) -> dict:
    """All clients and the server on ``args.full`` entries per client; exact sum checked chunk by chunk."""
    matrices, total = [], int(args.full)
    for k, (name, m) in enumerate(layout(total)):
        m = min(m, total - sum(x for _, x in matrices))
        if m > 0:
            matrices.append((f"{k}.{name}", m))
    n = args.clients
    rule = threat(n, colluders=args.colluders, dropouts=args.dropout_budget)
    server, clients, setup_s, _, _ = session(n, matrices, neighbours=args.neighbours, chunk=args.chunk, rule=rule)
    patterns = [np.random.default_rng(i).integers(0, 2, args.chunk).astype(np.uint8) for i in range(n)]
    t0 = time.perf_counter()
    for c in clients:
        sources = {name: Tiled(patterns[c.id], m, k) for k, (name, m) in enumerate(matrices)}
        for msg in c.upload(0, lambda name, s=sources: s[name]):
            server.receive_masked(msg)
    requests = server.close_upload()
    for i, req in requests.items():
        server.receive_survivors_signature(clients[i].sign_survivors(req))
    for i, req in server.close_consistency().items():
        server.receive_unmask_response(clients[i].unmask(req))
    sums = server.finish()
    wall = time.perf_counter() - t0
    for k, (name, m) in enumerate(matrices):
        got, expected = sums[name], np.sum([np.roll(p, k) for p in patterns], axis=0, dtype=np.int64)
        for start in range(0, m, args.chunk):
            assert np.array_equal(got[start:start + args.chunk], expected[:min(args.chunk, m - start)]), name
    return {"full_clients": n, "full_entries_per_client": total, "full_setup_s": setup_s,
            "full_upload_and_unmask_s": wall, "full_exact": True}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--entries", type=float, default=1e9, help="entries of the per-client measurement")
    ap.add_argument("--colluders", default="1/3", help="the threat: colluding clients, a count or a fraction")
    ap.add_argument("--dropout-budget", default="1/10", help="the threat: dropouts, a count or a fraction")
    ap.add_argument("--neighbours", type=int, default=0, help="force this SecAgg+ degree (0: derived)")
    ap.add_argument("--chunk", type=int, default=1 << 22, help="entries per MASKED message")
    ap.add_argument("--client-only", action="store_true", help="do not feed the chunks to the server")
    ap.add_argument("--full", type=float, default=0, help="also run all clients on this many entries each")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = {"python": platform.python_version(), **per_client(args)}
    if args.full:
        result.update(full(args))
    for key, value in result.items():
        print(f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
