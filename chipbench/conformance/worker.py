"""One backend's conformance worker: runs cases in sequence in one long-lived process.

`python -P -m chipbench.conformance.worker BACKEND` reads one JSON request a line on stdin
({"case": Case.to_dict()}) and answers one JSON result a line on the descriptor that was its
stdout; everything the backend prints (Python or C) goes to stderr. The parent
(`chipbench.conformance.pool`) replaces the process when it dies or hangs.

Per case: compile (once per exact model bytes: identical graphs share one build), retried on an
opset-converted model when the backend refuses the opset (`chipbench.opset_lift`), run every
data set, compare with the case's rtol/atol (`compare`), and on anything but PASS name the node
at fault: the only node of a single-node case, the operator the backend's refusal names, else
by bisection (`fault`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict
from typing import Any

from chipbench.conformance.cases import Case, load_dataset
from chipbench.conformance.compare import compare_outputs
from chipbench.errors import one_line

_CACHE_SIZE = 64  # compiled models kept per worker (node cases are tiny)


class CaseRunner:
    """Runs cases on one backend in this process; keeps the builds of the last `_CACHE_SIZE`
    distinct models, keyed by their exact bytes and precision (never by a hash alone)."""

    def __init__(self, backend_name: str) -> None:
        from chipbench.backends.base import get_backend

        self.backend = get_backend(backend_name)
        self.builds: OrderedDict[tuple[bytes, str], tuple[Any, Any, str | None, BaseException | None]] = OrderedDict()
        self.hits = 0

    def compile(self, model_bytes: bytes, source: Any, spec: Any, opset: int):
        """(compiled, source compiled, conversion note, error): from the cache when the same bytes
        were built before in this process."""
        from chipbench.opset_lift import compile_lifting

        key = (model_bytes, spec.precision)
        if key in self.builds:
            self.hits += 1
            self.builds.move_to_end(key)
            return self.builds[key]
        try:
            entry = (*compile_lifting(self.backend, source, spec, opset), None)
        except Exception as exc:
            entry = (None, source, None, exc)
        self.builds[key] = entry
        if len(self.builds) > _CACHE_SIZE:
            self.builds.popitem(last=False)
        return entry

    def run(self, case: Case) -> dict:
        """The result of one case: outcome, detail, errors, node at fault, conversion note, seconds."""
        start = time.perf_counter()
        result = self._run(case)
        result["seconds"] = round(time.perf_counter() - start, 4)
        return result

    def _run(self, case: Case) -> dict:
        from chipbench.backends.base import CompileSpec, ModelSource, Unsupported
        from chipbench.byo import graph_precision
        from chipbench.modelfile import graph_inputs

        result: dict[str, Any] = {"case": case.name, "backend": self.backend.name, "outcome": "PASS", "detail": None,
                                  "max_abs": None, "max_rel": None, "node": None, "fault_by": None,
                                  "converted": None, "cached": False}
        if case.skip:
            return {**result, "outcome": "SKIPPED", "detail": case.skip}
        model, model_bytes, model_path = runnable_model(case)
        input_names = [i.name for i in graph_inputs(model)]
        output_names = [o.name for o in model.graph.output]
        precision = graph_precision(model)
        source = ModelSource(case.name, model_path, tuple(input_names), tuple(output_names), precision=precision)
        spec = CompileSpec(precision=precision, threads=1, options={"artifact_bytes": False})
        hits = self.hits
        compiled, _built, note, error = self.compile(model_bytes, source, spec, case.opset)
        result["cached"], result["converted"] = self.hits > hits, note
        datasets = [load_dataset(case, i, input_names, output_names) for i in range(case.datasets)]
        if error is not None:
            ops = error.ops if isinstance(error, Unsupported) else ()
            result.update(outcome="UNSUPPORTED", detail=one_line(error))
            self._fault(result, model, datasets, spec, case, ops)
            return result
        for inputs, expected in datasets:
            try:
                got = compiled.run(inputs)
            except Exception as exc:
                result.update(outcome="CRASHED", detail=f"raised while running: {one_line(exc)}")
                self._fault(result, model, datasets, spec, case)
                return result
            cmp = compare_outputs(got, expected, case.rtol, case.atol)
            result["max_abs"] = max(result["max_abs"] or 0.0, cmp.max_abs)
            result["max_rel"] = max(result["max_rel"] or 0.0, cmp.max_rel)
            if not cmp.ok:
                result.update(outcome="WRONG", detail=cmp.summary())
                self._fault(result, model, datasets, spec, case)
                return result
        return result

    def _fault(self, result: dict, model: Any, datasets: list, spec: Any, case: Case, ops: tuple[str, ...] = ()) -> None:
        """Fill `node` and `fault_by`: the single node, the node of the operator the backend named,
        else bisection on the first data set."""
        from chipbench.conformance.fault import bisect, node_label

        nodes = list(model.graph.node)
        if len(nodes) == 1:
            result["node"], result["fault_by"] = node_label(0, nodes[0]), "single node"
            return
        named = [i for i, n in enumerate(nodes) if n.op_type in ops]
        if named:
            result["node"], result["fault_by"] = node_label(named[0], nodes[named[0]]), "backend message"
            return
        if not datasets or not nodes:
            return
        inputs = datasets[0][0]
        result["node"], result["fault_by"] = bisect(model, inputs, lambda m, names: self._probe(m, names, spec, case),
                                                    lambda got, exp: compare_outputs(got, exp, case.rtol, case.atol).ok)

    def _probe(self, prefix: Any, names: list[str], spec: Any, case: Case) -> dict:
        import tempfile
        from pathlib import Path

        from chipbench.backends.base import ModelSource
        from chipbench.modelfile import graph_inputs

        with tempfile.TemporaryDirectory(prefix="chipbench-bisect-") as tmp:
            path = Path(tmp) / "model.onnx"
            data = prefix.SerializeToString()
            path.write_bytes(data)
            inputs = [i.name for i in graph_inputs(prefix)]
            source = ModelSource(case.name, path, tuple(inputs), tuple(names), precision=spec.precision)
            compiled, _src, _note, error = self.compile(data, source, spec, case.opset)
            if error is not None:
                raise error
            feeds = load_dataset(case, 0, inputs, [])[0]
            return compiled.run(feeds)


def runnable_model(case: Case) -> tuple[Any, bytes, Any]:
    """(model, its bytes, its path) as the backend gets it: the graph's name and doc strings
    cleared (ONNX names each node case's graph after the case, so identical graphs would never
    share a build), and weights that old exporters also listed as graph inputs listed only as
    initializers (as `chipbench run --model` does: TVM's importer rejects that habit). Written
    under `cache_dir("conformance-models", sha256)`, checked by its exact bytes."""
    import hashlib

    import onnx

    from chipbench.paths import atomic_write_bytes, cache_dir

    model = onnx.load(str(case.model_path))
    model.graph.name, model.graph.doc_string, model.doc_string = "conformance", "", ""
    weights = {t.name for t in model.graph.initializer}
    if any(i.name in weights for i in model.graph.input):
        real = [i for i in model.graph.input if i.name not in weights]
        del model.graph.input[:]
        model.graph.input.extend(real)
        model.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be inputs
    data = model.SerializeToString()
    path = cache_dir("conformance-models", hashlib.sha256(data).hexdigest()[:24]) / "model.onnx"
    if not path.exists() or path.read_bytes() != data:
        atomic_write_bytes(path, data)
    return model, data, path


def main(argv: list[str] | None = None) -> int:
    """Worker entry: answer one JSON line per request line until stdin closes."""
    backend = (argv or sys.argv[1:])[0]
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the backend prints, Python or C, goes to stderr, never into the replies
    sys.stdout = sys.stderr
    _die_with_parent()
    import warnings

    warnings.simplefilter("ignore")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    runner = CaseRunner(backend)
    reply.write(json.dumps({"ready": backend, "versions": runner.backend.versions()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        result = runner.run(Case.from_dict(request["case"]))
        reply.write(json.dumps(result, allow_nan=False, default=str) + "\n")
    return 0


def _die_with_parent() -> None:
    """The kernel kills this worker when the process that started it dies (Linux prctl)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    sys.exit(main())
