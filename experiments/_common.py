"""Helpers shared by experiment scripts: a JSON result cache so long sweeps resume where they stopped, the
key format of ``fedspallm_table.py``'s cells (its plot reads them back), and whole-or-nothing figure files."""

from __future__ import annotations

import io
import json
from pathlib import Path

from secprune.outdir import atomic_write


class ResultCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        atomic_write(self.path, json.dumps(self.data, indent=2))


def fedspa_key(setting: str, method: str, *, clients: int | None = None, sparsity: float | None = None) -> str:
    """A FedSpaLLM-table cell: ``{setting}|dense``, ``{setting}|random|s{s}`` or ``{setting}|{method}|c{n}|s{s}``."""
    return "|".join([setting, method] + ([f"c{clients}"] if clients is not None else [])
                    + ([f"s{sparsity}"] if sparsity is not None else []))


def parse_fedspa_key(key: str) -> tuple[str, str, int | None, float | None]:
    """Inverse of :func:`fedspa_key`: (setting, method, clients or None, sparsity or None)."""
    setting, method, *rest = key.split("|")
    clients = next((int(p[1:]) for p in rest if p.startswith("c")), None)
    sparsity = next((float(p[1:]) for p in rest if p.startswith("s")), None)
    return setting, method, clients, sparsity


def save_figure(fig, out: str | Path, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG whole or not at all (a temporary name, then rename)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out = Path(out)
    atomic_write(out, buf.getvalue())
    return out
