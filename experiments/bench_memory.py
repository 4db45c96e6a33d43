"""Where a `secprune prune` run's memory and time go: peak resident memory and wall time per phase.

    python experiments/bench_memory.py --json mem.json -- --model smollm2-135m --clients 16 --out /tmp/m

Everything after ``--`` is passed to ``secprune prune`` (``--overwrite`` is added). A sampler thread reads
the process's resident set every 20 ms and charges it to the phase running at the time: model load and
calibration (``prepare``), the federated run (``federated``), the centralized baseline (``centralized``),
each evaluation (``eval <label>``: dense, federated, centralized, local i) and what remains (``other``).
Prints one line per phase (peak RSS in MB, seconds) and the run's overall peak.
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


class Phases:
    """Peak RSS and time per named phase, from a sampling thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.current = "other"
        self.peak: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.proc = psutil.Process(os.getpid())
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            rss = self.proc.memory_info().rss / 2**20
            self.peak[self.current] = max(self.peak.get(self.current, 0.0), rss)
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

    def wrap(name: str, label=None) -> None:
        fn = getattr(run, name, None)
        if fn is None:
            return

        def wrapped(*a, **kw):
            with phases.phase(label(kw) if label else name):
                return fn(*a, **kw)

        setattr(run, name, wrapped)

    wrap("prepare")
    wrap("federated_prune", lambda kw: "centralized" if kw.get("desc") == "centralized" else f"federated_prune "
                                                                                             f"{kw.get('desc', '')}")
    wrap("local_prune", lambda kw: f"local_prune {kw.get('desc', '')}")
    wrap("evaluate_model", lambda kw: f"eval {kw.get('label', '')}")


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
              "phases": {k: {"peak_rss_mb": round(v, 1), "seconds": round(phases.seconds.get(k, 0.0), 1)}
                         for k, v in phases.peak.items()}}
    for k, v in report["phases"].items():
        print(f"{k:32s} peak {v['peak_rss_mb']:8.1f} MB  {v['seconds']:8.1f} s", file=sys.stderr)
    print(json.dumps(report, indent=1), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
