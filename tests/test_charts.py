"""The SVG chart helpers: well-formed, accessible, escaped, and numerically right."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from markupsafe import Markup

from infraetl.dashboard import charts

SVG = "{http://www.w3.org/2000/svg}"
ITEMS = [("20s", 12.0), ("30s", 30.0), ("40s", 7.0)]
Draw = Callable[..., Markup]
DRAW: list[Draw] = [charts.bar_chart, charts.histogram, charts.hbar_chart, charts.donut_chart, charts.line_chart]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def titles(root: ET.Element) -> list[str]:
    """Texts of the per-datum <title>s."""
    return [t.text or "" for t in root.iter(f"{SVG}title")]


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (1234, "1,234"), (1_000_000, "1,000,000"),
                                             (2.6, "3"), (None, "–")])
def test_fmt_int(value: float | None, text: str) -> None:
    assert charts.fmt_int(value) == text


@pytest.mark.parametrize(("value", "text"), [(48.66, "48.7"), (1234.5, "1,234.5"), (None, "–")])
def test_fmt_num(value: float | None, text: str) -> None:
    assert charts.fmt_num(value) == text


@pytest.mark.parametrize(("value", "text"), [(1.2, "1.2%"), (50, "50.0%"), (99.95, "100.0%"), (None, "–")])
def test_fmt_pct(value: float | None, text: str) -> None:
    assert charts.fmt_pct(value) == text


@pytest.mark.parametrize(("peak", "ticks"), [
    (30, [0, 10, 20, 30]), (7, [0, 2, 4, 6, 8]), (190, [0, 50, 100, 150, 200]),
    (1_000_000, [0, 250_000, 500_000, 750_000, 1_000_000]), (1, [0, 0.25, 0.5, 0.75, 1]),
    (0, [0, 1]), (-5, [0, 1]), (math.inf, [0, 1]),
])
def test_nice_ticks(peak: float, ticks: list[float]) -> None:
    assert charts.nice_ticks(peak) == ticks


@pytest.mark.parametrize("draw", DRAW)
def test_chart_is_accessible_svg_with_a_title_per_datum(draw: Draw) -> None:
    root = parse(draw(ITEMS, label="Age by decade"))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("aria-label") == "Age by decade"
    got = titles(root)
    assert len(got) == len(ITEMS)
    for (name, value), title in zip(ITEMS, got, strict=False):
        assert title.startswith(f"{name}: {charts.fmt_int(value)}")


@pytest.mark.parametrize("draw", DRAW)
def test_chart_has_no_inline_style(draw: Draw) -> None:
    svg = str(draw(ITEMS, label="x"))
    assert "style=" not in svg and "<style" not in svg


@pytest.mark.parametrize("draw", DRAW)
def test_empty_chart_says_no_data(draw: Draw) -> None:
    root = parse(draw([], label="Nothing"))
    assert root.get("aria-label") == "Nothing"
    assert "no data yet" in "".join(root.itertext())


@pytest.mark.parametrize("draw", DRAW)
def test_labels_are_escaped(draw: Draw) -> None:
    hostile = '</title><script>alert(1)</script>"><img src=x onerror=alert(2)>'
    svg = str(draw([(hostile, 3.0)], label=hostile))
    root = parse(svg)  # still well-formed: nothing broke out of its element or attribute
    assert not list(root.iter(f"{SVG}script")) and not list(root.iter(f"{SVG}img"))
    assert "<script" not in svg and "<img" not in svg
    assert root.get("aria-label") == hostile
    assert hostile in titles(root)[0]


def test_bidi_and_control_characters_are_made_visible() -> None:
    svg = str(charts.hbar_chart([("\u202egnp.exe\x00", 1.0)], label="a\u2066b"))
    for char in ("\u202e", "\u2066", "\x00"):
        assert char not in svg
    assert "\ufffdgnp.exe\ufffd" in svg


def test_bar_heights_are_proportional() -> None:
    root = parse(charts.bar_chart(ITEMS, label="x"))
    heights = [float(r.get("height", 0)) for r in root.iter(f"{SVG}rect")]
    assert heights[1] / heights[0] == pytest.approx(30 / 12, rel=0.01)
    assert heights[2] / heights[0] == pytest.approx(7 / 12, rel=0.01)


def test_hbar_respects_max_value() -> None:
    full = parse(charts.hbar_chart([("a", 100.0), ("b", 50.0)], label="x", max_value=100))
    widths = [float(r.get("width", 0)) for r in full.iter(f"{SVG}rect")]
    assert widths[1] == pytest.approx(widths[0] / 2, rel=0.01)


def test_donut_slices_cover_the_circle_in_order() -> None:
    root = parse(charts.donut_chart([("male", 3.0), ("female", 1.0)], label="Gender"))
    slices = [c for c in root.iter(f"{SVG}circle") if c.find(f"{SVG}title") is not None]
    dashes = [float(c.get("stroke-dasharray", "0 0").split()[0]) for c in slices]
    offsets = [float(c.get("stroke-dashoffset", "0")) for c in slices]
    circumference = 2 * math.pi * 62
    assert sum(dashes) == pytest.approx(circumference, rel=1e-3)
    assert dashes[0] == pytest.approx(0.75 * circumference, rel=1e-3)
    assert offsets == pytest.approx([0.0, -dashes[0]], abs=0.01)
    assert "75.0%" in titles(root)[0]


def test_line_chart_points_follow_values() -> None:
    root = parse(charts.line_chart([("2001", 10.0), ("2002", 20.0), ("2003", 0.0)], label="x"))
    ys = [float(c.get("cy", 0)) for c in root.iter(f"{SVG}circle")]
    assert ys[1] < ys[0] < ys[2]  # SVG y grows downwards


def test_many_columns_thin_out_axis_labels() -> None:
    items = [(str(y), 1.0) for y in range(1950, 2025)]
    root = parse(charts.bar_chart(items, label="x"))
    assert len(titles(root)) == len(items)
    labels = [t for t in root.iter(f"{SVG}text") if (t.text or "").isdigit() and len(t.text or "") == 4]
    assert 0 < len(labels) < len(items)


def _luminance(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(int(colour[i:i + 2], 16) / 255) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_every_chart_colour_stands_out_from_the_panel_in_both_schemes() -> None:
    """WCAG 1.4.11: 3:1 for the graphics a reader needs (five colours were 1.6-2.4:1 on white)."""
    import re
    from pathlib import Path

    css = (Path(charts.__file__).parent / "static" / "dashboard.css").read_text()
    panels = re.findall(r"--panel:\s*(#[0-9a-f]{6})", css)
    assert len(panels) == 2, panels  # the light and the dark scheme
    for colour in charts.PALETTE:
        for panel in panels:
            hi, lo = sorted((_luminance(colour), _luminance(panel)), reverse=True)
            assert (hi + 0.05) / (lo + 0.05) >= 3.0, (colour, panel)
    assert len(set(charts.PALETTE)) == len(charts.PALETTE)
