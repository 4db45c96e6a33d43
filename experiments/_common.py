"""Helpers shared by experiment scripts: a JSON result cache so long sweeps resume where they stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path


class ResultCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def save_figure(fig, out: str | Path, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG whole or not at all (to a temporary name, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(out)
    return out
