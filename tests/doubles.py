"""Test doubles, loaded into cell subprocesses through CHIPBENCH_PLUGINS=doubles.

A tiny workload (fast to export and run everywhere) and backends that crash, hang, or lie.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from chipbench.backends.base import Compiled, register as register_backend
from chipbench.backends.null import NullBackend
from chipbench.workloads.base import Workload, register as register_workload


def _tiny_net(features: int, hidden: int, classes: int):
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.GELU(), torch.nn.LayerNorm(hidden),
        torch.nn.Linear(hidden, classes),
    )


@register_workload
@dataclass(frozen=True)
class TinyMlp(Workload):
    name = "tiny-mlp"
    scenario = "test double: a two-layer MLP on sensor features"
    features: int = 16
    hidden: int = 32
    classes: int = 4

    def build(self):
        import torch

        torch.manual_seed(self.seed)
        return _tiny_net(self.features, self.hidden, self.classes).eval()

    def make_inputs(self, batch, seed):
        rng = np.random.default_rng(seed)
        return {"input": rng.standard_normal((batch, self.features), dtype=np.float32)}


@register_backend("crash-double")
class CrashBackend(NullBackend):
    description = "segfaults while compiling"

    def compile(self, source, spec):
        os.abort()


@register_backend("hang-double")
class HangBackend(NullBackend):
    description = "never finishes compiling"

    def compile(self, source, spec):
        time.sleep(3600)


@register_backend("noisy-double")
class NoisyBackend(NullBackend):
    """Returns the reference plus a deliberate error: the accuracy gate must catch it."""

    description = "perturbs outputs"

    def compile(self, source, spec):
        canned = {k: v + np.float32(0.5) for k, v in (spec.reference_outputs or {}).items()}
        return Compiled(run=lambda inputs: canned, compile_s=0.0, target="none", pipeline="none")


@register_backend("nan-to-zero-double")
class NanToZeroBackend(NullBackend):
    """Returns the reference with every NaN replaced by 0 (as a max(x, 0) Relu does to NaN):
    a non-finite mismatch that the accuracy gate must never score as perfect."""

    description = "replaces NaN outputs by 0"

    def compile(self, source, spec):
        canned = {k: np.where(np.isnan(v), np.zeros_like(v), v) for k, v in (spec.reference_outputs or {}).items()}
        return Compiled(run=lambda inputs: canned, compile_s=0.0, target="none", pipeline="none")


@register_backend("missing-double")
class MissingBackend(NullBackend):
    description = "a runtime that is not installed"

    def available(self):
        return False, "libfoo runtime not found"


@register_workload
@dataclass(frozen=True)
class TinyClassifier(TinyMlp):
    """tiny-mlp with labelled data: the labels are the FP32 model's own predictions, so the
    reference accuracy is exactly 1 and any backend that computes something else shows it."""

    name = "tiny-classifier"
    scenario = "test double: classify sensor feature vectors"
    task_metric = "accuracy"
    higher_is_better = True

    def dataset(self, split, n=None):
        import torch

        n = n or 64
        x = np.random.default_rng({"train": 1, "calibration": 2, "test": 3}[split]).standard_normal(
            (n, self.features), dtype=np.float32)
        with torch.inference_mode():
            labels = self.build()(torch.from_numpy(x)).argmax(1).numpy()
        return {"input": x}, labels

    def metric(self, outputs, labels):
        return float((outputs["output"].argmax(1) == labels).mean())


@register_backend("sleepy-double")
class SleepyBackend(NullBackend):
    """Compiles for SLEEPY_SECONDS (default 60): a cell that is still running when the sweep is
    interrupted. The delay lives in the environment, not the cell, so a resumed sweep can
    make it quick without changing the cell's configuration."""

    description = "compiles slowly"

    def compile(self, source, spec):
        time.sleep(float(os.environ.get("SLEEPY_SECONDS", "60")))
        return super().compile(source, spec)


@register_backend("flaky-double")
class FlakyBackend(NullBackend):
    """Fails while FLAKY_FAIL is set: a rerun that fails transiently."""

    description = "fails when FLAKY_FAIL is set"

    def compile(self, source, spec):
        if os.environ.get("FLAKY_FAIL"):
            raise RuntimeError("transient failure")
        return super().compile(source, spec)


@register_backend("native-sleepy-double")
class NativeSleepyBackend(NullBackend):
    """Starts a child process, then blocks in native code (libc sleep, no Python bytecode runs):
    a cell stuck in a long compiler or runtime call when its sweep is killed."""

    description = "blocks in native code with a child running"

    def compile(self, source, spec):
        import ctypes
        import subprocess

        subprocess.Popen(["sleep", "600"])
        ctypes.CDLL(None).sleep(600)
        return super().compile(source, spec)


@register_backend("skewed-double")
class SkewedBackend(NullBackend):
    """ONNX Runtime's outputs with 1 % added to every floating-point value: a backend that runs
    and computes the wrong values (a conformance WRONG)."""

    description = "ONNX Runtime, floating-point outputs 1 % too large"

    def compile(self, source, spec):
        import onnxruntime as ort

        session = ort.InferenceSession(str(source.onnx_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def run(inputs):
            outs = dict(zip(names, session.run(names, inputs)))
            return {k: v * v.dtype.type(1.01) if np.issubdtype(v.dtype, np.floating) else v for k, v in outs.items()}

        return Compiled(run=run, compile_s=0.0, target="cpu", pipeline="skewed")


def accurate(rec) -> bool:
    """Whether a measured record passed every accuracy rule of its verdict (chipbench.validity):
    what a test of numerics asserts when its run is too short to support a tail estimate."""
    rules = rec["validity"] if isinstance(rec, dict) else rec.validity
    gates = [r for r in rules or [] if r["rule"].startswith("accuracy-")]
    return bool(gates) and all(r["passed"] for r in gates)
