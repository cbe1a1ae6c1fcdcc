"""The Backend contract: every runtime family plugs in here.

A backend turns a model source (ONNX file, plus the torch builder when there is one) and a
compile spec into a `Compiled` object whose `run` returns host arrays after the device is done.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from chipbench.device import Device
from chipbench.plugins import load_plugins

Arrays = dict[str, np.ndarray]


class Unsupported(Exception):
    """This backend cannot run this model or configuration (a reason, not a crash).
    `ops` names the ONNX operators at fault, when that is what it is."""

    def __init__(self, message: str, ops: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.ops = tuple(ops)


def require_precision(backend: Backend, spec: CompileSpec, source: ModelSource | None = None) -> None:
    """Unsupported unless the backend can run `spec.precision`: a graph is always run in the
    precision it already computes in (`source.precision`); other precisions are conversions."""
    if source is not None and spec.precision == source.precision:
        return
    if spec.precision not in backend.precisions:
        raise Unsupported(f"{backend.name} runs {', '.join(backend.precisions)}, not {spec.precision}")


def converts(spec: CompileSpec, source: ModelSource) -> bool:
    """Whether the graph must be converted to `spec.precision` (it computes in another one)."""
    return spec.precision != source.precision


def calibration_of(spec: CompileSpec) -> tuple[Callable[[], list[Arrays]], Mapping[str, Any]]:
    if spec.calibration is None or spec.calibration_key is None:
        raise Unsupported("int8 needs calibration data, and this model has none")
    return spec.calibration, spec.calibration_key


@dataclass(frozen=True)
class ModelSource:
    """What a backend may compile: the ONNX file always, the torch model when it is ours."""

    name: str
    onnx_path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    build_torch: Callable[[], Any] | None = None  # returns an eval-mode torch.nn.Module
    precision: str = "fp32"  # what the graph computes in as given (a foreign fp16 model: fp16)

    def onnx_bytes(self) -> int:
        return self.onnx_path.stat().st_size


@dataclass(frozen=True)
class CompileSpec:
    """What to build: precision, batch, the device it will run on and, for cross-compilation,
    an explicit target (backend-specific, e.g. a TVM target string or JSON)."""

    precision: str = "fp32"
    batch: int = 1
    device: Device = field(default_factory=Device)
    target: str | None = None  # overrides the target derived from `device`
    # backend-specific options; one all may read: "dynamic_shapes": True, the inputs' sizes vary
    # between calls (the generation scenario's prompt and past lengths); "artifact_bytes": False,
    # the caller needs no artifact size (a backend may skip what weighing it costs)
    options: Mapping[str, Any] = field(default_factory=dict)
    tuning_db: Path | None = None  # MetaSchedule database directory
    threads: int | None = None
    example_inputs: Arrays | None = None  # the inputs the cell will time (for ahead-of-time warm-up)
    reference_outputs: Arrays | None = None  # what the null backend hands back
    calibration: Callable[[], list[Arrays]] | None = None  # batches for static quantization
    calibration_key: Mapping[str, Any] | None = None  # what those batches are (for caches)
    # the cell's accuracy gates (chipbench.int8_gate.AccuracyGate), for choosing among int8
    # configurations the fastest that passes them; None outside a cell
    accuracy_gate: Any = None


@dataclass
class Compiled:
    """A model ready to run. `run` blocks until outputs are on the host.

    Optional capabilities (None where the backend has none):
    - `device`: what the device it runs on reports (name, memory, driver, compute capability,
      clocks for a GPU; what a remote server reports for an RPC board); the harness describes
      the host CPU when it is empty.
    - `timer(inputs, n)`: runs `n` queries on the device and returns each one's latency in
      seconds as the device measured it (CUDA events, TVM `time_evaluator`), for devices where
      a host clock would time the transfer or the network instead.
    - `profile(inputs, runs)`: a per-operator breakdown (`chipbench.opprofile.OpProfile`).
    - `export(folder)`: writes what a runtime-only runner needs into `folder` and returns the
      manifest entries (`runtime`: the module that loads it, `files`: what it wrote).
    """

    run: Callable[[Arrays], Arrays]
    compile_s: float
    artifact_bytes: int | None = None
    target: str = ""
    pipeline: str = ""
    tuning_db: str | None = None  # description/hash of the tuning records used, None = untuned
    details: dict[str, Any] = field(default_factory=dict)  # threads, providers, op coverage...
    close: Callable[[], None] | None = None
    device: dict[str, Any] = field(default_factory=dict)
    timer: Callable[[Arrays, int], list[float]] | None = None
    timer_untimed_calls: int = 0  # device calls each timer round makes outside its samples (time_evaluator: 1)
    profile: Callable[[Arrays, int], Any] | None = None
    export: Callable[[Path], dict[str, Any]] | None = None
    canned: bool = False  # returns fixed outputs whatever the input (the null backend): timed responses are not checked
    quantization: dict[str, Any] | None = None  # the int8 configuration that runs and why (chipbench.int8_search)


@runtime_checkable
class Backend(Protocol):
    """A runtime family. Optional capabilities (absent on most backends):
    - `runs_onnx = False`: it runs the torch model, so it has no ONNX operators to cover.
    - `can_compile() -> (bool, reason)`: cheap (no heavy imports), can this host compile for the
      backend's device even where it cannot run (cross-compilation: `tvm-cuda` builds GPU code on
      a host without a GPU, for a bundle to run elsewhere). Default: `available()`; see
      `compile_capability`.
    - `compile_for_bundle(source, spec) -> Compiled`: a cross-compilation whose `export` works
      and whose `run` need not (the device is elsewhere). Default: `compile`; see
      `bundle_compiler`.
    """

    name: str
    description: str
    precisions: tuple[str, ...]
    devices: tuple[str, ...]  # device kinds it runs on (chipbench.device.KINDS); the first is its default

    def available(self) -> tuple[bool, str]:
        """Cheap check (no heavy imports): can this backend run here, and if not, why not."""

    def versions(self) -> dict[str, str]:
        """Library versions that determine this backend's results."""

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled: ...


def compile_capability(backend: Backend) -> tuple[bool, str]:
    """Can this host compile with `backend` (not necessarily run): its `can_compile()` when it
    has one, else its `available()`."""
    can_compile = getattr(backend, "can_compile", None)
    return can_compile() if callable(can_compile) else backend.available()


def bundle_compiler(backend: Backend) -> Callable[[ModelSource, CompileSpec], Compiled]:
    """What builds a bundle with `backend`: its `compile_for_bundle` when it has one (a device
    elsewhere), else its `compile` (which builds, and so checks, on this machine)."""
    return getattr(backend, "compile_for_bundle", None) or backend.compile


_REGISTRY: dict[str, Callable[[], Backend]] = {}
_BUILTIN_MODULES = ("ort", "tvm", "tvm_tuned", "tvm_cuda", "torch_backends", "openvino", "null")
_loaded = False


def register(name: str):
    """Class decorator: make a backend known by `name`."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"chipbench.backends.{mod}")
    load_plugins("chipbench.backends")


def backend_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    _load_all()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown backend '{name}' (known: {', '.join(_REGISTRY)})") from None
