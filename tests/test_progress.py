"""``LineProgress``: plain progress lines for logs, driven by a fake clock."""

from __future__ import annotations

import io

import pytest

from curate.progress import INTERVAL_ENV, LineProgress, NullProgress, format_duration, set_total


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_interval_with_rate_and_eta() -> None:
    buf, clock = io.StringIO(), Clock()
    p = LineProgress(buf, interval=30, clock=clock)
    p.start("embed", total=1000, unit="img")
    for _ in range(10):  # 100 img every 6 s: a line at 30 s and at 60 s
        clock.t += 6
        p.advance(100)
    p.finish()
    assert buf.getvalue().splitlines() == [
        "embed: 500 of 1,000 img (50%), 16.7 img/s, elapsed 30s, ETA 30s",
        "embed: 1,000 of 1,000 img (100%), 16.7 img/s, elapsed 1m00s, ETA 0s",
        "embed: 1,000 of 1,000 img (100%), 16.7 img/s, elapsed 1m00s, done",
    ]


def test_quiet_for_short_tasks_and_without_a_total() -> None:
    buf, clock = io.StringIO(), Clock()
    p = LineProgress(buf, interval=30, clock=clock)
    p.start("fast", total=10)
    clock.t += 5
    p.advance(10)
    p.finish()  # never printed: no closing line either
    assert buf.getvalue() == ""
    p.start("shards", total=None, unit="img")
    clock.t += 31
    p.advance(62)
    assert buf.getvalue() == "shards: 62 img, 2.0 img/s, elapsed 31s\n"
    set_total(p, 124)  # an estimate arrives: the next line has a total and an ETA
    clock.t += 31
    p.advance(62)
    assert buf.getvalue().splitlines()[-1] == "shards: 124 of 124 img (100%), 2.0 img/s, elapsed 1m02s, ETA 0s"


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert LineProgress().interval == 0
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    assert LineProgress().interval == 30
    monkeypatch.delenv(INTERVAL_ENV)
    assert LineProgress().interval == 30


def test_set_total_on_a_renderer_without_it() -> None:
    class Bare:  # a Progress written before set_total existed
        def start(self, task: str, total: float | None = None, unit: str = "samples") -> None: ...
        def advance(self, n: float = 1) -> None: ...
        def finish(self) -> None: ...

    set_total(Bare(), 5)
    set_total(NullProgress(), 5)


@pytest.mark.parametrize(("s", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (7322, "2h02m")])
def test_durations(s: float, text: str) -> None:
    assert format_duration(s) == text
