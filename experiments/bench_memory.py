"""Where a `secprune prune` run's memory and time go: peak resident memory and wall time per phase.

    python experiments/bench_memory.py --json mem.json -- --model smollm2-135m --clients 16 --out /tmp/m

Everything after ``--`` is passed to ``secprune prune`` (``--overwrite`` is added). A sampler thread reads
the process's resident set every 20 ms and charges it to the phase running at the time: model load and
calibration (``prepare``), the federated run (``federated``), the centralized baseline (``centralized``),
each evaluation (``eval <label>``: dense, federated, centralized, local i) and what remains (``other``).
Prints one line per phase (peak RSS in MB, seconds) and the run's overall peak. On Linux the resident set is
also split, per phase, into its anonymous part (tensors, the allocator's heap) and its file-backed part: the
model's weights are memory-mapped from the safetensors cache, so they count as file pages (clean page cache
the kernel can drop and read again), and only the anonymous part is what the run itself allocates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import contextmanager

import psutil


def resident_mb(proc: psutil.Process) -> dict[str, float]:
    """The resident set in MB, with its anonymous and file-backed parts where /proc says them (Linux)."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssAnon", "RssFile")))
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "anon": int(fields["RssAnon"].split()[0]) / 1024,
                "file": int(fields["RssFile"].split()[0]) / 1024}
    except (OSError, KeyError):
        return {"rss": proc.memory_info().rss / 2**20}


class Phases:
    """Peak RSS (and its anonymous / file-backed parts) and time per named phase, from a sampling thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.current = "other"
        self.peak: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}  # phase -> peak anonymous / file-backed MB (each on its own)
        self.seconds: dict[str, float] = {}
        self.proc = psutil.Process(os.getpid())
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            now, phase = resident_mb(self.proc), self.current
            self.peak[phase] = max(self.peak.get(phase, 0.0), now.pop("rss"))
            parts = self.parts.setdefault(phase, {})
            for k, v in now.items():
                parts[k] = max(parts.get(k, 0.0), v)
            time.sleep(self.interval)

    @contextmanager
    def phase(self, name: str):
        before, t = self.current, time.perf_counter()
        self.current = name
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.current = before


def instrument(phases: Phases) -> None:
    """Wrap the pipeline's steps (those this secprune version has) so that each runs as a phase."""
    from secprune import run
    from secprune.fedprllm import run as fedprllm_run

    def wrap(module, name: str, label=None) -> None:
        fn = getattr(module, name, None)
        if fn is None:
            return

        def wrapped(*a, **kw):
            with phases.phase(label(kw) if label else name):
                return fn(*a, **kw)

        setattr(module, name, wrapped)

    wrap(run, "prepare")
    wrap(fedprllm_run, "federated_prune", lambda kw: "centralized" if kw.get("desc") == "centralized"
         else f"federated_prune {kw.get('desc', '')}")
    wrap(fedprllm_run, "local_prune", lambda kw: f"local_prune {kw.get('desc', '')}")
    wrap(fedprllm_run, "evaluate_model", lambda kw: f"eval {kw.get('label', '')}")


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the per-phase numbers here")
    args = ap.parse_args(argv[:split])
    phases = Phases()
    instrument(phases)
    from secprune.cli import main as cli

    phases.thread.start()
    t = time.perf_counter()
    rc = cli(["prune", *argv[split + 1:], "--overwrite", "--quiet"])
    total = time.perf_counter() - t
    phases.stop.set()
    phases.thread.join()
    import resource

    report = {"rc": rc, "total_s": total, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "phases": {k: {"peak_rss_mb": round(v, 1), "seconds": round(phases.seconds.get(k, 0.0), 1),
                             **{f"peak_{part}_mb": round(mb, 1) for part, mb in phases.parts.get(k, {}).items()}}
                         for k, v in phases.peak.items()}}
    for k, v in report["phases"].items():
        split = f" (anon {v['peak_anon_mb']:8.1f}, file {v['peak_file_mb']:8.1f})" if "peak_anon_mb" in v else ""
        print(f"{k:32s} peak {v['peak_rss_mb']:8.1f} MB{split}  {v['seconds']:8.1f} s", file=sys.stderr)
    print(json.dumps(report, indent=1), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
