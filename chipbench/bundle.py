"""Compile one cell here and write it as a bundle for another machine (see bundle_format.py).

The host does everything that needs torch, ONNX or a compiler: it exports the model, makes
the inputs and the FP32 reference, compiles, and asks the compiled artifact to write what a
runtime-only runner needs (`Compiled.export`). The manifest then records every file's sha256
with the provenance a record carries (model hash, backend and versions, target, pipeline,
tuning database, host machine, library versions, git commit, cell config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chipbench.bundle_format import (FORMAT, FORMAT_VERSION, INPUTS, MANIFEST, REFERENCE, RUNTIME_MODULES,
                                     file_entry, save_arrays)
from chipbench.paths import atomic_write_text
from chipbench.measures import finite
from chipbench.suite import Cell


class BundleRefused(Exception):
    """The cell cannot be bundled (bad input, unavailable or unsupported backend, no export);
    `code` is the CLI exit status (2 for bad input, 1 otherwise)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Bundled:
    """What `make_bundle` wrote: the folder, its manifest, the total bytes of its files and
    remarks for the user."""

    folder: Path
    manifest: dict[str, Any]
    total_bytes: int
    remarks: tuple[str, ...] = ()  # for the user, e.g. why weights over the leave-out limit still travel


def make_bundle(cell: Cell, out: Path, leave_out_bytes: int | None = None) -> Bundled:
    """Prepare, compile and export `cell` into the new (or empty) folder `out`. With
    `leave_out_bytes`, weights larger than that many bytes are left out, for the device to
    rebuild from the workload's seeded model (chipbench.bundle_rebuild). BundleRefused with a
    one-line reason when that cannot be done."""
    from chipbench.backends.base import Unsupported, bundle_compiler, compile_capability, get_backend
    from chipbench.byo import ModelError
    from chipbench.cell import compile_spec, coverage, describe_workload, onnx_ops, prepare
    from chipbench.device import Device, DeviceError, default_device, supported_kinds
    from chipbench.errors import one_line
    from chipbench.machine import git_commit, library_versions, machine_info
    from chipbench.prepare import PrepareError
    from chipbench.scenarios import batch_for

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleRefused(f"--out {out}: exists and is not an empty folder", 2)
    try:
        backend = get_backend(cell.backend)
    except KeyError as exc:
        raise BundleRefused(str(exc).strip("'\""), 2) from None
    # cross-compiling backends say whether this host can compile for the device (`can_compile`)
    ok, why = compile_capability(backend)
    if not ok:
        raise BundleRefused(f"{cell.backend} unavailable: {why}")
    try:
        device = Device.parse(cell.device) if cell.device else default_device(backend)
    except DeviceError as exc:
        raise BundleRefused(str(exc), 2) from None
    if device.kind == "rpc" or device.kind not in supported_kinds(backend):
        raise BundleRefused(f"--device {device}: a bundle runs on a local device of {cell.backend} "
                            f"({', '.join(k for k in supported_kinds(backend) if k != 'rpc')})", 2)
    batch = batch_for(cell.scenario, cell.batch, cell.settings)
    try:
        prep = prepare(cell, batch)
    except (PrepareError, ModelError, KeyError, TypeError, ValueError) as exc:
        raise BundleRefused(f"prepare: {one_line(exc)}", 2) from None
    except Exception as exc:  # e.g. the reference runtime refusing the model
        raise BundleRefused(f"prepare: {one_line(exc)}") from None
    prepared = prep.prepared
    spec = compile_spec(cell, prep, device)
    try:
        compiled = bundle_compiler(backend)(prepared.source, spec)
    except Unsupported as exc:
        raise BundleRefused(f"{cell.backend} unsupported: {exc}") from None
    except Exception as exc:
        raise BundleRefused(f"compile: {one_line(exc)}") from None
    if compiled.export is None:
        raise BundleRefused(f"{cell.backend} cannot write a bundle (its compiled model offers no export)")
    created = not out.exists()
    extra: dict = {}
    remarks: list[str] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = dict(compiled.export(out))
        input_names = save_arrays(out / INPUTS, prepared.inputs)
        output_names = save_arrays(out / REFERENCE, prepared.reference)
        if leave_out_bytes is not None and entries.get("params"):  # the backend's weights file (.npz)
            made = _leave_out(out, entries["params"], prep, leave_out_bytes)
            extra, remarks = made.manifest, [made.note] if made.note else []
            entries["files"] = [*entries["files"], *made.files]
    except BundleRefused:
        _remove(out, created)
        raise
    except Exception as exc:
        _remove(out, created)
        raise BundleRefused(f"export: {one_line(exc)}") from None
    finally:
        if compiled.close:
            compiled.close()
    if entries.get("module") not in RUNTIME_MODULES:
        _remove(out, created)
        raise BundleRefused(f"{cell.backend} export names runtime {entries.get('module')!r}, not one of "
                            f"{', '.join(RUNTIME_MODULES)}")
    names = [*entries.pop("files"), INPUTS, REFERENCE]
    ops = onnx_ops(prepared.source.onnx_path)  # a bundle always holds an ONNX-derived artifact
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cell": cell.to_dict(),
        "device": {"kind": device.kind, "id": str(device)},
        "workload": describe_workload(cell),
        "model": {"onnx_sha256": prepared.onnx_sha256, "exporter": prepared.exporter, "opset": prepared.opset,
                  "inputs": input_names, "outputs": output_names},
        "batch": prep.batch,
        "precision": prep.precision,
        "backend": {"name": cell.backend, "versions": backend.versions(), "target": compiled.target,
                    "pipeline": compiled.pipeline, "tuning_db": compiled.tuning_db, "details": compiled.details},
        "compile": {"seconds": compiled.compile_s, "artifact_bytes": compiled.artifact_bytes},
        "tolerance": finite(dict(vars(prep.tolerance))),
        "notes": prep.notes,
        "coverage": coverage(ops, "ran") if ops else None,
        "work": prep.work,
        "host": {"machine": machine_info(), "libraries": library_versions(), "git_commit": git_commit()},
        "runtime": entries,
        "files": {name: file_entry(out / name) for name in names},
        **extra,  # left_out and rebuild, when weights were left out
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False, default=str)
    try:
        atomic_write_text(out / MANIFEST, text)
    except OSError as exc:
        _remove(out, created)
        raise BundleRefused(f"{out / MANIFEST}: cannot write the manifest ({exc.strerror or exc})") from None
    total = sum(e["bytes"] for e in manifest["files"].values()) + len(text.encode())
    return Bundled(out, manifest, total, tuple(remarks))


def _leave_out(out: Path, params: str, prep: Any, min_bytes: int) -> Any:
    """Leave the weights of `out/params` over `min_bytes` that the device can rebuild out
    (chipbench.bundle_rebuild.leave_out, whose LeftOut it returns); BundleRefused when the
    workload's seeded model does not fit its built one."""
    from chipbench.bundle_rebuild import RebuildError, leave_out

    prepared = prep.prepared
    try:
        built = prepared.source.build_torch() if prep.workload is not None else None
        return leave_out(out, params, prep.workload, built, prepared.source.onnx_path, prep.batch, min_bytes)
    except RebuildError as exc:
        raise BundleRefused(f"leave out weights: {exc}") from None


def _remove(out: Path, created: bool) -> None:
    """Leave no half-written bundle behind: the folder goes if this call made it, else its files."""
    import shutil

    if created:
        shutil.rmtree(out, ignore_errors=True)
    else:
        for path in out.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
