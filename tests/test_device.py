"""Devices as cells name them, and measurement on a device's own clock."""

import pytest

from chipbench.device import Device, DeviceError, default_device
from chipbench.scenarios import MeasureSettings, measure_on_device


@pytest.mark.parametrize("text, device", [
    ("cpu", Device("cpu")),
    ("cuda", Device("cuda", index=0)),
    ("cuda:3", Device("cuda", index=3)),
    ("rpc://127.0.0.1:9190/rk3588", Device("rpc", host="127.0.0.1", port=9190, key="rk3588")),
])
def test_device_strings_round_trip(text, device):
    parsed = Device.parse(text)
    assert parsed == device
    assert Device.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "rpc://host/key", "rpc://h:0/k", "rpc://h:70000/k", ""])
def test_unknown_devices_are_refused_with_what_is_accepted(text):
    with pytest.raises(DeviceError, match="cpu, cuda"):
        Device.parse(text)


def test_a_backend_without_devices_runs_on_the_cpu():
    class Old:
        pass

    class Gpu:
        devices = ("cuda", "rpc")

    assert default_device(Old()) == Device("cpu")
    assert default_device(Gpu()) == Device("cuda")


def test_device_clock_measurement_meets_the_minimums_in_growing_rounds():
    calls = []

    def timer(n):  # a device that takes 2 ms per query, by its own clock
        calls.append(n)
        return [0.002] * n

    settings = MeasureSettings(warmup_count=3, min_count=50, min_duration_s=0.2, max_duration_s=30)
    m = measure_on_device(timer, settings)
    assert calls[0] == 3  # warm-up, not kept
    assert len(m.samples_s) >= 100 and sum(m.samples_s) >= 0.2  # 0.2 s of device time
    assert max(calls[1:]) <= 1000 and len(calls) < 20 and m.note is None


def test_a_stop_at_max_duration_names_the_minimum_it_missed():
    from chipbench.scenarios import stop

    settings = MeasureSettings(min_count=100, min_duration_s=5.0, max_duration_s=1.0)
    assert stop(settings, 200, 0.5, 1.2) == (True, "stopped at max_duration_s=1 with 0.5 s < min_duration_s=5 measured")
    assert stop(settings, 50, 6.0, 1.2)[1] == "stopped at max_duration_s=1 with 50 < min_count=100 queries"
    assert stop(settings, 200, 6.0, 0.1) == (True, None)
    assert stop(settings, 2, 0.0, 9.0) == (False, None)  # fewer than 3 queries never stop early
