"""`secprune report`: a self-contained HTML report, its Markdown twin and a JSON file with every figure's data."""

from secprune.report.writer import SECTIONS, write_report

__all__ = ["SECTIONS", "write_report"]
