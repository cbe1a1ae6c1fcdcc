"""Measure a bundle on the machine it was carried to, with the runtime side only.

    python -m chipbench.bundle_runner BUNDLE --out RECORDS.json [--scenario single-stream|offline]
        [--min-duration S] [--min-count N] [--max-duration S] [--device-index I]

Verifies every file against the manifest (and every array left out of it, rebuilt here by
chipbench.bundle_rebuild, against its sha256), loads the artifact with the runtime module the
manifest names (chipbench.backends.tvm_runtime or .ort_runtime), and measures it with the
harness's own scenarios (chipbench.scenarios), statistics (chipbench.stats) and fidelity
(chipbench.accuracy) against the bundled reference. Model load and the first inference are
timed apart (cold start). Writes one records file (bundle_format.records_document) that
`chipbench import` verifies and stores on the compiling host.

Imports numpy, the backend's runtime and those harness modules only: torch and ONNX are
refused and TVM loads libtvm_runtime.so without libtvm_compiler.so (chipbench.runtime_guard).
Note that loading a bundle runs its native code (a compiled library is code): run bundles
you made or trust.

Exit status: 0 measured, 1 the cell failed to load or run (a failed record is still written),
2 bad input (a flag, or a bundle whose files do not match its manifest), with one `error:` line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from chipbench import runtime_guard
from chipbench.accuracy import Tolerance
from chipbench.bundle_format import (INPUTS, REFERENCE, BundleError, bundle_members, check_left_out, left_out,
                                     load_arrays, records_document, verify)
from chipbench.paths import atomic_write_text
from chipbench.record import RunRecord
from chipbench.measures import finite
from chipbench.recording import measured_fields, this_machine, timed_run
from chipbench.validity import measurement_rule
from chipbench.scenarios import SCENARIOS, MeasureSettings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as the chipbench CLI does
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _at_least(kind: type, low: float, inclusive: bool = True):
    """An argparse type: `kind` values >= `low` (> `low` when not `inclusive`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is not {'>=' if inclusive else '>'} {low:g}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m chipbench.bundle_runner", description=__doc__.split("\n\n")[1])
    p.add_argument("bundle", type=Path, help="the bundle folder (from `chipbench bundle`)")
    p.add_argument("--out", type=Path, required=True, help="records file to write (JSON)")
    p.add_argument("--scenario", choices=SCENARIOS, help="default: the bundled cell's")
    p.add_argument("--min-duration", type=_at_least(float, 0), help="seconds of timed queries at least")
    p.add_argument("--min-count", type=_at_least(int, 1), help="timed queries at least")
    p.add_argument("--max-duration", type=_at_least(float, 0, inclusive=False),
                   help="seconds at most (the record says when it stopped there)")
    p.add_argument("--device-index", type=_at_least(int, 0), default=0, help="which device of the bundle's kind (cuda:N)")
    return p


def _settings(cell: dict[str, Any], args: argparse.Namespace) -> MeasureSettings:
    settings = MeasureSettings(**cell.get("settings", {}))
    overrides = {"min_duration_s": args.min_duration, "min_count": args.min_count,
                 "max_duration_s": args.max_duration}
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _scenario(manifest: dict[str, Any], wanted: str | None, bundle: Path) -> str:
    scenario = wanted or manifest["cell"]["scenario"]  # as compiled (a foreign model's own batch may be > 1)
    if wanted == "single-stream" and manifest["batch"] != 1:
        raise BundleError(bundle, f"--scenario single-stream needs batch 1; this bundle was compiled "
                                  f"for batch {manifest['batch']} (use offline)")
    return scenario


def _device(manifest: dict[str, Any], loaded_device: dict[str, Any], index: int) -> dict[str, Any]:
    kind = manifest["device"]["kind"]
    machine = this_machine()
    described = {"kind": kind, "id": f"{kind}:{index}" if kind == "cuda" else kind,
                 "name": machine["cpu_model"], **loaded_device, "machine": machine}
    return described


def _runtime(versions: dict[str, str]) -> dict[str, Any]:
    import chipbench

    libs = runtime_guard.native_libraries("libtvm")
    return {"runner": "chipbench.bundle_runner", "chipbench": chipbench.__version__,
            "python": platform.python_version(), "numpy": np.__version__, "versions": versions,
            "tvm_compiler_loaded": any("libtvm_compiler" in p for p in libs)}


def run_bundle(bundle: Path, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Verify, load, measure; returns (records document, exit status). BundleError for bad input."""
    manifest, manifest_sha = verify(bundle)
    scenario = _scenario(manifest, args.scenario, bundle)
    settings = _settings(manifest["cell"], args)
    cell = {**manifest["cell"], "scenario": scenario, "settings": settings.to_dict()}
    model = manifest["model"]
    check_left_out(bundle, manifest)  # arrays too large to carry: rebuilt here, equal to the host's
    inputs = load_arrays(bundle / INPUTS, model["inputs"], bundle_members(bundle, INPUTS, manifest))
    reference = load_arrays(bundle / REFERENCE, model["outputs"], bundle_members(bundle, REFERENCE, manifest))
    host = manifest["host"]
    fields: dict[str, Any] = dict(
        workload=manifest["workload"], backend=manifest["backend"], precision=manifest["precision"],
        batch=manifest["batch"], scenario={"name": scenario, "settings": settings.to_dict()},
        coverage=manifest.get("coverage"), work=manifest.get("work"))
    provenance: dict[str, Any] = {
        "onnx_sha256": model["onnx_sha256"], "exporter": model["exporter"], "opset": model["opset"],
        "libraries": host["libraries"], "machine": host["machine"], "git_commit": host["git_commit"],
        "seed": cell["seed"], "config": cell,
        "bundle": {"manifest_sha256": manifest_sha, "created": manifest["created"],
                   "compiled_on": host["machine"].get("hostname"), "folder": bundle.name},
    }
    notes = list(manifest.get("notes", [])) + [f"measured by the bundle runner from bundle {manifest_sha[:12]}, "
                                                 f"compiled on {host['machine'].get('hostname')}"]
    rebuilt = [entry for members in left_out(manifest).values() for entry in members.values()]
    if rebuilt:
        notes.append(f"{len(rebuilt)} array(s) ({sum(e['bytes'] for e in rebuilt) / 2**20:.1f} MiB) left out of the bundle, "
                     f"rebuilt on this machine ({manifest.get('rebuild', {}).get('recipe', '?')}) and checked by sha256")
    if manifest["workload"].get("task_metric"):
        notes.append("task metric not measured by the bundle runner (fidelity to the bundled reference only)")
    compile_info = dict(manifest["compile"])
    runtime = importlib.import_module(manifest["runtime"]["module"])  # one of bundle_format.RUNTIME_MODULES

    def failed(stage: str, exc: BaseException, **extra) -> tuple[dict[str, Any], int]:
        reason = f"{stage}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:400]
        provenance.setdefault("device", {"kind": manifest["device"]["kind"], "id": manifest["device"]["id"],
                                         "name": this_machine()["cpu_model"], "machine": this_machine()})
        record = RunRecord(**fields, status="failed", reason=reason, compile=compile_info,
                           provenance=provenance, notes=notes, **extra)
        return records_document(manifest_sha, [record.to_dict()]), 1

    try:
        loaded = runtime.load(bundle, manifest["runtime"], model["inputs"], model["outputs"], args.device_index)
    except Exception as exc:
        return failed("load", exc)
    provenance["device"] = _device(manifest, loaded.device, args.device_index)
    provenance["runtime"] = _runtime(loaded.versions)
    compile_info["load_s"] = loaded.load_s
    try:
        start = time.perf_counter()
        outputs = loaded.run(inputs)
        compile_info["first_run_s"] = time.perf_counter() - start  # cold start, apart from run time
        m, meter = timed_run(loaded.run, loaded.timer, inputs, settings, provenance["device"],
                             loaded.timer_untimed_calls)
        fields["energy"] = meter.result(manifest["batch"])
        gate = Tolerance.from_dict(manifest["tolerance"])
        measured = measured_fields(m.samples_s, manifest["batch"], outputs, reference, gate,
                                   finite(manifest["tolerance"]), seed=cell["seed"], rules=[measurement_rule(m.note)])
    except Exception as exc:
        return failed("run", exc)
    finally:
        loaded.close()
    record = RunRecord(**fields, **measured, status="ok", compile=compile_info, provenance=provenance,
                       notes=notes + [n for n in (m.note, meter.note) if n])
    return records_document(manifest_sha, [record.to_dict()]), 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status. Makes this process runtime-only first."""
    import json

    runtime_guard.enforce()  # before anything imports tvm_ffi (which would import torch) or tvm
    args = _parser().parse_args(argv)
    if not os.access(args.out.parent if str(args.out.parent) else Path("."), os.W_OK) or args.out.is_dir():
        print(f"error: --out {args.out}: cannot write the records there", file=sys.stderr)
        return 2  # found before measuring, not after
    try:
        document, status = run_bundle(args.bundle, args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(document, indent=1, sort_keys=True, allow_nan=False, default=str)
    try:
        atomic_write_text(args.out, text)
    except OSError as exc:  # the measurement is not lost: it goes to stdout instead
        print(text)
        print(f"error: --out {args.out}: {exc.strerror or exc}; the records were written to stdout", file=sys.stderr)
        return 1
    record = document["records"][0]
    if record["status"] == "ok":
        print(f"{record['verdict']} {record['workload']['name']} x {record['backend']['name']} "
              f"[{record['precision']}, {record['scenario']['name']}]: p50 {record['latency']['median']:.4g} ms "
              f"-> {args.out}", file=sys.stderr)
    else:
        print(f"FAILED {record['reason']} -> {args.out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
