"""Inline SVG charts drawn on the server: bars, horizontal bars, donut, line, histogram.

Every helper takes ``items``, a sequence of ``(label, value)`` pairs, and
returns :class:`markupsafe.Markup`: a complete ``<svg role="img">`` whose
labels are escaped here (the template inserts it as-is) and whose every
bar, slice or point carries a ``<title>`` with its number. Colours are SVG
presentation attributes plus classes, never ``style=``, because the
dashboard's Content-Security-Policy forbids inline styles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

logger = logging.getLogger(__name__)

Items = Sequence[tuple[str, float]]
Formatter = Callable[[float], str]

#: Tableau 10's hues, each at least 3:1 against the panel in both schemes (WCAG 1.4.11 for
#: graphics; five of Tableau's own were 1.6-2.4:1 on white: a review). Mid tones: a colour is
#: drawn on a light or a dark panel alike.
PALETTE: tuple[str, ...] = (
    "#4e79a7", "#bd640c", "#4c8943", "#e15759", "#478681",
    "#96780f", "#b07aa1", "#d04a8a", "#9c755f", "#897872",
)
_TEXT = "#5b6472"
_GRID = "#d5d9e0"

#: Bidi overrides/isolates and C0 controls in a label could reorder or hide
#: the text around them: str.translate table to a visible replacement character.
UNSAFE = {c: "\ufffd" for c in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)}
UNSAFE.update({c: "\ufffd" for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def clean(value: object) -> str:
    """Return ``value`` as text with bidi and control characters made visible."""
    return str(value).translate(UNSAFE)


def esc(value: object) -> Markup:
    """Escape ``value`` for HTML/SVG text or a quoted attribute."""
    return escape(clean(value))


def fmt_int(value: float | None) -> str:
    """Format a count with thousands separators (``1,234``)."""
    if value is None:
        return "–"
    return f"{round(value):,}"


def fmt_num(value: float | None, digits: int = 1) -> str:
    """Format a number with separators and ``digits`` decimals."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def fmt_pct(value: float | None) -> str:
    """Format a percentage (already ×100) with one decimal."""
    if value is None:
        return "–"
    return f"{value:.1f}%"


def nice_ticks(max_value: float, count: int = 4) -> list[float]:
    """Return round axis ticks from 0 to at least ``max_value`` (about ``count`` steps)."""
    if not max_value or max_value <= 0 or not math.isfinite(max_value):
        return [0.0, 1.0]
    raw = max_value / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    steps = math.ceil(max_value / step - 1e-9)
    return [round(i * step, 10) for i in range(steps + 1)]


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _tick_label(value: float, fmt: Formatter) -> str:
    # Ticks like 2.5 must not be rounded to "2" by an integer formatter.
    return fmt(value) if value == int(value) else fmt_num(value, 1)


def _open(width: int, height: int, label: str, kind: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" role="img" '
        f'aria-label="{esc(label)}" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet" font-size="12" font-family="sans-serif">'
    )


def empty_chart(label: str, width: int = 420, height: int = 120) -> Markup:
    """An SVG that says there is no data yet."""
    return Markup(
        _open(width, height, label, "empty")
        + f'<text class="lbl" x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
        f'fill="{_TEXT}">no data yet</text></svg>'
    )


def _plot_area(items: Items, width: int, height: int, x_title: str, *, right: int
               ) -> tuple[int, int, float, float, list[float], float, float, int]:
    """Geometry of a chart with a y axis: left, top, plot size, ticks, y scale, baseline, x-label step."""
    left, top = 52, 16
    bottom = 36 + (16 if x_title else 0)
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(max(v for _, v in items))
    every = max(1, math.ceil(len(items) / (plot_w / 34)))  # keep x labels from overlapping
    return left, top, plot_w, plot_h, ticks, plot_h / ticks[-1], top + plot_h, every


def _columns(items: Items, *, label: str, fmt: Formatter, x_title: str, y_title: str,
             gap: float, kind: str, width: int, height: int) -> Markup:
    """Vertical columns with a y axis; ``gap`` is the share of a slot left empty."""
    if not items:
        return empty_chart(label, width)
    right = 8
    left, top, plot_w, plot_h, ticks, scale, base, every = _plot_area(items, width, height, x_title, right=right)
    slot = plot_w / len(items)
    bar_w = max(slot * (1 - gap), 1.0)
    parts = [_open(width, height, label, kind), f'<g class="grid" stroke="{_GRID}">']
    for t in ticks:
        y = base - t * scale
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
    parts.append(f'</g><g class="lbl" fill="{_TEXT}" text-anchor="end">')
    for t in ticks:
        parts.append(f'<text x="{left - 6}" y="{base - t * scale + 4:.1f}">{_tick_label(t, fmt)}</text>')
    parts.append('</g><g class="bars">')
    for i, (name, value) in enumerate(items):
        h = max(value, 0) * scale
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'fill="{PALETTE[0]}"><title>{esc(name)}: {esc(fmt(value))}</title></rect>'
        )
    parts.append(f'</g><g class="lbl" fill="{_TEXT}" text-anchor="middle">')
    for i, (name, _) in enumerate(items):
        if i % every == 0:
            x = left + i * slot + slot / 2
            parts.append(f'<text x="{x:.1f}" y="{base + 16}">{esc(_short(str(name), 8))}</text>')
    parts.append("</g>")
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="{_TEXT}"/>')
    parts.append(_axis_titles(x_title, y_title, width, height, left, top, plot_h))
    parts.append("</svg>")
    return Markup("".join(parts))


def _axis_titles(x_title: str, y_title: str, width: int, height: int, left: int, top: int, plot_h: float) -> str:
    out = []
    if x_title:
        out.append(f'<text class="lbl axis-title" x="{left + (width - left) / 2:.0f}" y="{height - 4}" '
                   f'text-anchor="middle" fill="{_TEXT}">{esc(x_title)}</text>')
    if y_title:
        cy = top + plot_h / 2
        out.append(f'<text class="lbl axis-title" x="12" y="{cy:.0f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {cy:.0f})" fill="{_TEXT}">{esc(y_title)}</text>')
    return "".join(out)


def bar_chart(items: Items, *, label: str, fmt: Formatter = fmt_int, x_title: str = "",
              y_title: str = "", width: int = 420, height: int = 240) -> Markup:
    """Vertical bars, one per item, on a y axis with round ticks."""
    return _columns(items, label=label, fmt=fmt, x_title=x_title, y_title=y_title,
                    gap=0.3, kind="bar", width=width, height=height)


def histogram(items: Items, *, label: str, fmt: Formatter = fmt_int, x_title: str = "",
              y_title: str = "", width: int = 420, height: int = 240) -> Markup:
    """Adjacent columns for binned data (items are bins in order)."""
    return _columns(items, label=label, fmt=fmt, x_title=x_title, y_title=y_title,
                    gap=0.04, kind="histogram", width=width, height=height)


def hbar_chart(items: Items, *, label: str, fmt: Formatter = fmt_int,
               max_value: float | None = None, width: int = 420) -> Markup:
    """Horizontal bars with the label left and the value right of each bar."""
    if not items:
        return empty_chart(label, width)
    row, top, label_w, value_w = 22, 6, 132, 64
    height = top * 2 + row * len(items)
    plot_w = width - label_w - value_w
    peak = max_value if max_value else max(v for _, v in items) or 1
    parts = [_open(width, height, label, "hbar")]
    for i, (name, value) in enumerate(items):
        y = top + i * row
        w = max(min(value / peak, 1.0), 0) * plot_w
        parts.append(
            f'<text class="lbl" x="{label_w - 6}" y="{y + 15}" text-anchor="end" fill="{_TEXT}">'
            f'{esc(_short(str(name), 20))}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" rx="2" '
            f'fill="{PALETTE[i % len(PALETTE)]}"><title>{esc(name)}: {esc(fmt(value))}</title></rect>'
            f'<text class="lbl val" x="{label_w + w + 4:.1f}" y="{y + 15}" fill="{_TEXT}">{esc(fmt(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def donut_chart(items: Items, *, label: str, fmt: Formatter = fmt_int, width: int = 420) -> Markup:
    """A donut of shares with a legend (label, value, percent)."""
    total = sum(max(v, 0) for _, v in items)
    if not items or total <= 0:
        return empty_chart(label, width)
    height = max(180, 24 + 20 * len(items))
    cx, cy, r, stroke = 90, height / 2, 62, 28
    circ = 2 * math.pi * r
    parts = [_open(width, height, label, "donut"),
             f'<circle cx="{cx}" cy="{cy:.1f}" r="{r}" fill="none" stroke="{_GRID}" stroke-width="{stroke}"/>']
    offset = 0.0
    for i, (name, value) in enumerate(items):
        share = max(value, 0) / total
        length = share * circ
        colour = PALETTE[i % len(PALETTE)]
        # One circle per slice: its dash is the slice, rotated to start where the last ended.
        parts.append(
            f'<circle cx="{cx}" cy="{cy:.1f}" r="{r}" fill="none" stroke="{colour}" stroke-width="{stroke}" '
            f'stroke-dasharray="{length:.2f} {circ - length:.2f}" stroke-dashoffset="{-offset:.2f}" '
            f'transform="rotate(-90 {cx} {cy:.1f})"><title>{esc(name)}: {esc(fmt(value))} '
            f'({fmt_pct(share * 100)})</title></circle>'
        )
        offset += length
        ly = 20 + i * 20 + max(0, (height - 24 - 20 * len(items)) / 2)
        parts.append(
            f'<rect x="190" y="{ly - 10:.1f}" width="12" height="12" rx="2" fill="{colour}"/>'
            f'<text class="lbl" x="208" y="{ly:.1f}" fill="{_TEXT}">{esc(_short(str(name), 18))} · '
            f'{esc(fmt(value))} ({fmt_pct(share * 100)})</text>'
        )
    parts.append(f'<text class="lbl total" x="{cx}" y="{cy + 5:.1f}" text-anchor="middle" '
                 f'font-size="15" fill="{_TEXT}">{esc(fmt(total))}</text></svg>')
    return Markup("".join(parts))


def line_chart(items: Items, *, label: str, fmt: Formatter = fmt_int, x_title: str = "",
               y_title: str = "", width: int = 420, height: int = 240) -> Markup:
    """A line through the items in order, one titled point each."""
    if not items:
        return empty_chart(label, width)
    right = 12
    left, top, plot_w, plot_h, ticks, scale, base, every = _plot_area(items, width, height, x_title, right=right)
    step = plot_w / max(len(items) - 1, 1)
    points = [(left + (i * step if len(items) > 1 else plot_w / 2), base - max(v, 0) * scale)
              for i, (_, v) in enumerate(items)]
    parts = [_open(width, height, label, "line"), f'<g class="grid" stroke="{_GRID}">']
    for t in ticks:
        y = base - t * scale
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
    parts.append(f'</g><g class="lbl" fill="{_TEXT}" text-anchor="end">')
    for t in ticks:
        parts.append(f'<text x="{left - 6}" y="{base - t * scale + 4:.1f}">{_tick_label(t, fmt)}</text>')
    parts.append("</g>")
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    parts.append(f'<g class="points" fill="{PALETTE[0]}">')
    for (x, y), (name, value) in zip(points, items, strict=False):
        title = f"<title>{esc(name)}: {esc(fmt(value))}</title>"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5">{title}</circle>')
    parts.append(f'</g><g class="lbl" fill="{_TEXT}" text-anchor="middle">')
    for i, ((x, _), (name, _)) in enumerate(zip(points, items, strict=False)):
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{base + 16}">{esc(_short(str(name), 8))}</text>')
    parts.append(f'</g><line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="{_TEXT}"/>')
    parts.append(_axis_titles(x_title, y_title, width, height, left, top, plot_h))
    parts.append("</svg>")
    return Markup("".join(parts))
