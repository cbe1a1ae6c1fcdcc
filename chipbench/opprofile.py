"""Per-operator time breakdown: where a backend spends an inference, op by op, on the roofline.

ONNX Runtime (`ort-cpu`): the session's own profiler (`SessionOptions.enable_profiling`), same
session settings as the backend (ORT_ENABLE_ALL, intra-op threads = usable cores). Each node's
"<node>_kernel_time" event is timed in C++ inside the run; runs after the warm-up are grouped by
their "model_run" event and every node's time is the median over runs. ORT rewrites the graph
before it runs it (Conv+Relu -> FusedConv, Gemm+Relu -> FusedGemm, NCHWc layouts, ...), so a
row is a node *that ran*, named as ORT names it (NCHWc kernels as `nchwc.<op>`); the ONNX
nodes it stands for are matched through the optimized graph ORT saves (regions between tensors
both graphs share, then names; see `_ort_attribution`), and FLOPs / bytes come from
`chipbench.kernels.onnx_flops` over those nodes (bytes: the covered subgraph's external inputs
and outputs, so a fused intermediate is not counted). Nodes ORT adds (layout reorders, the
reshapes around a MatMul+Add -> Gemm) have no ONNX node: 0 FLOPs, bytes from the profiler's
shapes.

TVM (`tvm-llvm`, untuned: one PrimFunc per Relax op; `tvm-llvm-tuned`: the MetaSchedule
database is found as that backend finds it, and rows are the fused, scheduled PrimFuncs):
TVM 0.27's Relax VM has no profiler (no `VirtualMachine(..., profile=True)`, no `vm.profile`,
no `runtime.profiling` in this build). Timing each VM call from Python with
`vm.set_instrument` is not honest either: the callback between kernels lets TVM's thread pool
go to sleep, and on a 2-core Zen 4 the instrumented kernels summed to 2.3x the uninstrumented
end-to-end time. So one instrumented run captures every PrimFunc call and its arguments, and
each call is then timed alone with the library's `time_evaluator` (warm, back to back, median
over `runs` repeats of >= 1 ms). Rows are the compiled PrimFuncs; their op types are the Relax
op names their symbols carry (`fused_conv1d_add_relu` -> conv1d+add+relu, `add3` -> add).
FLOPs are TVM's own count of the PrimFunc's TIR (`estimate_tir_flops`: a multiply-add is 2,
as in onnx_flops); bytes are the call's argument tensors (inputs read once, outputs written
once). What the VM does between kernels (allocation, shape checks, builtins) is in the
end-to-end time and not in any row.

`profile_ops(...)` returns the rows; `profile(...)` also returns the end-to-end time and notes;
`render_markdown` / `markdown_table` format the top-k rows.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from chipbench.machine import usable_cores

BACKENDS = ("ort-cpu", "tvm-llvm", "tvm-llvm-tuned")

# coarse families so ORT and TVM rows can be compared (first matching op type wins)
_CATEGORY = {
    "conv": ("conv", "Conv"),
    "matmul": ("matmul", "dense", "batch_matmul", "MatMul", "Gemm", "FusedGemm", "FusedMatMul",
               "MatMulNBits", "Attention", "MultiHeadAttention", "einsum"),
    "pool": ("pool", "Pool", "mean", "ReduceMean"),
    "norm": ("norm", "Normalization", "softmax", "Softmax"),
}
_VM_BUILTIN_PREFIXES = ("vm.", "runtime.")


class OpProfileError(Exception):
    """The per-op profile could not be taken (one line)."""


@dataclass
class OpTime:
    """One operator (ORT node, TVM PrimFunc) of one inference, times in ms (median over runs)."""

    backend: str
    name: str  # ORT node name / TVM function symbol
    op_type: str  # what ran: ORT op_name (e.g. FusedConv) / Relax ops from the symbol (conv1d+add+relu)
    time_ms: float
    share: float = 0.0  # of the sum of all rows (0..1)
    calls: int = 1  # per inference
    flops: float | None = None  # per inference (all calls)
    bytes: float | None = None  # minimum bytes per inference: inputs read once, outputs written once
    intensity: float | None = None  # FLOP/byte
    gflops: float | None = None  # achieved
    gbps: float | None = None  # achieved, counting the minimum bytes
    bound_gflops: float | None = None  # roofline attainable at this intensity (with a device profile)
    pct_of_roofline: float | None = None  # achieved / attainable, %
    bound: str | None = None  # "compute" / "memory" (with a device profile)
    category: str = "other"  # conv / matmul / pool / norm / other
    covers: tuple[str, ...] = ()  # ONNX nodes this row stands for (ORT)
    onnx_op_types: tuple[str, ...] = ()  # their op types, in graph order (ORT)
    flops_source: str | None = None  # "onnx" (onnx_flops over covered nodes) / "tir" (estimate_tir_flops)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["covers"], d["onnx_op_types"] = list(self.covers), list(self.onnx_op_types)
        return d


@dataclass
class OpProfile:
    """A backend's per-op breakdown of one (workload, batch), with its end-to-end time."""

    workload: str
    backend: str
    batch: int
    runs: int
    threads: int
    e2e_ms: float  # median end-to-end time of one inference, measured alongside
    ops: list[OpTime]
    method: str
    notes: list[str] = field(default_factory=list)
    unattributed: list[str] = field(default_factory=list)  # ONNX nodes no row covers (folded away)
    ceilings: dict[str, float] | None = None  # the roofline the % refer to

    @property
    def ops_ms(self) -> float:
        return sum(o.time_ms for o in self.ops)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = [o.to_dict() for o in self.ops]
        d["ops_ms"] = self.ops_ms
        return d


# ---------------------------------------------------------------------------------------------
# entry points


def profile_ops(workload_name: str, backend: str, batch: int = 1, runs: int = 10,
                workload_params: dict | None = None, *, device: Any = None, precision: str = "fp32",
                threads: int | None = None, warmup: int = 3, seed: int = 0,
                tuning_db: Path | None = None) -> list[OpTime]:
    """Per-op rows of `workload_name` on `backend` (one of BACKENDS), slowest first.

    `device` (a `chipbench.probe.DeviceProfile` or `chipbench.roofline.Ceilings`) fills the
    roofline columns; without it they stay None."""
    return profile(workload_name, backend, batch, runs, workload_params, device=device,
                   precision=precision, threads=threads, warmup=warmup, seed=seed,
                   tuning_db=tuning_db).ops


def profile(workload_name: str, backend: str, batch: int = 1, runs: int = 10,
            workload_params: dict | None = None, *, device: Any = None, precision: str = "fp32",
            threads: int | None = None, warmup: int = 3, seed: int = 0,
            tuning_db: Path | None = None) -> OpProfile:
    """`profile_ops` with the end-to-end time, the method and notes (an `OpProfile`)."""
    from chipbench.prepare import prepare_workload
    from chipbench.workloads.base import get_workload

    if backend not in BACKENDS:
        raise OpProfileError(f"per-op profiles exist for {', '.join(BACKENDS)}, not '{backend}'")
    if runs < 1 or batch < 1:
        raise OpProfileError("runs and batch must be at least 1")
    if precision != "fp32":
        raise OpProfileError(f"per-op profiles run the FP32 model, not {precision}")
    workload = get_workload(workload_name, **(workload_params or {}))
    prepared = prepare_workload(workload, batch, seed)
    threads = threads or usable_cores()
    if backend == "ort-cpu":
        prof = profile_ort(prepared.source.onnx_path, prepared.inputs, runs=runs, warmup=warmup,
                           threads=threads)
    else:
        if backend == "tvm-llvm-tuned":  # the database the tuned backend would use, found its way
            tuning_db = _tuned_database(prepared.source, threads, tuning_db)
        prof = profile_tvm(prepared.source.onnx_path, prepared.inputs, prepared.source.input_names,
                           runs=runs, warmup=warmup, threads=threads, tuning_db=tuning_db)
        prof.backend = backend
    prof.workload, prof.batch = workload_name, batch
    if device is not None:
        attach_roofline(prof, device, precision)
    return prof


def _tuned_database(source: Any, threads: int, tuning_db: Path | None) -> Path:
    from chipbench import tuning
    from chipbench.backends.base import CompileSpec, Unsupported
    from chipbench.backends.tvm_tuned import TvmLlvmTuned

    try:
        folder, _, _ = TvmLlvmTuned().locate(source, CompileSpec(threads=threads, tuning_db=tuning_db))
    except Unsupported as exc:
        raise OpProfileError(str(exc)) from None
    tuning.load_cpu_intrinsics()  # records may replay x86 tensorize steps
    return tuning.unpacked(folder)  # shipped databases keep their records gzipped


def attach_roofline(prof: OpProfile | list[OpTime], device: Any, precision: str = "fp32") -> None:
    """Fill the roofline columns in place from a DeviceProfile (measured ceilings) or Ceilings."""
    from chipbench.roofline import Ceilings, place

    ceil = device if isinstance(device, Ceilings) else Ceilings.of(device, precision)
    ops = prof.ops if isinstance(prof, OpProfile) else prof
    for i, op in enumerate(ops):
        if op.flops and op.bytes and op.time_ms > 0:
            p = place(ceil, op.name, op.flops, op.bytes, op.time_ms / 1e3, op.op_type)
            ops[i] = replace(op, bound_gflops=p.bound_gflops, pct_of_roofline=p.pct_of_roofline,
                             bound=p.bound)
        elif op.flops == 0 and op.bytes and op.time_ms > 0:  # data movement: memory-bound by definition
            ops[i] = replace(op, bound="memory")
    if isinstance(prof, OpProfile):
        prof.ceilings = {"peak_gflops": ceil.peak_gflops, "bandwidth_gbps": ceil.bandwidth_gbps,
                         "ridge": ceil.ridge}


def roofline_points(prof: OpProfile | Sequence[OpTime], device: Any, precision: str = "fp32") -> list:
    """`chipbench.roofline.Point`s of the rows with FLOPs and bytes, for `roofline.plot`/`table`."""
    from chipbench.roofline import Ceilings, place

    ceil = device if isinstance(device, Ceilings) else Ceilings.of(device, precision)
    ops = prof.ops if isinstance(prof, OpProfile) else prof
    return [place(ceil, o.name, o.flops, o.bytes, o.time_ms / 1e3, o.op_type)
            for o in ops if o.flops and o.bytes and o.time_ms > 0]


def _finish(ops: list[OpTime]) -> list[OpTime]:
    """Shares, derived rates and categories; slowest first."""
    total = sum(o.time_ms for o in ops) or 1.0
    out = []
    for o in ops:
        seconds = o.time_ms / 1e3
        intensity = o.flops / o.bytes if o.flops is not None and o.bytes else None
        gflops = o.flops / seconds / 1e9 if o.flops is not None and seconds > 0 else None
        gbps = o.bytes / seconds / 1e9 if o.bytes is not None and seconds > 0 else None
        types = (o.op_type, *o.onnx_op_types)
        out.append(replace(o, share=o.time_ms / total, intensity=intensity, gflops=gflops, gbps=gbps,
                           category=category(types)))
    return sorted(out, key=lambda o: -o.time_ms)


def category(op_types: Iterable[str]) -> str:
    for t in op_types:
        for cat, keys in _CATEGORY.items():
            if any(k in t for k in keys):
                return cat
    return "other"


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def profile_ort(onnx_path: Path, inputs: dict, runs: int = 10, warmup: int = 3,
                threads: int | None = None) -> OpProfile:
    """Per-node kernel times from ORT's profiler (CPU EP, ORT_ENABLE_ALL), median over `runs`."""
    import onnx
    import onnxruntime as ort

    threads = threads or usable_cores()
    with tempfile.TemporaryDirectory(prefix="chipbench-ortprof-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.log_severity_level = 3  # saving an NCHWc-optimized graph warns; it is only read here
        optimized = Path(tmp) / "optimized.onnx"
        opts.optimized_model_filepath = str(optimized)
        try:
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception:  # some graphs cannot be serialized after optimization: name matching only
            opts.optimized_model_filepath = ""
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for _ in range(warmup + runs):
            session.run(names, inputs)
        trace = json.loads(Path(session.end_profiling()).read_text())
        opt_model = onnx.load(str(optimized), load_external_data=False) if optimized.exists() else None
    original = onnx.load(str(onnx_path), load_external_data=False)
    return _ort_profile_from_trace(trace, original, opt_model, warmup, runs, threads)


def _ort_profile_from_trace(trace: list[dict], original: Any, optimized: Any, warmup: int, runs: int,
                            threads: int) -> OpProfile:
    model_runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[warmup:]
    if not model_runs:
        raise OpProfileError("ONNX Runtime's profile has no model_run events")
    nodes = sorted((e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    per_run: list[dict[str, float]] = []
    events: dict[str, dict] = {}
    j = 0
    for run in model_runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        times: dict[str, float] = defaultdict(float)
        while j < len(nodes) and nodes[j]["ts"] < start:
            j += 1
        while j < len(nodes) and nodes[j]["ts"] <= end:
            e = nodes[j]
            args = e.get("args", {})
            name = e["name"][: -len("_kernel_time")] or f"{args.get('op_name', '?')}#{args.get('node_index')}"
            times[name] += e["dur"] / 1e3
            events[name] = args
            j += 1
        per_run.append(times)
    e2e = _median([r["dur"] / 1e3 for r in model_runs])

    costs, covers, unattributed, notes = _ort_attribution(original, optimized, list(events))
    domains = {n.name: n.domain for n in optimized.graph.node} if optimized is not None else {}
    ops = []
    for name, args in events.items():
        covered = covers.get(name, [])
        op_type = args.get("op_name", "?")
        if domains.get(name) == "com.microsoft.nchwc":  # ORT's blocked-layout kernels (NCHW8c/16c)
            op_type = f"nchwc.{op_type}"
        if covered:
            flops, nbytes, source = *costs(covered), "onnx"
        else:  # a node ORT made (layout reorders, reshapes around a Gemm): bytes from its shapes
            flops = 0.0 if op_type.removeprefix("nchwc.") in DATA_MOVEMENT else None
            nbytes, source = _event_bytes(args), "ort-shapes"
        ops.append(OpTime(
            backend="ort-cpu", name=name, op_type=op_type,
            time_ms=_median([r.get(name, 0.0) for r in per_run]),
            flops=flops, bytes=nbytes,
            covers=tuple(original.graph.node[i].name for i in covered),
            onnx_op_types=tuple(original.graph.node[i].op_type for i in covered),
            flops_source=source,
        ))
    ops = _finish(ops)
    method = (f"ONNX Runtime profiler, CPU EP, ORT_ENABLE_ALL, {threads} intra-op threads; "
              f"per-node kernel time inside the run, median of {len(per_run)} runs after {warmup} warm-up")
    notes.append(f"end-to-end (model_run, profiler on) {e2e:.3f} ms; nodes sum to "
                 f"{sum(o.time_ms for o in ops):.3f} ms, the rest is the session's own work")
    return OpProfile(workload="", backend="ort-cpu", batch=0, runs=len(per_run), threads=threads,
                     e2e_ms=e2e, ops=ops, method=method, notes=notes, unattributed=unattributed)


# ops that compute nothing (a row of one of these has 0 FLOPs even with no ONNX node behind it)
DATA_MOVEMENT = {"ReorderInput", "ReorderOutput", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                 "Identity", "Concat", "Split", "Slice", "Gather", "Expand", "Cast", "MemcpyFromHost",
                 "MemcpyToHost", "Tile", "Pad"}
# ops that head a fusion (post-ops are folded into them)
_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "MatMulInteger", "ConvInteger", "QLinearConv",
            "QLinearMatMul", "Attention", "LSTM", "GRU", "RNN", "Einsum"}
_ELEM_BYTES = {"float": 4, "double": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
               "int8": 1, "uint8": 1, "bool": 1, "uint16": 2, "uint32": 4, "uint64": 8}


def _event_bytes(args: dict) -> float | None:
    """Bytes of the shapes ORT's profiler lists for a node (pre-packed weights are not listed)."""
    total, seen = 0, False
    for key in ("input_type_shape", "output_type_shape"):
        for entry in args.get(key, []):
            for dtype, shape in entry.items():
                total += math.prod(shape) * _ELEM_BYTES.get(dtype, 4)
                seen = True
    return float(total) if seen else None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        self.parent[self.find(a)] = self.find(b)


def _ort_attribution(original: Any, optimized: Any, ran: list[str]):
    """Which original ONNX nodes each node that ran stands for, and a cost function for a set.

    Tensors both graphs have ("anchors") cut both into regions: original nodes joined by the
    tensors only the original has, optimized nodes likewise, and an original and an optimized
    node joined when they produce the same anchor. Inside a region an original node goes to the
    optimized node of its name (exact, "<name>/..." as in MatMulAddFusion, "<its output>_nchwc"
    as NCHWc convs are named, "fused <name>"); the rest follow their neighbours: a Conv/MatMul/Gemm
    joins the node its consumers went to (the post-ops it absorbed name the fused node), any
    other op the node its latest producer went to (a Relu folded into the Conv before it);
    what is still left goes by shared output tensor. Nodes in no row were folded away."""
    from chipbench.kernels import onnx_flops

    graph = original.graph
    onodes = list(graph.node)
    node_costs = onnx_flops.node_costs(original)
    try:  # tensor sizes, to count a fused subgraph's external traffic once
        table = onnx_flops._tensor_table(_inferred(original))
    except Exception:  # noqa: BLE001 - the helper is private to onnx_flops; fall back to node sums
        table = None
    notes: list[str] = []
    assign: dict[int, str] = {}
    ran_set = set(ran)
    if optimized is None:
        by_name = {n.name: i for i, n in enumerate(onodes) if n.name}
        for name in ran:
            base = name[len("fused "):] if name.startswith("fused ") else name
            if base in by_name:
                assign[by_name[base]] = name
        notes.append("optimized graph unavailable: rows matched to ONNX nodes by name only")
    else:
        assign = {i: name for i, name in _match_regions(onodes, list(optimized.graph.node), graph,
                                                         optimized.graph).items() if name in ran_set}
    covers: dict[str, list[int]] = defaultdict(list)
    for i, name in sorted(assign.items()):
        covers[name].append(i)
    unattributed = [onodes[i].name or onodes[i].op_type for i in range(len(onodes)) if i not in assign]
    lost = sum(node_costs[i].flops for i in range(len(onodes)) if i not in assign)
    if lost:
        notes.append(f"{lost / 1e6:.3f} MFLOP of ONNX nodes are in no row")
    if table is None:
        notes.append("bytes of fused rows are the sum of their ONNX nodes' bytes (an upper bound)")
    consumers_outside: dict[str, set[int]] = defaultdict(set)
    for k, n in enumerate(onodes):
        for t in n.input:
            consumers_outside[t].add(k)
    graph_outputs = {o.name for o in graph.output}

    def costs(idx: list[int]) -> tuple[float, float]:
        flops = float(sum(node_costs[i].flops for i in idx))
        if table is None or len(idx) == 1:
            return flops, float(sum(node_costs[i].bytes for i in idx))
        inside = set(idx)
        made = {t for i in idx for t in onodes[i].output if t}
        used = {t for i in idx for t in onodes[i].input if t}
        leaving = {t for t in made if t in graph_outputs or consumers_outside[t] - inside}
        nbytes = 0
        for t in (used - made) | leaving:
            shape, size = table.get(t, (None, 0))
            if shape is not None:
                nbytes += math.prod(shape) * size
        return flops, float(nbytes)

    return costs, dict(covers), unattributed, notes


def _match_regions(onodes: list, pnodes: list, ograph: Any, pgraph: Any) -> dict[int, str]:
    def tensors(graph, nodes):
        made = {t for n in nodes for t in n.output if t}
        return made | {t.name for t in graph.initializer} | {v.name for v in graph.input}

    anchors = tensors(ograph, onodes) & (tensors(pgraph, pnodes) | {t for n in pnodes for t in n.input})
    uf = _UnionFind()
    oprod = {t: i for i, n in enumerate(onodes) for t in n.output if t}
    pprod = {t: k for k, n in enumerate(pnodes) for t in n.output if t}
    ocons: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(onodes):
        uf.find(("o", i))
        for t in n.input:
            if t in oprod and t not in anchors:
                uf.union(("o", oprod[t]), ("o", i))
            ocons[t].append(i)
    for k, n in enumerate(pnodes):
        uf.find(("p", k))
        for t in n.input:
            if t in pprod and t not in anchors:
                uf.union(("p", pprod[t]), ("p", k))
    for t, k in pprod.items():
        if t in oprod:
            uf.union(("o", oprod[t]), ("p", k))
    groups: dict[Any, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i in range(len(onodes)):
        groups[uf.find(("o", i))][0].append(i)
    for k in range(len(pnodes)):
        groups[uf.find(("p", k))][1].append(k)

    assign: dict[int, int] = {}
    for oidx, pidx in groups.values():
        if not oidx or not pidx:
            continue
        here = set(oidx)
        by_name = {pnodes[k].name: k for k in pidx}
        for i in oidx:
            n = onodes[i]
            for cand in (n.name, f"fused {n.name}", *(f"{t}_nchwc" for t in n.output if t)):
                if n.name and cand in by_name:
                    assign[i] = by_name[cand]
                    break
            else:
                hits = [k for k in pidx if n.name and pnodes[k].name.startswith(n.name + "/")]
                if hits:
                    assign[i] = hits[0]
        ups = {i: sorted((oprod[t] for t in onodes[i].input if t in oprod and oprod[t] in here), reverse=True)
               for i in oidx}
        downs = {i: [c for t in onodes[i].output for c in ocons.get(t, []) if c in here] for i in oidx}
        relaxed = False
        while True:
            progress = False
            for i in oidx:
                if i in assign:
                    continue
                first, second = (downs, ups) if onodes[i].op_type in _COMPUTE else (ups, downs)
                choice = next((assign[j] for j in first[i] if j in assign), None)
                if choice is None and (relaxed or not first[i]):
                    choice = next((assign[j] for j in second[i] if j in assign), None)
                if choice is not None:
                    assign[i], progress = choice, True
            if progress:
                relaxed = False
                continue
            left = [i for i in oidx if i not in assign]
            if not left:
                break
            if not relaxed:
                relaxed = True
                continue
            outs = {t: k for k in pidx for t in pnodes[k].output}  # last resort: the same output
            hit = next(((i, outs[t]) for i in left for t in onodes[i].output if t in outs), None)
            if hit is None:
                real = [k for k in pidx if pnodes[k].op_type not in DATA_MOVEMENT]
                if len(real) == 1:
                    for i in left:
                        assign[i] = real[0]
                break
            assign[hit[0]] = hit[1]
            relaxed = False
    return {i: pnodes[k].name for i, k in assign.items()}


def _inferred(model: Any) -> Any:
    from onnx import shape_inference

    return shape_inference.infer_shapes(model, data_prop=True)


# ---------------------------------------------------------------------------------------------
# TVM


def profile_tvm(onnx_path: Path, inputs: dict, input_names: Sequence[str], runs: int = 10,
                warmup: int = 3, threads: int | None = None, tuning_db: Path | None = None,
                min_repeat_ms: int = 1) -> OpProfile:
    """Per-PrimFunc times of the Relax VM build the `tvm-llvm` backend makes (see module doc)."""
    import numpy as np
    import tvm

    from chipbench.backends.tvm import build, host_target, import_onnx, load, use_all_cores
    from chipbench.tuning import read_key, weight_prepack

    threads = use_all_cores(threads or usable_cores())  # as the backend runs, not half the cores
    name = "tvm-llvm" if tuning_db is None else "tvm-llvm-tuned"
    target = host_target(threads)
    mod, weights = import_onnx(Path(onnx_path))
    prepack = tuning_db is not None and weight_prepack(read_key(tuning_db))
    exe, pipeline = build(mod, target, tuning_db, prepack)
    tir_flops = _tir_flops(mod, target, tuned=tuning_db is not None, weight_prepack=prepack)
    dev = tvm.cpu()
    vm, main, params = load(exe, weights, dev)
    args = [tvm.runtime.tensor(np.asarray(inputs[n], order="C"), dev) for n in input_names]
    for _ in range(max(warmup, 1)):
        main(*args, *params)
    e2e = []
    for _ in range(runs):
        start = time.perf_counter()
        main(*args, *params)
        e2e.append((time.perf_counter() - start) * 1e3)

    libs = _modules(exe.mod)
    calls: list[tuple[str, Any, tuple]] = []
    builtins: set[str] = set()

    def instrument(func, symbol, before, ret, *call_args):
        if before:
            lib = None if symbol.startswith(_VM_BUILTIN_PREFIXES) else _owner(libs, symbol)
            if lib is None:
                builtins.add(symbol)
            else:
                calls.append((symbol, lib, call_args))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    main(*args, *params)
    if not calls:
        raise OpProfileError("the Relax VM made no PrimFunc calls that could be timed")

    per_func: dict[str, list[float]] = {}
    ncalls: dict[str, int] = defaultdict(int)
    nbytes: dict[str, float] = defaultdict(float)
    for symbol, lib, call_args in calls:
        timer = lib.time_evaluator(symbol, dev, number=1, repeat=runs, min_repeat_ms=min_repeat_ms)
        results = [r * 1e3 for r in timer(*call_args).results]
        acc = per_func.setdefault(symbol, [0.0] * len(results))
        per_func[symbol] = [a + r for a, r in zip(acc, results)]
        ncalls[symbol] += 1
        nbytes[symbol] += sum(_nbytes(a) for a in call_args)

    ops = []
    missing = []
    for symbol, times in per_func.items():
        flops = tir_flops.get(symbol.removesuffix(PREPACKED))
        if flops is None:
            missing.append(symbol)
        ops.append(OpTime(
            backend=name, name=symbol, op_type="+".join(tvm_op_types(symbol)),
            time_ms=_median(times), calls=ncalls[symbol],
            flops=None if flops is None else flops * ncalls[symbol], bytes=nbytes[symbol],
            flops_source=None if flops is None else "tir",
        ))
    ops = _finish(ops)
    e2e_ms = _median(e2e)
    ops_ms = sum(o.time_ms for o in ops)
    method = (f"TVM {tvm.__version__} Relax VM ({pipeline}), target {target}; each PrimFunc call "
              f"captured from one VM run and timed alone with time_evaluator (median of {runs} "
              f"repeats, >= {min_repeat_ms} ms each)")
    notes = [f"end-to-end (vm['main'], no instrument) {e2e_ms:.3f} ms; kernels timed alone sum to "
             f"{ops_ms:.3f} ms; the rest is the VM's own work ({len(builtins)} kinds of builtin "
             "call: allocation, shape checks, reshapes) and cache effects"]
    if missing:
        notes.append(f"no TIR FLOP count for {len(missing)} functions: {', '.join(missing[:8])}")
    return OpProfile(workload="", backend=name, batch=0, runs=runs, threads=threads, e2e_ms=e2e_ms,
                     ops=ops, method=method, notes=notes)


def _modules(root: Any) -> list[Any]:
    out, stack = [], [root]
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(m.imports)
    return out


def _owner(libs: list[Any], symbol: str) -> Any:
    for lib in libs:
        if lib.kind != "relax.VMExecutable" and lib.implements_function(symbol):
            return lib
    return None


def _nbytes(arg: Any) -> int:
    shape, dtype = getattr(arg, "shape", None), getattr(arg, "dtype", None)
    if shape is None or dtype is None:
        return 0
    import numpy as np

    return math.prod(int(s) for s in shape) * np.dtype(str(dtype)).itemsize


def _tir_flops(mod: Any, target: Any, tuned: bool, weight_prepack: bool = False) -> dict[str, float]:
    """FLOPs per PrimFunc (TVM's estimate_tir_flops) of the module the build lowers, by name."""
    import tvm
    from tvm import relax
    from tvm.s_tir.analysis import estimate_tir_flops

    from chipbench.backends.tvm import fuse

    if tuned:  # the library dispatch and fusion the tuned build runs first (same names)
        lowered = fuse(mod, target, weight_prepack)
    else:
        with target:
            lowered = relax.get_pipeline("default")(mod)
    out = {}
    for gv, func in lowered.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                out[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
            except Exception:  # noqa: BLE001 - dynamic loops and extern calls cannot be counted
                pass
    return out


_EXTRA_OPS = ("transpose", "dense", "batch_matmul", "concatenate", "pool", "softmax", "T", "compute",
              "fused", "split", "pad", "cast")


@lru_cache(maxsize=1)
def _relax_op_vocabulary() -> frozenset[str]:
    names: set[str] = set(_EXTRA_OPS)
    try:
        import tvm

        names |= {n.rsplit(".", 1)[-1] for n in tvm.ir.Op.list_op_names() if n.startswith("relax.")}
    except Exception:  # noqa: BLE001 - without TVM, split on the obvious
        names |= {"conv1d", "conv2d", "conv3d", "matmul", "add", "multiply", "subtract", "divide", "relu",
                  "max_pool1d", "max_pool2d", "avg_pool2d", "mean", "reshape", "layer_norm", "gelu", "erf",
                  "tanh", "sigmoid", "exp", "sqrt", "power", "strided_slice", "take", "squeeze"}
    return frozenset(names)


PREPACKED = "_prepacked"  # SplitLayoutRewritePreproc's name for a kernel that reads prepacked weights


def tvm_op_types(symbol: str) -> list[str]:
    """Relax op names a PrimFunc symbol carries: "fused_conv1d1_add1_relu1" -> [conv1d, add, relu];
    "max_pool1d3" -> [max_pool1d]. Unknown parts are kept (digits stripped)."""
    vocab = _relax_op_vocabulary()
    name = symbol.removesuffix(PREPACKED)
    name = name[len("fused_"):] if name.startswith("fused_") else name
    tokens = [t for t in name.split("_") if t]
    out, i = [], 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            cand = "_".join(tokens[i:j])
            base = cand if cand in vocab else re.sub(r"\d+$", "", cand)
            if base in vocab and base not in ("fused", "T"):
                out.append(base)
                i = j
                break
        else:
            tok = re.sub(r"\d+$", "", tokens[i]) or tokens[i]
            if tok not in ("fused", "T"):
                out.append(tok)
            i += 1
    return out or [symbol]


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown_table(ops: Sequence[OpTime], top: int = 10) -> str:
    """The `top` slowest rows as a Markdown table (the rest summed in a last row)."""
    rows = sorted(ops, key=lambda o: -o.time_ms)
    lines = ["| # | op | type | calls | time ms | % time | MFLOP | MB | FLOP/B | GFLOP/s | bound | % of roofline |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for k, o in enumerate(rows[:top], 1):
        kind = o.op_type + (f" ({'+'.join(o.onnx_op_types)})" if o.onnx_op_types else "")
        lines.append(
            f"| {k} | `{o.name}` | {kind} | {o.calls} | {o.time_ms:.4f} | {100 * o.share:.1f} | "
            f"{_fmt(None if o.flops is None else o.flops / 1e6, '.3f')} | "
            f"{_fmt(None if o.bytes is None else o.bytes / 1e6, '.3f')} | {_fmt(o.intensity, '.2f')} | "
            f"{_fmt(o.gflops, '.2f')} | {o.bound or '–'} | {_fmt(o.pct_of_roofline, '.1f')} |")
    rest = rows[top:]
    if rest:
        lines.append(f"| | {len(rest)} more | | | {sum(o.time_ms for o in rest):.4f} | "
                     f"{100 * sum(o.share for o in rest):.1f} | | | | | | |")
    return "\n".join(lines) + "\n"


def render_markdown(prof: OpProfile, top: int = 10) -> str:
    """A report section: heading, method, end-to-end vs per-op sum, the top-k table, notes."""
    head = [f"### Per-op breakdown: {prof.workload} on {prof.backend} (batch {prof.batch})", "",
            f"Method: {prof.method}.", "",
            f"End-to-end {prof.e2e_ms:.3f} ms; {len(prof.ops)} ops sum to {prof.ops_ms:.3f} ms."]
    if prof.ceilings:
        c = prof.ceilings
        head.append(f"Roofline: {c['peak_gflops']:.1f} GFLOP/s, {c['bandwidth_gbps']:.1f} GB/s "
                    f"(ridge {c['ridge']:.2f} FLOP/B), measured on this machine.")
    by_cat: dict[str, float] = defaultdict(float)
    for o in prof.ops:
        by_cat[o.category] += o.share
    head.append("By family: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])) + ".")
    out = "\n".join(head) + "\n\n" + markdown_table(prof.ops, top)
    notes = list(prof.notes)
    if prof.unattributed:
        notes.append(f"ONNX nodes in no row (folded or eliminated by the runtime): {', '.join(prof.unattributed[:10])}"
                     + (" ..." if len(prof.unattributed) > 10 else ""))
    if notes:
        out += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return out
