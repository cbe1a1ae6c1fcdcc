"""Compile here, run there: `chipbench bundle | import | runtime-kit | rpc tracker | rpc serve | rpc status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

_RPC_WARNING = ("A TVM RPC server runs whatever code it is sent (it uploads and loads shared libraries and "
                "writes files): bind it to 127.0.0.1 (the default) or a trusted, isolated network only.")

rpc_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help=f"Boards behind TVM's RPC tracker (tvm.rpc). {_RPC_WARNING}")


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the chipbench CLI (called at the bottom of chipbench/cli.py)."""
    app.command()(bundle)
    app.command("import")(import_cmd)
    app.command("runtime-kit")(runtime_kit)
    app.add_typer(rpc_app, name="rpc")


def bundle(
    out: Annotated[Path, typer.Option("--out", help="New (or empty) folder to write the bundle to.")],
    workload: Annotated[Optional[str], typer.Option("-w", "--workload", help="Workload name.")] = None,
    backend: Annotated[str, typer.Option("-b", "--backend", help="A backend that exports (tvm-llvm, tvm-llvm-tuned, ort-cpu, ...).")] = "tvm-llvm",
    model: Annotated[Optional[Path], typer.Option("--model", help="Your own ONNX model instead of a workload.")] = None,
    inputs: Annotated[Optional[list[str]], typer.Option("--input", help="NAME=SHAPE[:DTYPE] for a model input (repeatable).")] = None,
    input_data: Annotated[Optional[Path], typer.Option("--input-data", help="The model's inputs: .npz, .npy, .pb or a test-data folder.")] = None,
    expected: Annotated[Optional[Path], typer.Option("--expected", help="Expected outputs on --input-data.")] = None,
    scenario: Annotated[str, typer.Option("--scenario", help="single-stream or offline.")] = "single-stream",
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Offline batch size (implies --scenario offline).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16, bf16, int8.")] = "fp32",
    target: Annotated[Optional[str], typer.Option("--target", help="Compile for this target (the device's), e.g. a TVM target string.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="The device kind it will run on: cpu or cuda[:N] (default: the backend's).")] = None,
    tuning_db: Annotated[Optional[Path], typer.Option("--tuning-db", help="Where tvm-llvm-tuned looks first for its database.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Threads on the device (default: all its cores).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    min_duration: Annotated[Optional[float], typer.Option("--min-duration", min=0.0, help="Seconds the runner measures at least.")] = None,
    min_count: Annotated[Optional[int], typer.Option("--min-count", min=1, help="Queries the runner measures at least.")] = None,
    leave_out_kib: Annotated[Optional[int], typer.Option("--leave-out-kib", min=0, help="Leave out weights larger than this many KiB that the workload's seeded model reproduces: the device rebuilds them (python -m chipbench.bundle_rebuild) and checks each by sha256; other weights travel.")] = None,
) -> None:
    """Compile one cell here and write a bundle (library, parameters, inputs, reference, manifest
    of sha256 hashes) for `python -m chipbench.bundle_runner` on the device."""
    from chipbench.cli import _check_names, _checked_models, err, fail
    from chipbench.bundle import BundleRefused, make_bundle
    from chipbench.suite import SuiteError, check_cell, expand, with_overrides

    if (workload is None) == (model is None):
        fail("give exactly one of -w WORKLOAD or --model FILE")
    if batch is not None and scenario == "single-stream":
        scenario = "offline"
    common = {"seed": seed, "threads": threads, "target": target, "device": device,
              "tuning_db": str(tuning_db) if tuning_db else None}
    if model is not None:
        if not model.is_file():
            fail(f"--model {model}: no such file")
        common.update(model=str(model.resolve()), inputs=tuple(inputs or ()),
                      input_data=str(input_data.resolve()) if input_data else None,
                      expected=str(expected.resolve()) if expected else None)
    try:
        cells = expand([workload or model.stem], [backend], [precision], [scenario], **common)
        cells = with_overrides(cells, batch=batch, min_duration_s=min_duration, min_count=min_count)
        for cell in cells:
            check_cell(cell)
    except SuiteError as exc:
        fail(str(exc))
    _check_names(cells)
    cells = _checked_models([cell.with_absolute_paths() for cell in cells])
    err.print(f"chipbench: compiling {cells[0].label()} into {out}/", markup=False)
    try:
        made = make_bundle(cells[0], out, None if leave_out_kib is None else leave_out_kib * 1024)
    except BundleRefused as exc:
        fail(str(exc), exc.code)
    runtime = made.manifest["runtime"]
    left = [e for members in made.manifest.get("left_out", {}).values() for e in members.values()]
    rebuilt = (f"; {len(left)} weight(s), {sum(e['bytes'] for e in left) / 2**20:.1f} MiB, left out for the device "
               f"to rebuild") if left else ""
    err.print(f"wrote {out}/ ({made.total_bytes / 2**20:.2f} MiB; runtime {runtime['module']}, "
              f"device {runtime['device']}, target {made.manifest['backend']['target']}{rebuilt})", markup=False)
    for remark in made.remarks:
        err.print(f"note: {remark}", markup=False)
    print(out)


def import_cmd(
    records_file: Annotated[Path, typer.Argument(help="Records written by `python -m chipbench.bundle_runner`.")],
    bundle_dir: Annotated[Path, typer.Option("--bundle", help="The bundle they were measured from.")],
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where results and reports go.")] = Path("results"),
) -> None:
    """Verify every hash of the bundle and that the records belong to it, then store them."""
    from chipbench.cli import err, fail, open_store
    from chipbench.bundle_format import BundleError
    from chipbench.bundle_import import import_records
    from chipbench.store import StoreError

    store = open_store(results_dir)
    try:
        records = import_records(bundle_dir, records_file, store)
    except BundleError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=1)
    for rec in records:
        device = rec.provenance.get("device", {})
        what = f"{rec.verdict}, p50 {rec.latency.median:.4g} ms" if rec.status == "ok" else f"{rec.status}: {rec.reason}"
        err.print(f"imported {rec.id}: {rec.workload['name']} x {rec.backend['name']} on "
                  f"{device.get('name', '?')} ({what})", markup=False)


def runtime_kit(
    out: Annotated[Path, typer.Option("--out", help="New (or empty) folder for the kit.")],
    python: Annotated[Optional[str], typer.Option("--python", help="The device's Python, e.g. 3.12 (default: this one).")] = None,
    ffi_wheel: Annotated[Optional[Path], typer.Option("--ffi-wheel", help="apache-tvm-ffi wheel for that Python (else pip downloads it).")] = None,
    wheel: Annotated[Optional[list[str]], typer.Option("--wheel", help="Another wheel to unpack into the kit, e.g. numpy for that Python (repeatable).")] = None,
    cudart: Annotated[Optional[Path], typer.Option("--cudart", help="A libcudart.so to carry for CUDA bundles.")] = None,
) -> None:
    """Assemble a runtime-only TVM (libtvm_runtime + the Python it imports, tvm-ffi, the bundle
    runner) to carry to a device that has no compiler, no torch and no network."""
    from chipbench.cli import err, fail
    from chipbench.runtime_kit import CARRY_LIMIT, KitError, build_kit

    try:
        kit = build_kit(out, python, ffi_wheel, tuple(Path(w) for w in wheel or ()), cudart)
    except KitError as exc:
        fail(str(exc))
    size = kit.total_bytes / 2**20
    err.print(f"wrote {out}/: {size:.1f} MiB for Python {kit.python}; run "
              f"`{out}/run-bundle BUNDLE --out RECORDS.json` on the device", markup=False)
    if kit.total_bytes > CARRY_LIMIT:
        err.print(f"[yellow]warning: {size:.1f} MiB is over the {CARRY_LIMIT / 2**20:.0f} MiB that may travel[/yellow]",
                  markup=True)
    if not any(w.startswith("numpy") for w in kit.info["wheels"]):
        err.print("note: the device needs numpy for that Python (add --wheel numpy-....whl if it has none)",
                  markup=False)
    print(out)


def _announce(what: str):
    def announce(host: str, port: int) -> None:
        print(f"chipbench rpc {what}: listening on {host}:{port}", file=sys.stderr, flush=True)
    return announce


def _tracker_address(text: str) -> tuple[str, int]:
    from chipbench.cli import fail

    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--tracker '{text}': expected HOST:PORT")
    return host, int(port)


@rpc_app.command("tracker", help=f"Run TVM's RPC tracker (queues session requests per key). {_RPC_WARNING}")
def rpc_tracker(
    host: Annotated[str, typer.Option("--host", help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="First port to try.")] = 9190,
    port_end: Annotated[Optional[int], typer.Option("--port-end", help="Try ports below this one (default: PORT+10).")] = None,
) -> None:
    from chipbench.cli import fail
    from chipbench.rpc_server import run_tracker

    try:
        run_tracker(host, port, port_end or port + 10, _announce("tracker"))
    except (OSError, ValueError) as exc:
        fail(f"--host {host} --port {port}: {exc}", 1)


@rpc_app.command("serve", help=f"Run TVM's RPC server, registered with a tracker under a key; it also "
                               f"answers `chipbench.device_info` (CPU, cores, ISA, memory, OS, LLVM target). "
                               f"{_RPC_WARNING}")
def rpc_serve(
    tracker: Annotated[str, typer.Option("--tracker", help="The tracker, HOST:PORT.")],
    key: Annotated[str, typer.Option("--key", help="The key clients ask the tracker for (one per kind of board).")],
    host: Annotated[str, typer.Option("--host", help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="First port to try.")] = 9090,
    port_end: Annotated[Optional[int], typer.Option("--port-end", help="Try ports below this one (default: PORT+100).")] = None,
    runtime_only: Annotated[bool, typer.Option("--runtime-only", help="Load TVM's runtime library only, as a board without the compiler (no LLVM target reported).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="TVM runtime threads (default: every usable core).")] = None,
    custom_addr: Annotated[Optional[str], typer.Option("--custom-addr", help="Address to report to the tracker (default: as the tracker sees it).")] = None,
) -> None:
    from chipbench.backends.tvm_rpc import RpcError, check_tracker
    from chipbench.cli import fail
    from chipbench.rpc_server import run_server

    address = _tracker_address(tracker)
    try:
        check_tracker(*address)
    except RpcError as exc:
        fail(str(exc))
    try:
        run_server(host, port, port_end or port + 100, address, key, _announce(f"serve ({key})"),
                   runtime_only=runtime_only, threads=threads, custom_addr=custom_addr)
    except (OSError, ValueError) as exc:
        fail(f"--host {host} --port {port}: {exc}", 1)
    fail(f"server under key '{key}' stopped (tracker {tracker} gone?)", 1)


@rpc_app.command("status")
def rpc_status(tracker: Annotated[str, typer.Option("--tracker", help="The tracker, HOST:PORT.")]) -> None:
    """Servers per key at a tracker (total, free) and requests waiting."""
    import json

    from chipbench.cli import err, fail
    from chipbench.backends.tvm_rpc import servers_under
    from chipbench.fleet import FleetError, tracker_summary

    address = _tracker_address(tracker)
    try:
        summary = tracker_summary(*address)
    except FleetError as exc:
        fail(str(exc))
    keys = sorted({s["key"].partition(":")[2] for s in summary.get("server_info", [])} | set(summary.get("queue_info", {})))
    for k in keys:
        total = servers_under(summary, k)
        queue = summary.get("queue_info", {}).get(k, {})
        print(f"{k}\t{total} server(s)\t{queue.get('free', 0)} free\t{queue.get('pending', 0)} pending")
    err.print(json.dumps(summary), soft_wrap=True, markup=False)
