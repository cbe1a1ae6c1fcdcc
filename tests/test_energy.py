"""Measured device energy: the NVML sampler (with a fake NVML), and the meter the harness uses."""

from __future__ import annotations

import threading

import pytest

from chipbench.energy import COUNTER, POWER, EnergySampler, EnergyUnavailable, Meter, meter_for, trapezoid_joules


class FakeClock:
    """Seconds that advance only when told (or by `tick` per read)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now += self.tick
            return self.now


class FakeNvml:
    """pynvml's two readings: a millijoule counter and a milliwatt power draw, driven by a
    fake clock (the device draws `watts` all along); either can be unsupported."""

    class NVMLError(Exception):
        pass

    def __init__(self, clock: FakeClock, watts: float = 300.0, counter: bool = True, power: bool = True) -> None:
        self.clock, self.watts, self.counter, self.power = clock, watts, counter, power
        self.power_reads = 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise self.NVMLError("Not Supported")
        return int(5_000_000 + self.watts * self.clock.now * 1000)  # mJ since the driver loaded

    def nvmlDeviceGetPowerUsage(self, handle):
        if not self.power:
            raise self.NVMLError("Not Supported")
        self.power_reads += 1
        return int(self.watts * 1000)  # mW


def run_for(sampler: EnergySampler, clock: FakeClock, seconds: float) -> None:
    with sampler:
        clock.now += seconds


def test_counter_is_preferred_and_exact():
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=250.0)
    sampler = EnergySampler(nvml, handle=0, interval_s=0.001, counter_interval_s=0.002, clock=clock)
    run_for(sampler, clock, 2.0)
    r = sampler.reading
    assert r.method == COUNTER
    assert r.joules == pytest.approx(500.0)  # 250 W for 2 s, from the counter difference
    assert r.seconds == pytest.approx(2.0) and r.avg_watts == pytest.approx(250.0)
    assert r.samples >= 2  # power sampled at entry and exit at least
    assert r.interval_s == 0.002  # with a counter, power is sampled less often


def test_power_samples_are_integrated_where_there_is_no_counter():
    clock = FakeClock(tick=0.01)  # every clock read advances 10 ms: samples are 10 ms+ apart
    nvml = FakeNvml(clock, watts=120.0, counter=False)
    sampler = EnergySampler(nvml, handle=0, interval_s=0.001, clock=clock)
    run_for(sampler, clock, 1.0)
    r = sampler.reading
    assert r.method == POWER and r.interval_s == 0.001
    assert r.samples == len(sampler.samples) >= 2
    # constant power: the trapezoid integral is exact over the sampled span
    span = sampler.samples[-1][0] - sampler.samples[0][0]
    assert r.joules == pytest.approx(120.0 * span)
    assert r.avg_watts == pytest.approx(r.joules / r.seconds)


def test_trapezoid_rule():
    assert trapezoid_joules([(0.0, 100.0), (1.0, 200.0), (3.0, 200.0)]) == pytest.approx(150.0 + 400.0)
    assert trapezoid_joules([(0.0, 100.0)]) == 0.0


def test_no_reading_at_all_is_refused_never_estimated():
    clock = FakeClock()
    sampler = EnergySampler(FakeNvml(clock, counter=False, power=False), handle=0, clock=clock)
    with pytest.raises(EnergyUnavailable, match="neither"):
        sampler.__enter__()


def test_meter_counts_queries_and_gives_joules_per_inference():
    clock = FakeClock()
    nvml = FakeNvml(clock, watts=400.0)

    class Session:
        def __exit__(self, *exc):
            self.closed = True

    session = Session()
    meter = Meter(lambda: (session, EnergySampler(nvml, 0, 0.001, clock=clock)), device="cuda:0")
    with meter:
        timer = meter.timer(lambda n: [0.001] * n)
        timer(3)  # warm-up queries run inside the window count too
        timer(7)
        query = meter.query(lambda: None)
        query()
        clock.now += 0.5  # the device drew 400 W for 0.5 s: 200 J
    energy = meter.result(batch=8)
    assert session.closed
    assert energy["method"] == COUNTER and energy["device"] == "cuda:0"
    assert energy["queries"] == 11 and energy["inferences"] == 88
    assert energy["joules"] == pytest.approx(200.0)
    assert energy["joules_per_inference"] == pytest.approx(200.0 / 88)
    assert meter.note is None


def test_meter_without_nvml_says_why():
    def broken():
        raise ImportError("No module named 'pynvml'")

    meter = Meter(broken, device="cuda:0")
    with meter:
        meter.timer(lambda n: [0.001] * n)(4)
    assert meter.result(1) is None
    assert meter.note.startswith("energy not measured on cuda:0: ImportError")


def test_cpu_cells_get_a_meter_that_changes_nothing():
    meter = meter_for({"kind": "cpu", "id": "cpu"})

    def query():
        return 1

    assert meter.query(query) is query  # the timed callable is the very same object
    with meter:
        pass
    assert meter.result(4) is None and meter.note is None
    assert meter_for(None).result(1) is None


def test_a_cuda_meter_here_has_no_energy_and_a_reason():
    meter = meter_for({"kind": "cuda", "id": "cuda:0"})
    with meter:
        meter.timer(lambda n: [0.001] * n)(2)
    assert meter.result(1) is None
    assert meter.note and "energy not measured on cuda:0" in meter.note
