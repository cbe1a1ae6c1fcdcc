"""The node at fault in a multi-node case, by bisecting the graph.

ONNX requires a graph's nodes in topological order, so every prefix `nodes[:k]` is a model of
its own whose outputs are node k-1's outputs. The prefix is compiled and run on the backend and
its outputs compared (the case's rtol/atol) with the same values computed by ONNX's reference
implementation (`onnx.reference.ReferenceEvaluator`, every intermediate kept). The first prefix
that fails (refused, raises, or differs) ends at the node at fault; a binary search needs about
log2(nodes) compiles. Types of the intermediate values come from `onnx.shape_inference`; a
prefix whose last node's outputs have no inferred type is not a probe point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chipbench.backends.base import Arrays


def node_label(index: int, node: Any) -> dict:
    """{"index", "name", "op"} of a graph node (the name may be empty: ONNX node names are optional)."""
    return {"index": index, "name": node.name, "op": node.op_type}


def bisect(model: Any, inputs: Arrays, probe: Callable[[Any, list[str]], Arrays],
           close: Callable[[Arrays, Arrays], bool]) -> tuple[dict | None, str]:
    """The first node whose prefix fails, and how it was found (or None and why not).

    `probe(prefix_model, output_names)` compiles and runs a prefix on the backend (raises when
    the backend refuses or fails); `close(got, expected)` applies the case's tolerance."""
    import onnx
    from onnx import shape_inference
    from onnx.reference import ReferenceEvaluator

    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return (node_label(0, nodes[0]) if nodes else None), "single node"
    try:
        expected = ReferenceEvaluator(model).run(None, inputs, intermediate=True)
    except Exception as exc:  # the reference cannot run it: no bisection
        return None, f"not bisected: the ONNX reference failed ({type(exc).__name__})"
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}

    def outputs_of(k: int) -> list[Any]:
        wanted = [o for o in nodes[k - 1].output if o]
        if not wanted or any(o not in types or o not in expected for o in wanted):
            return []
        return [types[o] for o in wanted]

    def good(k: int) -> bool:
        outs = outputs_of(k)
        prefix = onnx.ModelProto()
        prefix.CopyFrom(model)
        del prefix.graph.node[:]
        prefix.graph.node.extend(nodes[:k])
        del prefix.graph.output[:]
        prefix.graph.output.extend(outs)
        names = [o.name for o in outs]
        try:
            got = probe(prefix, names)
        except Exception:
            return False
        return close(got, {n: expected[n] for n in names})

    probe_points = [k for k in range(1, len(nodes)) if outputs_of(k)]
    lo, hi = 0, len(nodes)  # prefix lo is good (nothing), prefix hi (the whole graph) failed
    while True:
        inside = [k for k in probe_points if lo < k < hi]
        if not inside:
            break
        mid = inside[len(inside) // 2]
        if good(mid):
            lo = mid
        else:
            hi = mid
    if hi - lo == 1:
        return node_label(hi - 1, nodes[hi - 1]), "bisection"
    ops = sorted({n.op_type for n in nodes[lo:hi]})
    return None, f"bisection narrowed it to nodes {lo}-{hi - 1} ({', '.join(ops)}), no typed value between them"
