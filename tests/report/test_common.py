"""The shared report helpers: log-axis ticks that never collide, tables, numbers."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from collabinfer.report.common import (
    DASH,
    fixed,
    log_axis,
    markdown_table,
    one_two_five,
    pct,
    plain_number,
    pyplot,
    save_figure,
)

RANGES = [
    (14.0, 760.0),  # Table 1's latency CDF
    (1.0, 12_544.0),  # Table 1's bytes: LC sends nothing (drawn at 1)
    (8.0, 50_176.0),  # rate-accuracy bytes
    (24.0, 41.0),  # less than a decade: where matplotlib labelled minor ticks
    (28.0, 31.0),
    (0.47, 2.5),
    (1e-3, 1e6),
    (3.0, 3.3),
]


@pytest.mark.parametrize(("lo", "hi"), RANGES)
def test_ticks_lie_in_range_and_are_few(lo: float, hi: float) -> None:
    ticks = one_two_five(lo, hi)
    assert 2 <= len(ticks) <= 8, ticks
    assert ticks == sorted(set(ticks))
    assert all(lo <= t <= hi for t in ticks)


@pytest.mark.parametrize(("lo", "hi"), [(14.0, 760.0), (0.5, 7.0), (2.0, 900.0)])
def test_over_a_decade_or_more_ticks_are_at_1_2_5(lo: float, hi: float) -> None:
    for t in one_two_five(lo, hi):
        mantissa = t / 10 ** math.floor(math.log10(t))
        assert round(mantissa, 9) in (1.0, 2.0, 5.0), t


def test_many_decades_thin_out_to_decades() -> None:
    ticks = one_two_five(1.0, 1e5)
    assert ticks == [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]


def test_labels_are_plain_numbers() -> None:
    labels = [plain_number(v) for v in (0.05, 0.3, 1.5, 2.0, 30.0, 500.0, 12_000.0)]
    assert labels == ["0.05", "0.3", "1.5", "2", "30", "500", "12,000"]
    assert not any("e" in s or "×" in s for s in labels)


@pytest.mark.parametrize(("lo", "hi"), RANGES)
def test_drawn_tick_labels_do_not_overlap(tmp_path: Path, lo: float, hi: float) -> None:
    """What the issue saw: '3×10¹' printed over '2.8×10¹'. Draw a real axis and
    compare the labels' boxes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([lo, hi], [0, 1])
    log_axis(ax, "x")
    fig.canvas.draw()
    boxes = []
    for tick in [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]:
        label = tick.label1
        if label.get_visible() and label.get_text() and lo * 0.9 <= tick.get_loc() <= hi * 1.1:
            boxes.append(label.get_window_extent())
    assert len(boxes) >= 2
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (lo, hi, a, b)
    assert all(t.label1.get_text() == "" for t in ax.xaxis.get_minor_ticks())
    save_figure(fig, tmp_path / "axis.png")
    assert (tmp_path / "axis.png").read_bytes()[:4] == b"\x89PNG"


def test_log_axis_rejects_a_third_axis() -> None:
    fig, ax = pyplot().subplots()
    with pytest.raises(ValueError, match="'x' or 'y'"):
        log_axis(ax, "z")
    pyplot().close(fig)


def test_markdown_table_escapes_cells() -> None:
    lines = markdown_table(["a", "b"], [["x|y", "two\nlines"], [1, 2.5]])
    assert lines == ["| a | b |", "|---|---|", "| x\\|y | two lines |", "| 1 | 2.5 |"]


def test_numbers_and_dashes() -> None:
    assert pct(0.93312) == "93.31%" and pct(0.5, 0) == "50%" and pct(None) == DASH
    assert fixed(1234.5, ",.0f") == "1,234" and fixed(1.5, ".2f", "×") == "1.50×"
    assert fixed(None) == DASH
