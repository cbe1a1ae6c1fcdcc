"""ONNX's backend test cases, written once per onnx version into the chipbench cache.

Two suites:
- `node`: the generators in `onnx.backend.test.case.node` (`collect_testcases()`): one model per
  case (a single node, or the node's function body expanded: `*_expanded`), with inputs and
  expected outputs. They are generated here (a few seconds) and written in ONNX's own layout
  (`model.onnx`, `test_data_set_N/{input,output}_N.pb`) under
  `cache_dir("conformance", "onnx-<version>", "node", <case>)`.
- `converted`: the model tests shipped with data in the onnx wheel
  (`onnx/backend/test/data/{pytorch-converted,pytorch-operator,simple}`), read where they lie.

Tolerances are each case's own (`TestCase.rtol`/`atol`; `data.json` for the converted ones),
as ONNX's runner (`onnx.backend.test.runner.Runner.assert_similar_outputs`) applies them.
A case whose graph takes or returns anything but tensors (sequences, maps, optionals), or
tensors of an element type numpy cannot exchange with every backend (bfloat16, float8, int4,
strings: `chipbench.modelfile.NUMPY_DTYPES`, as for `chipbench run --model`), is kept with a
`skip` reason: the Backend contract exchanges numpy tensors only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chipbench.paths import atomic_write_text, cache_dir

SUITES = ("node", "converted", "all")
CONVERTED_KINDS = ("pytorch-converted", "pytorch-operator", "simple")
_INDEX = "index.json"
_FORMAT = 2  # bump when the cached layout changes


class CaseError(ValueError):
    """A selection that names nothing real (an unknown operator or suite); one line naming it."""


@dataclass(frozen=True)
class Case:
    """One ONNX backend test case.

    `op` is the operator under test (node suite; for `*_expanded` cases the operator whose
    function body was expanded) or "" for a model test; `ops` the operator types in its graph;
    `opset` the model's ai.onnx opset; `rtol`/`atol` ONNX's tolerances for it (dimensionless /
    the outputs' unit); `folder` holds `model.onnx` and `test_data_set_N/`; `skip` says why the
    harness cannot feed it (None when it can)."""

    name: str
    suite: str
    op: str
    ops: tuple[str, ...]
    opset: int
    rtol: float
    atol: float
    folder: str
    datasets: int
    skip: str | None = None

    @property
    def model_path(self) -> Path:
        return Path(self.folder) / "model.onnx"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        return cls(**{**data, "ops": tuple(data["ops"])})


def onnx_version() -> str:
    """The installed onnx's version: the node suite's cache is kept per version."""
    import onnx

    return onnx.__version__


def load_cases(suite: str = "node") -> list[Case]:
    """Every case of `suite` ("node", "converted" or "all"), generating the node suite into the
    cache on first use for this onnx version. Raises CaseError for an unknown suite."""
    if suite not in SUITES:
        raise CaseError(f"--suite '{suite}': expected one of {', '.join(SUITES)}")
    out: list[Case] = []
    if suite in ("node", "all"):
        out += _node_cases()
    if suite in ("converted", "all"):
        out += converted_cases()
    return out


def select(cases: list[Case], ops: list[str] | None = None, limit: int | None = None,
           sample: int | None = None, seed: int = 0, ignore_unknown: bool = False) -> list[Case]:
    """The cases testing any of `ops` (a node case by its operator, a model case by any operator
    in its graph; names compared case-insensitively), then the first `limit`, or a seeded random
    `sample` of them (Python's `random.Random(seed).sample`, in the suite's order). Raises
    CaseError naming an operator no case tests, unless `ignore_unknown` (operators taken from a
    workload's graph, some of which ONNX may not test)."""
    if ops:
        known = {o.lower(): o for c in cases for o in ((c.op,) if c.op else c.ops)}
        unknown = [o for o in ops if o.lower() not in known]
        if unknown and not ignore_unknown:
            raise CaseError(f"--ops: no conformance case tests {', '.join(repr(o) for o in unknown)} "
                            f"(e.g. {', '.join(sorted(set(known.values()))[:8])})")
        wanted = {o.lower() for o in ops}
        cases = [c for c in cases if (c.op.lower() in wanted if c.op else any(o.lower() in wanted for o in c.ops))]
    if sample is not None and sample < len(cases):
        picked = set(random.Random(seed).sample(range(len(cases)), sample))
        cases = [c for i, c in enumerate(cases) if i in picked]
    if limit is not None:
        cases = cases[:limit]
    return cases


def _node_cases() -> list[Case]:
    root = cache_dir("conformance", f"onnx-{onnx_version()}")
    index = root / _INDEX
    if index.exists():
        data = json.loads(index.read_text())
        if data.get("format") == _FORMAT:
            return [Case.from_dict(c) for c in data["cases"]]
    cases = _generate(root)
    atomic_write_text(index, json.dumps({"format": _FORMAT, "onnx": onnx_version(),
                                         "cases": [c.to_dict() for c in cases]}, indent=0))
    return cases


def _generate(root: Path) -> list[Case]:
    """Write every node case under `root/node/` (built in a temporary folder beside it and
    renamed into place, so a concurrent run never sees half a suite)."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the generators overflow casts on purpose
        warnings.simplefilter("ignore")
        tests = collect_testcases()
    final = root / "node"
    tmp = Path(tempfile.mkdtemp(prefix=".node-", dir=root))
    op_of: dict[str, str] = {}
    cases = []
    for test in tests:
        model = test.model
        ops = tuple(dict.fromkeys(n.op_type for n in model.graph.node))
        if "_expanded" in test.name:
            op = op_of.get(test.name.split("_expanded")[0], ops[0] if len(ops) == 1 else "")
        else:
            op = model.graph.node[0].op_type if len(model.graph.node) == 1 else (ops[0] if ops else "")
            op_of[test.name] = op
        skip = _non_tensor(model)
        folder = tmp / test.name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        if skip is None:
            skip = _write_datasets(folder, test.data_sets)
        cases.append(Case(test.name, "node", op, ops, _opset(model), float(test.rtol), float(test.atol),
                          str(final / test.name), len(test.data_sets or ()), skip))
    if final.exists():  # another process finished first: its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        try:
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return cases


def _write_datasets(folder: Path, data_sets: Any) -> str | None:
    from onnx import TensorProto, numpy_helper
    import numpy as np

    for i, (inputs, outputs) in enumerate(data_sets or ()):
        data = folder / f"test_data_set_{i}"
        data.mkdir()
        for kind, values in (("input", inputs), ("output", outputs)):
            for j, value in enumerate(values):
                if isinstance(value, TensorProto):
                    tensor = value
                elif isinstance(value, (np.ndarray, np.generic)):
                    tensor = numpy_helper.from_array(np.asarray(value))
                else:
                    return f"{kind} {j} is a {type(value).__name__}, not a tensor"
                (data / f"{kind}_{j}.pb").write_bytes(tensor.SerializeToString())
    return None


def converted_cases() -> list[Case]:
    """The converted-model tests shipped with data in the onnx wheel, read in place."""
    import onnx
    from onnx.backend.test.loader import DATA_DIR

    cases = []
    for kind in CONVERTED_KINDS:
        base = Path(DATA_DIR) / kind
        for folder in sorted(p for p in base.iterdir() if (p / "model.onnx").is_file()):
            rtol, atol = 1e-3, 1e-7  # onnx.backend.test.loader.load_model_tests' defaults
            if (folder / "data.json").is_file():
                meta = json.loads((folder / "data.json").read_text())
                rtol, atol = meta.get("rtol", rtol), meta.get("atol", atol)
            model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
            ops = tuple(dict.fromkeys(n.op_type for n in model.graph.node))
            datasets = len(list(folder.glob("test_data_set_*")))
            cases.append(Case(f"{kind}/{folder.name}", "converted", "", ops, _opset(model), float(rtol), float(atol),
                              str(folder), datasets, _non_tensor(model)))
    return cases


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _non_tensor(model: Any) -> str | None:
    """Why the harness cannot exchange this graph's values (a non-tensor input or output), or None."""
    from chipbench.modelfile import NUMPY_DTYPES, graph_inputs, type_text

    for role, values in (("input", graph_inputs(model)), ("output", model.graph.output)):
        for value in values:
            if value.type.WhichOneof("value") != "tensor_type":
                return (f"{role} '{value.name}' is {type_text(value.type)}: the Backend contract exchanges "
                        f"tensors only")
            if value.type.tensor_type.elem_type not in NUMPY_DTYPES:
                return (f"{role} '{value.name}' is {type_text(value.type)}, which numpy cannot exchange with "
                        f"every backend (chipbench.modelfile.NUMPY_DTYPES)")
    return None


def load_dataset(case: Case, index: int, input_names: list[str], output_names: list[str]):
    """(inputs, expected outputs) of data set `index`, as dicts of numpy arrays keyed by the
    graph's input and output names (the .pb files are in graph order)."""
    from onnx import TensorProto, numpy_helper

    folder = Path(case.folder) / f"test_data_set_{index}"

    def read(kind: str, names: list[str]) -> dict:
        out = {}
        for j, name in enumerate(names):
            path = folder / f"{kind}_{j}.pb"
            if not path.exists():  # an optional input left out
                continue
            out[name] = numpy_helper.to_array(TensorProto.FromString(path.read_bytes()))
        return out

    return read("input", input_names), read("output", output_names)
