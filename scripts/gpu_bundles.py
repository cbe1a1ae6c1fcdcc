#!/usr/bin/env python3
"""Everything the GPU check carries to a GPU machine, built here into one folder (`make gpu-bundles`):

    .gpu-check/
      plan.json      what is here: the bundles (and why any is missing), kit, wheels, weights, sizes
      bundles/W-bB/  `chipbench bundle` of each workload at batch B (1: single-stream, 32: offline)
                     for the device's backend: tvm-cuda cross-compiled for sm_90 (an H200); weights
                     over --leave-out-kib are left out and rebuilt there (chipbench.bundle_rebuild)
      kit/           the runtime-only TVM for the device's Python (3.12) with the CUDA runtime
                     (libcudart) TVM's CUDA module links, without numpy (the device has it)
      wheels/        what `chipbench import` needs there and the image lacks: jsonschema and its
                     dependencies, for that Python
      weights/W/     the workloads' weights as this host's weights cache holds them, so that the
                     device's torch backends measure the same weights and train nothing; where
                     they are too large (defect-cnn) the key only: the rebuild gives the weights there
      build.log      the bundle commands' output

On the GPU machine, `python3 scripts/gpu_check.py` (or `make gpu-check`) runs it all. With
`--device cpu` the same folder is built for a rehearsal on this machine (tvm-llvm bundles, the
kit for this Python) in .gpu-check-cpu/. What may travel (the checkout's files plus this folder)
must fit --limit-mib (64 MiB): the size of each part is printed and kept in plan.json.

Exit status: 0 everything built, 1 something is missing (a bundle refused, the kit or the wheels,
over the limit: the rest is still built and plan.json says what), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN = "plan.json"
FORMAT = "chipbench-gpu-check"
# what `chipbench import` needs on the device beyond the image's packages (pyproject.toml's pin)
IMPORT_WHEELS = ("jsonschema>=4.20",)
BACKEND = {"cuda": "tvm-cuda", "cpu": "tvm-llvm"}  # the default backend bundled per device kind
TARGET = {"cuda": "sm_90", "cpu": None}  # sm_90: the H200's architecture; None: this CPU's own
MIB = 2**20


def _torch_check():
    spec = importlib.util.spec_from_file_location("gpu_torch_check", ROOT / "scripts" / "gpu_torch_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the kind of device it is for (cpu: a rehearsal here)")
    p.add_argument("--out", type=Path, help="default .gpu-check/ (.gpu-check-cpu/ with --device cpu)")
    p.add_argument("--backend", help="default tvm-cuda (tvm-llvm with --device cpu)")
    p.add_argument("--target", help="compile for this target (default sm_90 for cuda; this CPU for cpu)")
    p.add_argument("--workloads", default=",".join(_torch_check().WORKLOADS))
    p.add_argument("--batches", default="1,32", help="1 bundles single-stream, others offline at that batch")
    p.add_argument("--python", help="the device's Python, for the kit and wheels (default 3.12 for cuda, this one for cpu)")
    p.add_argument("--leave-out-kib", type=int, default=16,
                   help="weights larger than this that the seeded model reproduces are rebuilt on the device")
    p.add_argument("--weights-max-mib", type=float, default=8.0, help="carry a workload's weights up to this size")
    p.add_argument("--no-wheels", action="store_true", help="carry no wheels (the device has jsonschema)")
    p.add_argument("--limit-mib", type=float, default=64.0, help="what may travel: the checkout plus this folder")
    args = p.parse_args(argv)
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    args.workloads = split(args.workloads)
    try:
        args.batches = [int(b) for b in split(args.batches)]
    except ValueError:
        p.error(f"--batches {args.batches!r}: expected integers, e.g. 1,32")
    if not args.workloads or not args.batches or min(args.batches) < 1:
        p.error("--workloads and --batches need at least one entry each (batches >= 1)")
    args.out = (args.out or ROOT / (".gpu-check" if args.device == "cuda" else ".gpu-check-cpu")).resolve()
    args.backend = args.backend or BACKEND[args.device]
    args.target = args.target or TARGET[args.device]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    args.python = args.python or ("3.12" if args.device == "cuda" else here)
    return args


def fresh_folder(out: Path) -> None:
    """Empty `out` for a new build: only a folder this script made (it has plan.json) or an
    empty one is cleared; SystemExit(2) for anything else."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / PLAN).is_file()):
            raise SystemExit(f"error: --out {out}: exists and is not a folder this script built (no {PLAN})")
        shutil.rmtree(out)
    (out / "bundles").mkdir(parents=True)


def bundle_name(workload: str, batch: int) -> str:
    return f"{workload}-b{batch}"


def build_bundles(args, logfile) -> list[dict]:
    """`chipbench bundle` per workload and batch (batch by batch), each in its own process:
    one that fails costs its bundle, whose entry keeps the one-line reason."""
    entries = []
    for batch in args.batches:
        for workload in args.workloads:
            name = bundle_name(workload, batch)
            folder = args.out / "bundles" / name
            scenario = ["--scenario", "single-stream"] if batch == 1 else ["--scenario", "offline", "--batch", str(batch)]
            argv = [sys.executable, "-m", "chipbench.cli", "bundle", "-w", workload, "-b", args.backend, *scenario,
                    "--device", args.device, *(["--target", args.target] if args.target else []),
                    "--leave-out-kib", str(args.leave_out_kib), "--out", str(folder)]
            log(f"== bundle {name}: {' '.join(argv[1:])}")
            t0 = time.perf_counter()
            env = {k: v for k, v in os.environ.items() if k != "CHIPBENCH_PLUGINS"}
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
            seconds = time.perf_counter() - t0
            logfile.write(f"== bundle {name} ({seconds:.0f} s, exit {proc.returncode})\n{proc.stderr}\n")
            entry = {"name": name, "workload": workload, "batch": batch, "scenario": scenario[1],
                     "folder": f"bundles/{name}", "build_s": round(seconds, 1)}
            if proc.returncode == 0:
                manifest = json.loads((folder / "manifest.json").read_text())
                left = [e for m in manifest.get("left_out", {}).values() for e in m.values()]
                entry.update(status="ok", bytes=folder_bytes(folder), left_out=len(left),
                             left_out_bytes=sum(e["bytes"] for e in left))
                log(f"== bundle {name}: ok, {entry['bytes'] / MIB:.2f} MiB"
                    + (f" ({len(left)} weights, {entry['left_out_bytes'] / MIB:.1f} MiB, left out)" if left else "")
                    + f", {seconds:.0f} s")
            else:
                errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
                reason = errors[-1].removeprefix("error: ") if errors else f"exit {proc.returncode}"
                entry.update(status="refused", reason=reason)
                shutil.rmtree(folder, ignore_errors=True)
                log(f"== bundle {name}: refused: {reason}")
            entries.append(entry)
    return entries


def cuda_runtime() -> Path:
    """The CUDA runtime library (libcudart.so.N) that TVM's CUDA module loads on this host."""
    from chipbench import cuda_stub
    from chipbench.runtime_guard import native_libraries

    cuda_stub.ensure_cuda_runtime()
    found = [Path(p) for p in native_libraries("libcudart.so")]
    if not found:
        raise RuntimeError("TVM's CUDA module loaded no libcudart here")
    return found[0]


def build_kit(args) -> dict:
    from chipbench.runtime_kit import KitError, build_kit as make_kit

    try:
        cudart = cuda_runtime() if args.device == "cuda" else None
        kit = make_kit(args.out / "kit", args.python, cudart=cudart)
    except (KitError, RuntimeError) as exc:
        shutil.rmtree(args.out / "kit", ignore_errors=True)
        return {"status": "failed", "reason": str(exc)}
    log(f"== kit: {kit.total_bytes / MIB:.1f} MiB for Python {kit.python}" + (f", {cudart.name}" if cudart else ""))
    return {"status": "ok", "folder": "kit", "python": kit.python, "bytes": kit.total_bytes,
            "tvm": kit.info["tvm"], "tvm_ffi": kit.info["tvm_ffi"], "cudart": kit.info["cudart"]}


def download_wheels(args) -> dict:
    from chipbench.runtime_kit import KitError, pip_download

    if args.no_wheels:
        return {"status": "none", "files": []}
    folder = args.out / "wheels"
    folder.mkdir()
    try:
        wheels = pip_download(list(IMPORT_WHEELS), args.python, folder, deps=True)
    except KitError as exc:
        return {"status": "failed", "reason": str(exc), "files": []}
    log(f"== wheels: {', '.join(w.name for w in wheels)}")
    return {"status": "ok", "for": list(IMPORT_WHEELS), "files": [f"wheels/{w.name}" for w in wheels]}


def carry_weights(args, bundles: list[dict]) -> list[dict]:
    """Copy each workload's cached weights (key and .pt) made with this torch into weights/;
    a .pt over --weights-max-mib stays here (its key travels: the device's rebuild of a
    left-out bundle gives it)."""
    from chipbench.workloads.base import get_workload
    from chipbench.workloads.training import cache_entries

    out = []
    for name in args.workloads:
        for kpath, _ in cache_entries(get_workload(name)):
            wpath = kpath.with_name(kpath.name.removesuffix(".key.json") + ".pt")
            if not wpath.is_file():
                continue
            dest = args.out / "weights" / name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kpath, dest / kpath.name)
            size = wpath.stat().st_size
            rebuilt = any(b["workload"] == name and b.get("left_out") for b in bundles)
            if size <= args.weights_max_mib * MIB:
                shutil.copy2(wpath, dest / wpath.name)
                how = "carried"
            else:
                how = "rebuilt on the device" if rebuilt else "too large: made on the device"
            out.append({"workload": name, "key": f"weights/{name}/{kpath.name}", "bytes": size, "weights": how})
            log(f"== weights {name}: {size / MIB:.1f} MiB, {how}")
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def checkout_bytes(exclude: Path) -> int:
    """Bytes of what travels of the checkout: tracked files and untracked ones git does not
    ignore (what travels to the GPU machine), `exclude` left aside."""
    proc = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True)
    total = 0
    for name in proc.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not path.is_symlink() and not path.resolve().is_relative_to(exclude):
            total += path.stat().st_size
    return total


def sizes(args, bundles: list[dict]) -> dict[str, float]:
    """MiB per part of what travels: checkout, kit, wheels, weights, and the bundles by kind of file."""
    parts = {"checkout": checkout_bytes(args.out)}
    for name in ("kit", "wheels", "weights"):
        parts[name] = folder_bytes(args.out / name) if (args.out / name).exists() else 0
    kinds = {"bundle libraries": (".so",), "bundle weights": ("params.npz",), "bundle inputs": ("inputs.npz",),
             "bundle carried state": ("state.npz",), "bundle references": ("reference.npz",),
             "bundle manifests": ("manifest.json",)}
    for label in kinds:
        parts[label] = 0
    for path in (args.out / "bundles").rglob("*"):
        if path.is_file():
            label = next((k for k, ends in kinds.items() if path.name.endswith(ends)), "bundle manifests")
            parts[label] += path.stat().st_size
    parts["plan and log"] = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    mib = {k: round(v / MIB, 2) for k, v in parts.items()}
    mib["total"] = round(sum(parts.values()) / MIB, 2)
    return mib


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    fresh_folder(args.out)
    with open(args.out / "build.log", "w") as logfile:
        bundles = build_bundles(args, logfile)
    kit = build_kit(args)
    wheels = download_wheels(args)
    weights = carry_weights(args, bundles)
    plan = {"format": FORMAT, "version": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": args.device, "backend": args.backend, "target": args.target, "python": args.python,
            "workloads": args.workloads, "batches": args.batches,
            "leave_out_kib": args.leave_out_kib, "bundles": bundles, "kit": kit, "wheels": wheels,
            "weights": weights, "build_s": round(time.perf_counter() - started, 1)}
    (args.out / PLAN).write_text(json.dumps(plan, indent=1))
    plan["sizes_mib"] = sizes(args, bundles)
    (args.out / PLAN).write_text(json.dumps(plan, indent=1))
    width = max(map(len, plan["sizes_mib"]))
    print(f"# {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: what travels (MiB)")
    for part, mib in plan["sizes_mib"].items():
        print(f"{part:<{width}}  {mib:8.2f}")
    problems = [f"bundle {b['name']} refused: {b['reason']}" for b in bundles if b["status"] != "ok"]
    problems += [f"{what}: {part['reason']}" for what, part in (("kit", kit), ("wheels", wheels)) if part["status"] == "failed"]
    if plan["sizes_mib"]["total"] > args.limit_mib:
        problems.append(f"what travels is {plan['sizes_mib']['total']:.1f} MiB, over --limit-mib {args.limit_mib:g}")
    ok = sum(b["status"] == "ok" for b in bundles)
    print(f"{ok}/{len(bundles)} bundles for {args.backend} ({args.device}) in {plan['build_s']:.0f} s"
          + "".join(f"\n- {p}" for p in problems))
    if args.device == "cuda":
        print(f"on the GPU machine, from the checkout's root with {args.out.name}/ carried beside it:\n"
              f"  python3 scripts/gpu_check.py     # or: make gpu-check")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
