"""Self-contained HTML building blocks for the run report: tables, inline SVG charts, inline PNG images.

No JavaScript, no web fonts, no CDN: the page opens offline, from MLflow's artifact view or a mail attachment.
Every chart is an `<svg class="plot">` carrying `data-points` (how many values it draws), so tests can check the
DOM instead of pixels.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` decimals, ints with thousands separators, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:,.{digits}f}"
    return str(value)


@dataclass
class Section:
    """One titled part of the report: HTML blocks, or a note saying why it is empty."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)
    note: str | None = None  # e.g. "not available: artifacts/export/parity.json missing (export did not run)"

    def render(self) -> str:
        body = "\n".join(self.blocks)
        note = f'<p class="note">{esc(self.note)}</p>' if self.note else ""
        return f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n{note}\n{body}\n</section>'


def paragraph(text: str, cls: str | None = None) -> str:
    return f"<p{f' class={chr(34)}{esc(cls)}{chr(34)}' if cls else ''}>{esc(text)}</p>"


def badge(passed: bool | None, yes: str = "PASSED", no: str = "FAILED", unknown: str = "n/a") -> str:
    if passed is None:
        return f'<span class="badge unknown">{esc(unknown)}</span>'
    return f'<span class="badge {"pass" if passed else "fail"}">{esc(yes if passed else no)}</span>'


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "", raw: Sequence[int] = ()) -> str:
    """rows of cells; column indices in `raw` hold HTML already (badges), the rest is escaped and formatted."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            numeric = isinstance(cell, int | float) and not isinstance(cell, bool)
            text = cell if i in raw else esc(fmt(cell))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def key_values(items: Sequence[tuple[str, Any]], raw: bool = False) -> str:
    """A two-column fact table."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v if raw else esc(fmt(v))}</td></tr>" for k, v in items)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def png(data: bytes, alt: str) -> str:
    """An inline PNG (base64 data URI)."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{encoded}"></figure>'


# ------------------------------------------------------------------------------------------------ SVG charts


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    value = start
    while value <= hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


class _Frame:
    """Plot area inside an SVG of width × height, mapping data to pixels."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 56, 16, 30, 44
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (value - self.x0) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - self.bottom - (value - self.y0) / span * (self.height - self.top - self.bottom)


def _svg_open(width: int, height: int, title: str, points: int, kind: str) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}" '
        f'data-kind="{esc(kind)}" data-points="{points}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}"><title>{esc(title)}</title>'
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" class="ptitle">{esc(title)}</text>'
    )


def _axes(frame: _Frame, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str) -> list[str]:
    parts = []
    for t in y_ticks:
        y = frame.y(t)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_tick_label(t)}</text>'
        )
    base = frame.height - frame.bottom
    for t in x_ticks:
        x = frame.x(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" class="axis"/>')
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" class="tick">{_tick_label(t)}</text>')
    parts.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base}" y2="{base}" class="axis"/>')
    parts.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{base}" class="axis"/>')
    parts.append(
        f'<text x="{(frame.left + frame.width - frame.right) / 2:.0f}" y="{frame.height - 8}" text-anchor="middle" '
        f'class="label">{esc(x_label)}</text>'
    )
    mid = (frame.top + base) / 2
    parts.append(
        f'<text x="14" y="{mid:.0f}" text-anchor="middle" transform="rotate(-90 14 {mid:.0f})" class="label">'
        f"{esc(y_label)}</text>"
    )
    return parts


def _legend(frame: _Frame, names: list[str], dashed: set[str]) -> list[str]:
    parts, x = [], frame.left + 8
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="4 3"' if name in dashed else ""
        parts.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{frame.top + 8}" y2="{frame.top + 8}" stroke="{color}" '
            f'stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{x + 22}" y="{frame.top + 12}" class="legend">{esc(name)}</text>')
        x += 30 + 7 * len(name)
    return parts


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 560,
    height: int = 300,
    marker: float | None = None,
    marker_label: str = "",
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    dashed: set[str] | None = None,
    diagonal: bool = False,
) -> str:
    """Lines with a point per value (None leaves a gap); `marker` draws a vertical line (the best epoch);
    `diagonal` the y = x reference (perfect calibration)."""
    dashed = dashed or set()
    values = [float(v) for s in series.values() for v in s if v is not None and math.isfinite(float(v))]
    points = len(values)
    if not x or not values:
        return _empty(title, width, height)
    lo, hi = (min(values), max(values)) if y_range is None else y_range
    if y_range is None:
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    y_ticks = nice_ticks(lo, hi)
    lo, hi = min(lo, y_ticks[0]), max(hi, y_ticks[-1])
    xs = [float(v) for v in x]
    x_lo, x_hi = x_range if x_range is not None else (min(xs), max(xs))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    integer_x = all(float(v).is_integer() for v in xs) and x_range is None
    x_ticks = (
        [float(v) for v in sorted({int(v) for v in xs})] if integer_x and len(xs) <= 20 else nice_ticks(x_lo, x_hi)
    )
    frame = _Frame(width, height, (x_lo, x_hi), (lo, hi))
    parts = [_svg_open(width, height, title, points, "line"), *_axes(frame, x_ticks, y_ticks, x_label, y_label)]
    if diagonal:
        a, b = max(x_lo, lo), min(x_hi, hi)
        parts.append(
            f'<line x1="{frame.x(a):.1f}" y1="{frame.y(a):.1f}" x2="{frame.x(b):.1f}" y2="{frame.y(b):.1f}" '
            'class="marker"><title>y = x</title></line>'
        )
    if marker is not None:
        mx = frame.x(marker)
        parts.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{frame.top}" y2="{height - frame.bottom}" class="marker"/>'
        )
        if marker_label:
            parts.append(f'<text x="{mx + 4:.1f}" y="{frame.top + 24}" class="legend">{esc(marker_label)}</text>')
    for i, (name, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="4 3"' if name in dashed else ""
        run: list[str] = []
        segments: list[list[str]] = []
        for xv, yv in zip(xs, ys, strict=False):
            if yv is None or not math.isfinite(float(yv)):
                if run:
                    segments.append(run)
                run = []
                continue
            run.append(f"{frame.x(xv):.1f},{frame.y(float(yv)):.1f}")
        if run:
            segments.append(run)
        for seg in segments:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{" ".join(seg)}"/>')
        for xv, yv in zip(xs, ys, strict=False):
            if yv is not None and math.isfinite(float(yv)):
                parts.append(
                    f'<circle cx="{frame.x(xv):.1f}" cy="{frame.y(float(yv)):.1f}" r="3" fill="{color}">'
                    f"<title>{esc(name)} at {_tick_label(xv)}: {fmt(float(yv))}</title></circle>"
                )
    parts += _legend(frame, list(series), dashed)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    y_label: str,
    width: int = 560,
    height: int = 280,
    y_max: float | None = None,
    x_label: str = "",
) -> str:
    """Vertical bars (a histogram when labels are bin edges)."""
    if not values:
        return _empty(title, width, height)
    hi = y_max if y_max is not None else max(max(values), 1e-9) * 1.1
    y_ticks = nice_ticks(0.0, hi)
    frame = _Frame(width, height, (0.0, float(len(values))), (0.0, max(hi, y_ticks[-1])))
    parts = [_svg_open(width, height, title, len(values), "bar"), *_axes(frame, [], y_ticks, x_label, y_label)]
    step = len(values) / 10 if len(values) > 12 else 1
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0, x1 = frame.x(i + 0.1), frame.x(i + 0.9)
        y = frame.y(float(value))
        parts.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{frame.y(0) - y:.1f}" '
            f'fill="{PALETTE[0]}"><title>{esc(label)}: {fmt(value)}</title></rect>'
        )
        if i % max(int(step), 1) == 0:
            parts.append(
                f'<text x="{(x0 + x1) / 2:.1f}" y="{height - frame.bottom + 14}" text-anchor="middle" '
                f'class="tick">{esc(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(labels: Sequence[str], values: Sequence[float | None], title: str, x_max: float = 1.0) -> str:
    """Horizontal bars with their values (per-class / per-slice scores in [0, x_max])."""
    shown = [(str(lab), float(v)) for lab, v in zip(labels, values, strict=True) if v is not None]
    if not shown:
        return _empty(title, 560, 120)
    label_width = min(240, 12 + 7 * max(len(lab) for lab, _ in shown))
    width, row = 560, 22
    height = 40 + row * len(shown)
    parts = [_svg_open(width, height, title, len(shown), "hbar")]
    plot = width - label_width - 60
    for i, (label, value) in enumerate(shown):
        y = 30 + i * row
        w = max(0.0, min(value / x_max, 1.0)) * plot
        parts.append(f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end" class="tick">{esc(label)}</text>')
        parts.append(
            f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{PALETTE[0]}">'
            f"<title>{esc(label)}: {fmt(value)}</title></rect>"
        )
        parts.append(f'<text x="{label_width + w + 4:.1f}" y="{y + 14}" class="tick">{fmt(value, 3)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> str:
    """A confusion matrix: rows = true label, columns = predicted; cell shade by share of its row."""
    n = len(labels)
    if not n or not matrix:
        return _empty(title, 400, 200)
    label_width = min(160, 12 + 7 * max(len(str(lab)) for lab in labels))
    cell = max(28, min(64, 420 // n))
    width = label_width + cell * n + 20
    height = 60 + label_width + cell * n
    parts = [_svg_open(width, height, title, n * n, "heatmap")]
    top = 40
    for j, lab in enumerate(labels):
        x = label_width + j * cell + cell / 2
        y = top + n * cell + 8
        parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end" transform="rotate(-45 {x:.1f} {y:.1f})" '
            f'class="tick">{esc(lab)}</text>'
        )
    for i, lab in enumerate(labels):
        row_total = sum(matrix[i]) or 1
        y = top + i * cell
        parts.append(
            f'<text x="{label_width - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" class="tick">{esc(lab)}</text>'
        )
        for j in range(n):
            count = int(matrix[i][j])
            share = count / row_total
            shade = f"rgba(76,114,176,{0.08 + 0.92 * share:.3f})"
            ink = "#fff" if share > 0.5 else "#222"
            x = label_width + j * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{shade}">'
                f"<title>true {esc(lab)}, predicted {esc(labels[j])}: {count}</title></rect>"
                f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" fill="{ink}" '
                f'class="cell">{count}</text>'
            )
    parts.append(
        f'<text x="{label_width + n * cell / 2:.0f}" y="{height - 6}" text-anchor="middle" class="label">predicted'
        "</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _empty(title: str, width: int, height: int) -> str:
    return (
        f'<svg class="plot empty" xmlns="http://www.w3.org/2000/svg" data-points="0" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title>{esc(title)}</title><text x="{width / 2:.0f}" '
        f'y="{height / 2:.0f}" text-anchor="middle" class="label">{esc(title)}: no data</text></svg>'
    )


SVG_STYLE = (
    "<style>.grid{stroke:#e6e9ef}.axis{stroke:#888}.marker{stroke:#c44e52;stroke-dasharray:3 3}.tick{fill:#444;"
    "font:11px sans-serif}.label{fill:#333;font:12px sans-serif}.legend{fill:#333;font:11px sans-serif}"
    ".ptitle{font:600 13px sans-serif;fill:#24324a}</style>"
)


def standalone_svg(svg: str) -> str:
    """An SVG chart as its own file (the page's style rules go inside it)."""
    head, sep, rest = svg.partition(">")
    return f'<?xml version="1.0" encoding="utf-8"?>\n{head}{sep}{SVG_STYLE}{rest}\n'


# ------------------------------------------------------------------------------------------------ the page

STYLE = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
header{background:#24324a;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
header .sub{opacity:.85}
nav{padding:8px 28px;background:#e9edf3;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#24324a;text-decoration:none;font-weight:600}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 18px;margin:16px 0;overflow-x:auto}
h2{font-size:18px;margin:4px 0 10px;color:#24324a}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border-bottom:1px solid #e3e7ee;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f0f3f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.facts th{font-weight:600;color:#445;background:none}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:700;font-size:12px}
.badge.pass{background:#d8f0dd;color:#1b6b2c}.badge.fail{background:#f8d7d7;color:#8a1c1c}
.badge.unknown{background:#eee;color:#555}
.note{color:#7a5b00;background:#fff6d8;padding:6px 10px;border-radius:4px}
.banner{padding:8px 12px;border-radius:4px;margin:12px 0;font-weight:600}
.banner.partial{background:#fde2e1;color:#8a1c1c}.banner.complete{background:#e3f3e6;color:#1b6b2c}
.plots{display:flex;flex-wrap:wrap;gap:16px}
svg.plot{background:#fff;font-size:11px}
svg .grid{stroke:#e6e9ef}svg .axis{stroke:#888}svg .marker{stroke:#c44e52;stroke-dasharray:3 3}
svg .tick{fill:#444}svg .label{fill:#333;font-size:12px}svg .legend{fill:#333}
svg .ptitle{font-size:13px;font-weight:600;fill:#24324a}svg .cell{font-size:11px}
figure{margin:6px 0}img.plot{max-width:100%;border:1px solid #eee}
code{background:#f0f3f7;padding:0 4px;border-radius:3px}
footer{color:#667;padding:0 28px 24px;font-size:12px}
"""


def page(title: str, subtitle: str, banner: str, banner_cls: str, sections: list[Section], footer: str) -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f'<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>\n'
        f"<nav>{nav}</nav>\n<main>\n"
        f'<div class="banner {esc(banner_cls)}" id="status">{esc(banner)}</div>\n{body}\n</main>\n'
        f"<footer>{esc(footer)}</footer>\n</body></html>\n"
    )
