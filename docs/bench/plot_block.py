"""Draw `ringkit bench block --json` results as an SVG bar chart: each row's figure as a ratio
of the direct baseline measured in the same run, one bar per result file and mode, with the
target of each row as a dashed mark.  Standard library only.

    python docs/bench/plot_block.py before=docs/bench/block-before.json \\
        after=docs/bench/block-after.json -o docs/bench/block.svg
"""

from __future__ import annotations

import argparse
import json
from html import escape
from pathlib import Path

TARGETS = {"seq_write": 0.5, "seq_read": 0.5, "seq_write_qd4": 0.7, "seq_read_qd4": 0.7,
           "seq_write_lent": 0.5, "seq_read_lent": 0.5,
           "rand_read_qd32": 0.2, "rand_read_qd32_tasks": 0.2}
"""Same-run ratios to direct I/O that the block path aims at (docs/benchmarks.md)."""
COLOURS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
ROW_H, BAR_H, LEFT, WIDTH, TOP = 18, 14, 230, 760, 40


def series(named_files: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(legend label, {row key: ratio}) for each mode of each `name=path` argument."""
    out = []
    for item in named_files:
        name, _, path = item.partition("=")
        record = json.loads(Path(path).read_text())
        modes: dict[str, dict[str, float]] = {}
        for row in record["rows"]:
            for mode, figure in row["modes"].items():
                value = figure["value"] if isinstance(figure, dict) else figure
                if value is not None:
                    modes.setdefault(mode, {})[row["key"]] = value / row["direct"]
        load = record.get("load_average_before")
        note = f", load {load[0]:.1f}" if load else ""
        out += [(f"{name}: {mode}{note}", ratios) for mode, ratios in modes.items()]
    return out


def draw(rows: list[tuple[str, str]], data: list[tuple[str, dict[str, float]]]) -> str:
    top = max([1.0] + [v for _, ratios in data for v in ratios.values()])
    scale = (WIDTH - LEFT - 60) / top
    group = len(data) * ROW_H + 14
    height = TOP + len(rows) * group + 24 + len(data) * 16
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{LEFT}" y="20" font-weight="bold">ringkit block vs direct I/O '
             f'(same-run ratio; dashed: target)</text>']
    y = TOP
    for key, label in rows:
        parts.append(f'<text x="{LEFT - 8}" y="{y + group / 2}" text-anchor="end">'
                     f'{escape(label)}</text>')
        for index, (_, ratios) in enumerate(data):
            if key not in ratios:
                continue
            width = ratios[key] * scale
            by = y + index * ROW_H
            parts.append(f'<rect x="{LEFT}" y="{by}" width="{width:.1f}" height="{BAR_H}" '
                         f'fill="{COLOURS[index % len(COLOURS)]}"/>')
            parts.append(f'<text x="{LEFT + width + 4:.1f}" y="{by + BAR_H - 3}">'
                         f'{ratios[key]:.2f}x</text>')
        if key in TARGETS:
            tx = LEFT + TARGETS[key] * scale
            parts.append(f'<line x1="{tx:.1f}" y1="{y - 2}" x2="{tx:.1f}" y2="{y + group - 12}" '
                         f'stroke="black" stroke-dasharray="4,3"/>')
        y += group
    for index, (name, _) in enumerate(data):
        ly = y + 10 + index * 16
        parts.append(f'<rect x="{LEFT}" y="{ly}" width="12" height="12" '
                     f'fill="{COLOURS[index % len(COLOURS)]}"/>')
        parts.append(f'<text x="{LEFT + 18}" y="{ly + 10}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="name=path of a `ringkit bench block --json`")
    parser.add_argument("-o", "--output", required=True, help="SVG file to write")
    args = parser.parse_args()
    first = json.loads(Path(args.files[-1].partition("=")[2]).read_text())
    rows = [(row["key"], row["label"]) for row in first["rows"]]
    Path(args.output).write_text(draw(rows, series(args.files)))


if __name__ == "__main__":
    main()
