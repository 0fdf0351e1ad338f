"""One row per figure, and the three renderings of the table: console, JSON and markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HEADER = ("figure", "cupixfs", "baseline", "ratio", "target", "pass?")


@dataclass
class Row:
    """A figure's result. ``value`` is cupixfs's number, ``baseline`` what it is compared with.

    A failed measurement sets ``error``; whatever was measured before the failure is kept.
    """

    figure: str
    unit: str = ""
    value: float | None = None
    baseline: float | None = None
    baseline_unit: str = ""
    baseline_label: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    error: str | None = None
    skipped: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def cells(self, width: int | None = 60) -> tuple[str, ...]:
        if self.skipped:
            return (self.figure, f"skipped ({self.skipped})", "", "", self.target, "—")
        value = _fmt(self.value, self.unit)
        if self.error:
            message = f"error: {self.error}"
            if width is not None and len(message) > width:
                message = message[: width - 1] + "…"
            value = message if self.value is None else f"{value}; {message}"
        baseline = _fmt(self.baseline, self.baseline_unit or self.unit)
        if baseline and self.baseline_label:
            baseline += f" ({self.baseline_label})"
        ratio = "" if self.ratio is None else f"{self.ratio:.3g}"
        verdict = {True: "yes", False: "NO", None: "—"}[self.passed]
        if self.error and self.passed is None:
            verdict = "error"
        return (self.figure, value, baseline, ratio, self.target, verdict)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "MB/s":
        return f"{value:.0f} MB/s" if value >= 100 else f"{value:.1f} MB/s"
    if unit == "s":
        return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    if unit == "MiB":
        return f"{value:.2f} MiB" if value < 10 else f"{value:.1f} MiB"
    if unit == "KiB/entry":
        return f"{value:.2f} KiB/entry"
    return f"{value:g} {unit}".strip()


def text_table(rows: list[Row]) -> str:
    table = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def notes_text(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        if row.error:
            out.append(f"{row.figure}: error: {row.error}")
        out += [f"{row.figure}: {note}" for note in row.notes]
    return out


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = ["# cupixfs benchmark results", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row.cells(None)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = notes_text(rows)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: Path, rows: list[Row], meta: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": [asdict(r) for r in rows], "samples": samples}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(rows, meta))
