"""Charts drawn on the server as inline SVG: no script, no CDN, nothing the Content-Security-
Policy has to allow (colours are presentation attributes, not style). Each chart names itself
for screen readers; its numbers are always in the table beside it, which is the accessible
version and the source of the CSV."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

# Distinguishable in grey too, each with at least 3:1 contrast on white (non-text contrast).
COLOURS = ("#1f5fa8", "#b3541e", "#2e7d32", "#6a3d9a", "#8c6d00")
WIDTH, HEIGHT = 640, 240
LEFT, BOTTOM, TOP = 56, 36, 28


def _svg(label: str, body: str, height: int = HEIGHT) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}"'
        f' xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _short(n: float) -> str:
    for size, unit in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}"


def _legend(names: Sequence[str]) -> str:
    out = ""
    x = LEFT
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        out += f'<rect x="{x}" y="6" width="12" height="12" fill="{colour}"/>'
        out += f'<text x="{x + 16}" y="16" font-size="12">{escape(name)}</text>'
        x += 24 + 8 * len(name)
    return out


def bars(
    label: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]
) -> Markup:
    """Grouped vertical bars: one group per label (a month), one bar per series."""
    top = max([0.0, *(v for _, values in series for v in values)]) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    body = _legend([name for name, _ in series]) if len(series) > 1 else ""
    for frac in (0, 0.5, 1):
        y = TOP + plot_h * (1 - frac)
        body += f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#bbb"/>'
        body += (
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_short(top * frac)}</text>"
        )
    group = plot_w / max(1, len(labels))
    bar = group * 0.8 / max(1, len(series))
    every = max(1, len(labels) // 8)
    for i, name in enumerate(labels):
        x0 = LEFT + i * group + group * 0.1
        for j, (_, values) in enumerate(series):
            v = max(0.0, float(values[i]))
            h = plot_h * v / top
            body += (
                f'<rect x="{x0 + j * bar:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}"'
                f' height="{h:.1f}" fill="{COLOURS[j % len(COLOURS)]}"/>'
            )
        if i % every == 0:
            body += (
                f'<text x="{x0 + group * 0.4:.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11"'
                f' text-anchor="middle">{escape(name)}</text>'
            )
    return _svg(label, body)


def line(label: str, labels: Sequence[str], values: Sequence[float]) -> Markup:
    """One series as a line over its labels (time of day, months)."""
    top = max([0.0, *values]) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(values) - 1)
    points = " ".join(
        f"{LEFT + i * step:.1f},{TOP + plot_h * (1 - max(0.0, v) / top):.1f}"
        for i, v in enumerate(values)
    )
    body = ""
    for frac in (0, 0.5, 1):
        y = TOP + plot_h * (1 - frac)
        body += f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#bbb"/>'
        body += (
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_short(top * frac)}</text>"
        )
    if points:
        body += f'<polyline points="{points}" fill="none" stroke="{COLOURS[0]}" stroke-width="2"/>'
    every = max(1, len(labels) // 8)
    for i, name in enumerate(labels):
        if i % every == 0:
            body += (
                f'<text x="{LEFT + i * step:.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11"'
                f' text-anchor="middle">{escape(name)}</text>'
            )
    return _svg(label, body)


def heat(label: str, rows: Sequence[str], columns: int, cells: Sequence[Sequence[int]]) -> Markup:
    """A grid (weekday rows × hour columns), darker for more."""
    top = max([0, *(v for row in cells for v in row)]) or 1
    cell_w = (WIDTH - LEFT - 8) / columns
    cell_h = 22
    height = TOP + cell_h * len(rows) + 8
    body = ""
    for h in range(0, columns, 3):
        body += (
            f'<text x="{LEFT + h * cell_w + cell_w / 2:.1f}" y="{TOP - 8}" font-size="11"'
            f' text-anchor="middle">{h:02d}</text>'
        )
    for r, name in enumerate(rows):
        y = TOP + r * cell_h
        body += f'<text x="{LEFT - 6}" y="{y + 15}" font-size="12" text-anchor="end">{escape(name)}</text>'
        for c, v in enumerate(cells[r]):
            shade = 0.06 + 0.94 * v / top if v else 0.0
            body += (
                f'<rect x="{LEFT + c * cell_w:.1f}" y="{y}" width="{cell_w - 1:.1f}"'
                f' height="{cell_h - 2}" fill="{COLOURS[0]}" fill-opacity="{shade:.2f}"'
                ' stroke="#ddd" stroke-width="0.5"/>'
            )
    return _svg(label, body, height)
