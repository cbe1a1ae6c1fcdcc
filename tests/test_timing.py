"""The timing loop's stopping rules, driven by a fake clock: deterministic, no sleeping."""

from __future__ import annotations

import pytest

from chipbench.scenarios import MeasureSettings, measure, measure_on_device


class FakeClock:
    """A clock that only moves when a query runs: each query takes the next scripted number of
    seconds (the last one repeats). Reading it costs nothing."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = list(durations)
        self.queries = 0

    def __call__(self) -> float:
        return self.now

    def query(self) -> None:
        i = min(self.queries, len(self.durations) - 1)
        self.now += self.durations[i]
        self.queries += 1

    def timer(self, n: int) -> list[float]:
        """A device timer: `n` queries back to back, each one's seconds."""
        out = []
        for _ in range(n):
            before = self.now
            self.query()
            out.append(self.now - before)
        return out


def settings(**kw) -> MeasureSettings:
    base = dict(warmup_count=0, warmup_s=0.0, min_count=1, min_duration_s=0.0, max_duration_s=1e9, max_count=10**6)
    return MeasureSettings(**{**base, **kw})


def test_min_count_is_met_when_queries_are_fast():
    clock = FakeClock([0.001])
    m = measure(clock.query, settings(min_count=20, min_duration_s=0.0), clock)
    assert len(m.samples_s) == 20 and m.note is None
    assert m.samples_s == pytest.approx([0.001] * 20)


def test_min_duration_is_met_after_the_count():
    clock = FakeClock([0.0078125])  # 2**-7 s: exact in binary
    m = measure(clock.query, settings(min_count=5, min_duration_s=1.0), clock)
    assert len(m.samples_s) == 128 and m.wall_s == 1.0 and m.note is None


def test_max_count_stops_a_fast_cell_before_its_duration():
    clock = FakeClock([1e-6])
    m = measure(clock.query, settings(min_count=10, min_duration_s=60.0, max_count=500), clock)
    assert len(m.samples_s) == 500 and m.note is None


def test_max_duration_stops_a_slow_cell_with_a_note_naming_what_it_missed():
    clock = FakeClock([2.0])
    m = measure(clock.query, settings(min_count=100, min_duration_s=1.0, max_duration_s=10.0), clock)
    assert len(m.samples_s) == 5
    assert m.note == "stopped at max_duration_s=10 with 5 < min_count=100 queries"


def test_max_duration_still_takes_three_samples():
    clock = FakeClock([50.0])
    m = measure(clock.query, settings(min_count=100, max_duration_s=10.0), clock)
    assert len(m.samples_s) == 3 and "3 < min_count=100" in m.note


def test_warm_up_runs_its_count_and_its_seconds_untimed():
    clock = FakeClock([5.0, 5.0, 0.1])  # two slow first runs, then steady
    m = measure(clock.query, settings(warmup_count=2, warmup_s=0.5, min_count=10), clock)
    # warm-up: the two slow runs (10 s > 0.5 s), then nothing more; the samples never see them
    assert clock.queries == 12 and max(m.samples_s) == pytest.approx(0.1)


def test_warm_up_goes_on_until_its_seconds_pass():
    clock = FakeClock([0.125])  # exact in binary: no rounding at the boundary
    measure(clock.query, settings(warmup_count=1, warmup_s=1.0, min_count=1), clock)
    assert clock.queries == 8 + 1  # eight warm-up runs reach 1 s, then one timed query


def test_warm_up_of_a_very_slow_query_stops_at_max_duration():
    clock = FakeClock([100.0])
    m = measure(clock.query, settings(warmup_count=50, max_duration_s=10.0, min_count=100), clock)
    # one warm-up run exceeds max_duration_s; then three timed queries and the note
    assert clock.queries == 1 + 3 and len(m.samples_s) == 3 and m.note


def test_device_timer_counts_device_time_and_grows_its_rounds():
    clock = FakeClock([0.002])
    calls = []

    def timer(n):
        calls.append(n)
        return clock.timer(n)

    m = measure_on_device(timer, settings(warmup_count=3, min_count=50, min_duration_s=0.5), clock)
    assert calls[0] == 3  # warm-up, untimed
    assert len(m.samples_s) >= 250 and sum(m.samples_s) >= 0.5 and m.note is None
    assert calls[1:4] == [1, 2, 4]  # rounds double, bounded by what the minimums still need
    assert len(m.samples_s) == sum(calls[1:])


def test_device_timer_stops_at_max_duration_by_the_host_clock():
    clock = FakeClock([0.001])

    def timer(n):  # the device is fast, but each round trip costs 4 s of host time
        out = clock.timer(n)
        clock.now += 4.0
        return out

    m = measure_on_device(timer, settings(min_count=1000, min_duration_s=10.0, max_duration_s=10.0), clock)
    assert m.note is not None and m.note.startswith("stopped at max_duration_s=10 with")
    assert "< min_count=1000" in m.note and "< min_duration_s=10" in m.note
