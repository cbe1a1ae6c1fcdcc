#!/usr/bin/env python3
"""The GPU check (`make gpu-check`): on a machine with an NVIDIA GPU, Python, torch and no
network, measure the bundles compiled elsewhere (`make gpu-bundles`, carried in .gpu-check/)
and the torch CUDA backends, probe the device, and write records and a report.

    python3 scripts/gpu_check.py                      # cuda:0, results in results/gpu-check, files to $OUT
    python3 scripts/gpu_check.py --dry-run            # what it would run
    python3 scripts/gpu_check.py --device cpu         # the rehearsal: .gpu-check-cpu/ on this CPU

Steps, each timed, within --budget-s (default 420 s):
 1. checks: the carried plan is for this kind of device and the kit for this Python;
 2. wheels: the carried wheels that storing records needs (jsonschema) and this machine lacks,
    installed offline into a scratch folder (`pip install --no-index --no-deps --target`) that
    the import steps, the torch part's cells and the report find on their path;
 3. rebuild: the weights the bundles left out, from the seeded models (chipbench.bundle_rebuild,
    torch here), each checked against its sha256: a bundle whose weights are not reproduced
    exactly is refused with one line naming the array, never run with other weights;
 4. bundles, batch by batch: each measured by the bundle runner on the runtime-only kit
    (`python3 -S`, the kit and this machine's numpy, NVML and psutil only: no torch, no TVM
    compiler), then verified and imported into the results (`chipbench import`);
 5. torch: scripts/gpu_torch_check.py (the device probe, torch-eager-cuda and torch-compile-cuda
    on the same workloads at batch 1 and 32) with the time left, the carried weights standing in
    for training (CHIPBENCH_CARRIED_WEIGHTS), so both halves measure the same models;
 6. the report (`chipbench report`), a summary, and with --export (default $OUT) five flat files:
    gpu-check-summary.md, gpu-check-records.json (.json.gz over 15 MiB), gpu-check.log,
    report.md, report.html.

A cut for time drops whole groups from the end (the batch-32 bundles, then the torch part, whose
own cut drops torch-compile at batch 32 first) and the summary names them. Exit status: 0 every
record ok and VALID, 1 something failed, was refused or INVALID, 2 bad arguments or carried
folder, 3 all that ran is VALID but the budget left some groups unrun.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN = "plan.json"
FORMAT = "chipbench-gpu-check"
# what the bundle runner may import from this machine beside the kit: numpy (needed), NVML
# (GPU description and energy) and psutil (the machine's description), where installed
RUNNER_DEPS = ("numpy", "pynvml", "psutil")
EXPORT_LIMIT = 15 * 2**20  # bytes a file sent back may hold (a GPU check machine returns files up to 16 MiB)


def _torch_check():
    """scripts/gpu_torch_check.py as a module (this script reuses its import of the checkout,
    its summary table and its log format)."""
    spec = importlib.util.spec_from_file_location("gpu_torch_check", ROOT / "scripts" / "gpu_torch_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


torch_check = _torch_check()


class Log:
    """Progress to stderr and to the results' gpu-check.log (appended, flushed per line:
    gpu_torch_check.py appends its own lines to the same file while it runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0  # where this run's lines begin
        self.file = open(path, "a")

    def __call__(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def quiet(self, text: str) -> None:
        self.file.write(text + ("" if text.endswith("\n") else "\n"))
        self.file.flush()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0", help="cuda[:N], or cpu for the rehearsal")
    p.add_argument("--dir", type=Path, help="the carried folder (default .gpu-check/, .gpu-check-cpu/ with --device cpu)")
    p.add_argument("--results-dir", type=Path, help="default results/gpu-check (results/gpu-check-cpu for cpu)")
    p.add_argument("--export", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="write the flat files to send back here (default $OUT when set)")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall seconds for the whole check")
    p.add_argument("--reserve-s", type=float, default=30.0, help="seconds kept for the report and the files")
    p.add_argument("--min-bundle-s", type=float, default=20.0, help="no bundle starts with less time left")
    p.add_argument("--bundle-timeout", type=float, default=150.0, help="seconds one bundle may run")
    p.add_argument("--min-torch-s", type=float, default=90.0, help="the torch part starts only with this much left")
    p.add_argument("--min-duration", type=float, default=0.5, help="seconds of timed queries per bundle")
    p.add_argument("--min-count", type=int, default=20)
    p.add_argument("--max-duration", type=float, default=10.0)
    p.add_argument("--torch-args", default="", help="more arguments for gpu_torch_check.py, e.g. '--quick'")
    p.add_argument("--skip-torch", action="store_true", help="bundles only")
    p.add_argument("--dry-run", action="store_true", help="the plan and the command lines only")
    args = p.parse_args(argv)
    if not args.device.startswith(("cuda", "cpu")):
        p.error(f"--device {args.device!r}: expected cuda[:N] or cpu")
    args.kind = "cuda" if args.device.startswith("cuda") else "cpu"
    args.index = int(args.device.partition(":")[2] or 0) if args.kind == "cuda" else 0
    args.dir = (args.dir or ROOT / (".gpu-check" if args.kind == "cuda" else ".gpu-check-cpu")).resolve()
    args.results_dir = (args.results_dir or ROOT / "results" / ("gpu-check" if args.kind == "cuda" else "gpu-check-cpu")).resolve()
    args.export = args.export.resolve() if args.export else None
    return args


def read_plan(args) -> dict:
    """The carried plan.json, checked against this machine (with --dry-run, a kit for another
    Python is only noted); SystemExit with one error line."""
    path = args.dir / PLAN
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such file (build it with `make gpu-bundles` and carry {args.dir.name}/)") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {path}: not readable JSON ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise SystemExit(f"error: {path}: not a {FORMAT} plan")
    if plan.get("device") != args.kind:
        raise SystemExit(f"error: {path}: built for {plan.get('device')} devices, not --device {args.device}")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if plan.get("kit", {}).get("status") == "ok" and plan["kit"].get("python") != here and not args.dry_run:
        raise SystemExit(f"error: {path}: its runtime kit is for Python {plan['kit'].get('python')}, this is {here} "
                         f"(make gpu-bundles GPU_PYTHON={here})")
    return plan


def not_installed(wheels: list[Path]) -> list[Path]:
    """The wheels whose distribution this Python lacks (a wheel's file name starts with its
    distribution's name, PEP 427): only those are installed, so none shadows a package of the
    machine's own."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(wheel: Path) -> bool:
        try:
            version(wheel.name.split("-")[0])
        except PackageNotFoundError:
            return False
        return True

    return [w for w in wheels if not installed(w)]


def install_wheels(wheels: list[Path], target: Path, log: Log) -> str | None:
    """Install `wheels` offline into `target` (pip --no-index --no-deps --target; where this
    Python has no pip, `unpack_wheels`); None when done, else the one-line reason."""
    if not wheels:
        return None
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check",
           "--target", str(target), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)  # (asking importlib for pip would switch
    log.quiet(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")  # setuptools' distutils shim off here)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        return unpack_wheels(wheels, target, log)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()]
        return f"pip install exit {proc.returncode}: {last[-1] if last else ''}"[:300]
    return None


def unpack_wheels(wheels: list[Path], target: Path, log: Log) -> str | None:
    """What pip's --target install does for wheels without scripts or data (these: jsonschema and
    its dependencies): their files extracted into `target`. None when done, else the reason."""
    import zipfile

    try:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if name.startswith("/") or ".." in Path(name).parts or ".data/" in name:
                        return f"{wheel.name}: member {name!r} cannot be unpacked without pip"
                zf.extractall(target)
            log.quiet(f"unpacked {wheel} into {target} (no pip here)")
    except (OSError, zipfile.BadZipFile) as exc:
        return f"unpacking {wheel.name}: {exc}"[:300]
    return None


def runner_deps(folder: Path) -> list[str]:
    """Links in `folder` to this interpreter's RUNNER_DEPS (and a package's `<name>.libs` beside
    it, where manylinux wheels keep their shared libraries); returns the names linked. The
    runner runs with `-S` and sees the kit, these and nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = []
    for name in RUNNER_DEPS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        for path in (source, source.with_name(f"{name}.libs")):
            if path.exists() and not (folder / path.name).exists():
                (folder / path.name).symlink_to(path)
        linked.append(name)
    return linked


def run(cmd: list[str], env: dict, cwd: Path, timeout: float, log: Log) -> tuple[int, str, float]:
    """Run `cmd`; its output goes to the log. Returns (exit status, output, seconds); a command
    past `timeout` seconds is killed and returns 124."""
    t0 = time.perf_counter()
    log.quiet(f"$ {shlex.join(cmd)}")
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=max(timeout, 1))
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(killed after {timeout:.0f} s)"
    log.quiet(out)
    return rc, out, time.perf_counter() - t0


def last_line(text: str, prefix: str = "") -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip().startswith(prefix)]
    return (lines[-1].removeprefix(prefix) if lines else "").strip()[:400]


@dataclass
class Check:
    """One run of the check: its settings, the carried plan, what it found so far. Each step
    is a method; `problems` and `not_run` collect one line per failure and per cut group."""

    args: argparse.Namespace
    plan: dict
    log: Log
    scratch: Path
    env: dict  # runs this checkout's chipbench (installed, or in place)
    started: float = field(default_factory=time.perf_counter)
    started_iso: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    timings: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    not_run: list = field(default_factory=list)
    refused: dict = field(default_factory=dict)  # bundle name -> why its weights were not rebuilt
    torch_backends: list = field(default_factory=list)

    def left(self) -> float:
        """Seconds of --budget-s left for measuring (the reserve for the report kept aside)."""
        return self.args.budget_s - self.args.reserve_s - (time.perf_counter() - self.started)

    @property
    def bundles(self) -> list[dict]:
        return [b for b in self.plan["bundles"] if b["status"] == "ok"]

    def timed(self, name: str, step) -> None:
        t0 = time.perf_counter()
        step()
        self.timings[name] = time.perf_counter() - t0

    def wheels(self) -> None:
        """Install the carried wheels this machine lacks offline into a scratch folder and put
        it on the path of every step that imports chipbench's records (`import_env`: the
        imports, the torch part's cells, the report). Only missing distributions are installed,
        so the folder shadows none of this machine's own packages."""
        self.import_env = dict(self.env)
        carried = [self.args.dir / w for w in self.plan.get("wheels", {}).get("files", [])]
        wheels = not_installed(carried)
        failed = install_wheels(wheels, self.scratch / "site", self.log)
        if failed:
            self.problems.append(f"wheels: {failed}")
        elif wheels:
            self.import_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.scratch / "site"),
                                                                          self.env.get("PYTHONPATH")]))
        if carried:
            self.log(f"== wheels: {failed}" if failed else
                     f"== wheels: {len(wheels)} of {len(carried)} installed offline (the others are here already)")

    def runner_world(self) -> bool:
        """The runner's environment: `python -S`, the kit and this machine's RUNNER_DEPS. False
        (with the problem noted) when the kit was not built."""
        kit = self.plan.get("kit", {})
        self.problems += [f"bundle {b['name']} not built: {b['reason']}" for b in self.plan["bundles"] if b["status"] != "ok"]
        if kit.get("status") != "ok":
            if self.bundles:
                self.problems.append(f"kit: {kit.get('reason', 'not built')}: no bundle can run")
            return False
        linked = runner_deps(self.scratch / "deps")
        self.runner_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "CHIPBENCH_PLUGINS")}
        self.runner_env.update(PYTHONPATH=os.pathsep.join([str(self.args.dir / kit["folder"] / "python"),
                                                           str(self.scratch / "deps")]), TVM_USE_RUNTIME_LIB="1")
        self.log(f"== runner: python -S with the kit ({kit['python']}, tvm {kit['tvm']}) and this machine's "
                 f"{', '.join(linked)}")
        return True

    def rebuild(self) -> None:
        """Rebuild the weights the bundles left out (chipbench.bundle_rebuild) and give them to
        the torch part's carried weights, a scratch copy: the carried folder is left as it came,
        so it never grows past what may travel."""
        self.weights = self.scratch / "weights"
        if (self.args.dir / "weights").is_dir():
            shutil.copytree(self.args.dir / "weights", self.weights)
        todo = [b for b in self.bundles if b.get("left_out")]
        if not todo:
            return
        report = self.scratch / "rebuild.json"
        cmd = [sys.executable, "-m", "chipbench.bundle_rebuild", "--json", str(report),
               *(["--weights-dir", str(self.weights)] if self.weights.is_dir() else []),
               *[str(self.args.dir / b["folder"]) for b in todo]]
        rc, out, seconds = run(cmd, self.env, self.scratch, self.left(), self.log)
        results = json.loads(report.read_text()) if report.is_file() else {}
        for b in todo:
            result = results.get(str(self.args.dir / b["folder"]))
            if result is None:
                result = {"status": "refused", "reason": f"rebuild exit {rc}: {last_line(out) or 'no result'}"}
            if result["status"] == "refused":
                self.refused[b["name"]] = result["reason"]
                self.problems.append(f"bundle {b['name']} refused: {result['reason']}")
        self.log(f"== rebuild: {len(todo) - len(self.refused)}/{len(todo)} bundles' weights rebuilt and verified in "
                 f"{seconds:.0f} s" + "".join(f"\n   refused {n}: {r}" for n, r in self.refused.items()))

    def run_bundles(self) -> None:
        """Each bundle by the runner on the kit, then imported: batch by batch, so a cut for time
        drops the last group (or the rest of it), named."""
        args, records = self.args, self.scratch / "records"
        records.mkdir(exist_ok=True)
        for batch in sorted({b["batch"] for b in self.bundles}):
            group = [b for b in self.bundles if b["batch"] == batch and b["name"] not in self.refused]
            for i, b in enumerate(group):
                if self.left() < args.min_bundle_s:
                    self.not_run.append(f"{self.plan['backend']} b{batch}: " + ", ".join(x["workload"] for x in group[i:]))
                    break
                self.run_bundle(b, records / f"{b['name']}.json")

    def run_bundle(self, b: dict, out_file: Path) -> None:
        args, folder = self.args, str(self.args.dir / b["folder"])
        cmd = [sys.executable, "-S", "-m", "chipbench.bundle_runner", folder, "--out", str(out_file),
               "--device-index", str(args.index), "--min-duration", str(args.min_duration),
               "--min-count", str(args.min_count), "--max-duration", str(args.max_duration)]
        rc, out, seconds = run(cmd, self.runner_env, self.scratch, min(args.bundle_timeout, self.left()), self.log)
        line = last_line(out, "error: ") or last_line(out)
        self.log(f"== bundle {b['name']}: exit {rc} in {seconds:.1f} s: {line}")
        if rc == 2 or not out_file.is_file():  # refused (one error line), or killed before it wrote
            self.problems.append(f"bundle {b['name']} refused by the runner: {line}")
            return
        cmd = [sys.executable, "-m", "chipbench.cli", "import", str(out_file), "--bundle", folder,
               "--results-dir", str(args.results_dir)]
        rc, out, _ = run(cmd, self.import_env, self.scratch, max(self.left(), 30), self.log)
        if rc != 0:
            self.problems.append(f"bundle {b['name']}: import failed: {last_line(out, 'error: ') or last_line(out)}")

    def torch(self) -> None:
        """scripts/gpu_torch_check.py (probe, torch backends) on the plan's workloads and batches
        with the time left, on the carried weights; skipped, and named, with too little time."""
        args, budget = self.args, self.left()
        if args.skip_torch:
            self.not_run.append("torch part (--skip-torch)")
            return
        if budget < args.min_torch_s:
            self.not_run.append(f"torch part: probe and torch backends ({budget:.0f} s left, it needs {args.min_torch_s:g})")
            return
        env = dict(self.import_env)
        if self.weights.is_dir():
            env["CHIPBENCH_CARRIED_WEIGHTS"] = str(self.weights)
        self.torch_export = self.scratch / "torch"
        cmd = [sys.executable, str(ROOT / "scripts" / "gpu_torch_check.py"), "--device", args.device,
               "--results-dir", str(args.results_dir), "--export", str(self.torch_export), "--budget-s", f"{budget:.0f}",
               "--workloads", ",".join(self.plan["workloads"]), "--batches", ",".join(map(str, self.plan["batches"])),
               *shlex.split(args.torch_args)]
        self.log(f"== torch: {shlex.join(cmd)}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=self.scratch, stdout=subprocess.PIPE, text=True)  # it logs itself
        sys.stderr.write(proc.stdout)
        self.log.quiet(proc.stdout)
        doc = self.torch_doc()
        self.torch_backends = doc.get("backends") or []
        self.not_run += [f"torch {c}" for c in doc.get("not_run", [])]
        if proc.returncode not in (0, 1, 3):  # 1: a cell failed, its record says why; 3: cut, named above
            self.problems.append(f"torch part: gpu_torch_check.py exit {proc.returncode}")
        self.log(f"== torch: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s")

    def torch_doc(self) -> dict:
        path = getattr(self, "torch_export", self.scratch / "torch") / "gpu-torch-records.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def report(self) -> None:
        if not any((self.args.results_dir / "runs").glob("*.json")):  # nothing to report when nothing ran
            return
        cmd = [sys.executable, "-m", "chipbench.cli", "report", "--results-dir", str(self.args.results_dir)]
        rc, out, _ = run(cmd, self.import_env, self.scratch, max(self.left() + self.args.reserve_s, 60), self.log)
        if rc != 0:
            self.problems.append(f"report: exit {rc}: {last_line(out, 'error: ') or last_line(out)}")

    def summary(self) -> tuple[list[dict], str]:
        """This run's records (newest per cell) and the Markdown summary."""
        plan, args = self.plan, self.args
        records, table = torch_check.summarize(args.results_dir, [plan["backend"], *self.torch_backends],
                                               since=self.started_iso)
        good = sum(r["status"] == "ok" and r.get("verdict") == "VALID" for r in records)
        text = "\n".join([
            f"# GPU check: {plan['backend']} bundles and torch backends on {args.device}", "",
            f"{len(records)} records, {good} ok and VALID; " + ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items()),
            f"carried: {args.dir.name}/ built {plan.get('created')} for {plan.get('target') or 'the CPU that built it'} "
            f"({plan.get('sizes_mib', {}).get('total', '?')} MiB with the checkout)", "",
            *(["**Failed or refused:**", *[f"- {p}" for p in self.problems], ""] if self.problems else []),
            *([f"**Not run within --budget-s {args.budget_s:g}:**", *[f"- {n}" for n in self.not_run], ""]
              if self.not_run else []),
            table])
        return records, text


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        plan = read_plan(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args, plan)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log = Log(args.results_dir / "gpu-check.log")
    scratch = Path(tempfile.mkdtemp(prefix="chipbench-gpu-check-"))
    check = Check(args, plan, log, scratch, {})
    log(f"== gpu-check {check.started_iso}: {args.dir} ({plan['backend']}, {len(check.bundles)} bundles) on "
        f"{args.device}, budget {args.budget_s:g} s")
    check.env, how = torch_check.chipbench_env(scratch)
    log(f"chipbench: {how}; python {sys.executable} {sys.version.split()[0]}")
    try:
        check.timed("wheels", check.wheels)
        check.timed("rebuild", check.rebuild)
        if check.runner_world():
            check.timed("bundles", check.run_bundles)
        check.timed("torch", check.torch)
        check.timed("report", check.report)
        check.timings["total"] = time.perf_counter() - check.started
        records, summary = check.summary()
        print(summary)
        (args.results_dir / "gpu-check-summary.md").write_text(summary)
        log.quiet(summary)
        if args.export:
            export(check, records, summary)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for b in check.bundles:  # rebuilt weights stay on this machine (bundle_format.REBUILT)
            shutil.rmtree(args.dir / b["folder"] / "rebuilt", ignore_errors=True)
    bad = [r for r in records if r["status"] != "ok" or r.get("verdict") != "VALID"]
    if bad or check.problems:
        return 1
    if check.not_run:
        return 3
    return 0 if records else 1


def dry_run(args, plan: dict) -> int:
    """Print what the check would do with this plan."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(f"plan: {args.dir / PLAN} ({plan['backend']} for {plan['device']}, target {plan['target']}, Python "
          f"{plan['python']}" + (f"; this is Python {here}: the kit would not load" if plan["python"] != here else "") + ")")
    for b in plan["bundles"]:
        what = "run" + (f", {b['left_out']} weights rebuilt first" if b.get("left_out") else "")
        print(f"bundle {b['name']}: " + (what if b["status"] == "ok" else f"not built: {b['reason']}"))
    print(f"torch: {'skipped' if args.skip_torch else 'scripts/gpu_torch_check.py --device ' + args.device}")
    return 0


def export(check: Check, records: list[dict], summary: str) -> None:
    """Five flat files in --export: the summary, every record of this run (with the plan, the
    torch part's preflight and the device profiles), this run's log, and the report."""
    args, out = check.args, check.args.export
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check-summary.md").write_text(summary)
    profiles = {p.name: json.loads(p.read_text()) for p in (args.results_dir / "device").glob("*.json")}
    text = json.dumps({"plan": check.plan, "timings_s": check.timings, "problems": check.problems,
                       "not_run": check.not_run, "torch_preflight": check.torch_doc().get("preflight"),
                       "profiles": profiles, "records": records}, indent=1, default=str)
    if len(text.encode()) > EXPORT_LIMIT:
        (out / "gpu-check-records.json.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (out / "gpu-check-records.json").write_text(text)
    with open(args.results_dir / "gpu-check.log", "rb") as f:  # this run's lines, the last 15 MiB of them
        f.seek(max(check.log.start, f.seek(0, 2) - EXPORT_LIMIT))
        (out / "gpu-check.log").write_bytes(f.read())
    for name in ("report.md", "report.html"):
        if (args.results_dir / name).is_file():
            shutil.copyfile(args.results_dir / name, out / name)


if __name__ == "__main__":
    sys.exit(main())
