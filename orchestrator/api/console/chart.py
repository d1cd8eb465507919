"""The overview's chart: commands in flight and tasks ended per minute, over the last hour.

Geometry only: numbers and labels computed here, drawn as inline SVG by a
template (parts/chart.html), so no user text is involved and nothing needs
a chart library.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH, HEIGHT = 1100, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 44, 12, 24


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # "HH:MM: N task(s) ended, M in flight" (a tooltip)


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    line: str  # polyline points of commands in flight
    ticks: list[Tick]
    ended_max: int
    in_flight_max: int
    ended_total: int
    in_flight_now: int
    plot_top: int
    plot_bottom: int
    plot_left: int
    plot_right: int


def _stamp(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def in_flight_series(rows: list[tuple[str, str | None]], minute_ends: list[float]) -> list[int]:
    """Root commands in flight at each moment: accepted by then and not yet ended."""
    created = sorted(_stamp(c) for c, _ in rows)
    ended = sorted(_stamp(e) for _, e in rows if e is not None)
    return [bisect_right(created, t) - bisect_right(ended, t) for t in minute_ends]


def activity_chart(minutes: list[tuple[datetime, int]], in_flight: list[int]) -> Chart:
    """Bars of tasks ended per minute (left scale) under a line of commands in flight (right scale)."""
    n = max(len(minutes), 1)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    step = plot_w / n
    ended_max = max([c for _, c in minutes] + [1])
    flight_max = max([*in_flight, 1])
    bars = []
    points = []
    ticks = []
    for i, ((minute, count), flying) in enumerate(zip(minutes, in_flight, strict=True)):
        x = LEFT + i * step
        h = plot_h * count / ended_max
        label = f"{minute:%H:%M} UTC: {count} task(s) ended, {flying} command(s) in flight"
        bars.append(Bar(round(x + 1, 1), round(TOP + plot_h - h, 1), round(max(step - 2, 1), 1), round(h, 1), label))
        points.append(f"{x + step / 2:.1f},{TOP + plot_h - plot_h * flying / flight_max:.1f}")
        if i % 10 == 0 or i == n - 1:
            ticks.append(Tick(round(x + step / 2, 1), f"{minute:%H:%M}"))
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        line=" ".join(points),
        ticks=ticks,
        ended_max=ended_max,
        in_flight_max=flight_max,
        ended_total=sum(c for _, c in minutes),
        in_flight_now=in_flight[-1] if in_flight else 0,
        plot_top=TOP,
        plot_bottom=TOP + plot_h,
        plot_left=LEFT,
        plot_right=WIDTH - RIGHT,
    )
