"""The measured part of a record (latency, throughput, accuracy, verdict), importable without
torch, ONNX or TVM: the bundle runner builds its records with it on a machine that has only
numpy and a backend's runtime. `chipbench.cell` builds the same fields for in-process cells.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from chipbench.accuracy import Tolerance, check, fidelity
from chipbench.energy import Meter, meter_for
from chipbench.measures import Accuracy, Throughput
from chipbench.samples import encode as encode_samples
from chipbench.scenarios import Measurement, MeasureSettings, measure, measure_on_device
from chipbench.stats import LatencyStats
from chipbench.validity import Rule, judged

Arrays = dict[str, np.ndarray]


def timed_run(run: Callable[[Arrays], Arrays], timer: Callable[[Arrays, int], list[float]] | None,
              inputs: Arrays, settings: MeasureSettings, device: Mapping[str, Any] | None,
              timer_untimed_calls: int = 0) -> tuple[Measurement, Meter]:
    """Time `inputs` as the scenario's settings say, by the device's own clock when there is a
    `timer` (transfers and the network stay outside the samples), else by the host clock around
    `run`; on a CUDA device the meter measures the energy of every query meanwhile (see
    chipbench.energy). Returns the measurement and the meter (its `result(batch)`, `note`)."""
    meter = meter_for(device)
    with meter:
        if timer is not None:
            m = measure_on_device(meter.timer(lambda n: timer(inputs, n), timer_untimed_calls), settings)
        else:
            m = measure(meter.query(lambda: run(inputs)), settings)
    return m, meter


def measured_fields(samples_s: list[float], batch: int, outputs: Mapping[str, np.ndarray],
                    reference: Mapping[str, np.ndarray], gate: Tolerance, tolerance: Mapping[str, Any],
                    seed: int = 0, task: dict[str, Any] | None = None, rules: Sequence[Rule] = (),
                    scenario: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """latency (LatencyStats, ms, of `samples_s`, seconds per query, with the raw samples kept in
    `latency.samples`, chipbench.samples' encoding), throughput (batch × queries /
    summed query seconds, samples/s), accuracy (fidelity of `outputs` to `reference` against
    `gate`: an output missing or misshapen fails it; and the task metric's result `task` with
    its failures, where there is one) and the verdict with its named rules (chipbench.validity:
    the accuracy gates, the rules `scenario` supports, and the harness's `rules`, e.g. the
    measurement's minimums and the machine's quiet), as RunRecord keyword arguments.
    ValueError when there are no samples."""
    fid = fidelity(outputs, reference)
    failures = check(fid, gate) + list((task or {}).get("failures", []))
    stats = replace(LatencyStats.from_samples(samples_s, seed=seed), samples=encode_samples(samples_s))
    fields = {
        "latency": stats,
        # samples per second: the batch that ran, never a guess from an input's first dimension
        "throughput": Throughput(batch * len(samples_s) / float(np.sum(samples_s)), "samples/s"),
        "accuracy": Accuracy(fid, dict(tolerance), tuple(failures), task),
    }
    return {**fields, **judged(fields["accuracy"], fields["latency"], scenario, rules)}


def this_machine() -> dict[str, Any]:
    """The machine the runner runs on (`chipbench.machine.machine_info`, psutil or not)."""
    from chipbench.machine import machine_info

    return dict(machine_info())
