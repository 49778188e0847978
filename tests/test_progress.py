"""Progress lines of long jobs: bounded cadence, rate, ETA, closing line."""

from __future__ import annotations

import logging

from tissuelens.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_at_bounded_cadence_with_rate_and_eta(caplog):
    clock = Clock()
    p = Progress(1000, "embed", unit="cells", every=30, clock=clock)
    caplog.set_level(logging.INFO, logger="tissuelens.progress")
    for _ in range(95):  # 10 cells a second for 95 s: lines at 30, 60, 90 s only
        clock.now += 1.0
        p.update(10)
    assert p.lines == [
        "embed: 300/1,000 cells (30%), 10 cells/s, ETA 1m10s",
        "embed: 600/1,000 cells (60%), 10 cells/s, ETA 40s",
        "embed: 900/1,000 cells (90%), 10 cells/s, ETA 10s",
    ]
    clock.now += 1.0
    p.update(50, note="loss 0.5")  # reaching the total logs at once
    assert p.lines[-1] == "embed: 1,000/1,000 cells (100%), 10.4 cells/s, done in 1m36s; loss 0.5"
    p.update(5)  # past the total: no second closing line
    assert len(p.lines) == 4 and caplog.text.count("embed:") == 4


def test_finish_closes_an_early_stop_and_disabled_logs_nothing():
    clock = Clock()
    p = Progress(5000, "factorize svgp", every=30, clock=clock)
    clock.now = 12.0
    p.update(120)
    p.finish("converged")
    assert p.lines == ["factorize svgp: 120/120 it (100%), 10 it/s, done in 12s; converged"]
    q = Progress(10, "x", enabled=False, clock=clock)
    q.update(10)
    q.finish()
    assert q.lines == []


def test_fast_rates_read_as_whole_numbers():
    clock = Clock()
    p = Progress(6000, "Loki text", unit="spots", clock=clock)
    clock.now = 3.0
    p.update(6000)
    assert p.lines == ["Loki text: 6,000/6,000 spots (100%), 2,000 spots/s, done in 3s"]


def test_duration_formats():
    assert [duration(s) for s in (0.4, 59, 125, 3720)] == ["0s", "59s", "2m05s", "1h02m"]
