"""ONNX Runtime's per-node profile, placed on the ONNX graph (the `profile` of `ort-cpu`).

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
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from chipbench.backends.ort_runtime import session_options
from chipbench.machine import usable_cores
from chipbench.opprofile import OpProfile, OpProfileError, OpTime, finish, median

def profile_ort(onnx_path: Path, inputs: dict, runs: int = 10, warmup: int = 3,
                threads: int | None = None) -> OpProfile:
    """Per-node kernel times from ORT's profiler (CPU EP, ORT_ENABLE_ALL), median over `runs`."""
    import onnx
    import onnxruntime as ort

    threads = threads or usable_cores()
    with tempfile.TemporaryDirectory(prefix="chipbench-ortprof-") as tmp:
        opts = session_options(threads)  # as the backend runs it
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
    e2e = median([r["dur"] / 1e3 for r in model_runs])

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
            time_ms=median([r.get(name, 0.0) for r in per_run]),
            flops=flops, bytes=nbytes,
            covers=tuple(original.graph.node[i].name for i in covered),
            onnx_op_types=tuple(original.graph.node[i].op_type for i in covered),
            flops_source=source,
        ))
    ops = finish(ops)
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

