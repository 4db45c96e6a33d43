"""Messages for people go to stderr; results go to stdout as JSON. ``--quiet`` leaves only errors."""

from __future__ import annotations

import logging
import warnings

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, highlight=False, soft_wrap=True)
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence info, warnings and progress bars (ours, transformers', Python's); errors still print."""
    global _quiet
    _quiet = quiet
    if quiet:
        warnings.filterwarnings("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a core dependency
            pass


def info(msg: str, *, markup: bool = False) -> None:
    """A line for people; text is literal (paths and "[audit]" are not style tags) unless ``markup``."""
    if not _quiet:
        console.print(msg, markup=markup)


def warn(msg: str) -> None:
    if not _quiet:
        console.print(f"[bold yellow]warning:[/] {escape(msg)}")
