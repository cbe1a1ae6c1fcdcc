"""The scoreboard: stored conformance results summarised per backend, per opset range and per
operator, for the report and for `chipbench conformance --json`.

The newest result of each (case, backend) over every stored document counts (a slice run later
updates its cases and leaves the others). A pass rate is PASS / (cases run - SKIPPED): SKIPPED
cases are ones the harness cannot feed (non-tensor values), not the backend's doing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


# Opset ranges by ONNX release era: 1-6 legacy (pre ONNX 1.2), 7-12 (1.2-1.7), 13-17 (1.8-1.12),
# 18-21 (1.13-1.16), 22+ (1.17 on); from the ONNX versioning table (docs/Versioning.md).
OPSET_RANGES = ((1, 6), (7, 12), (13, 17), (18, 21), (22, 10_000))


def range_label(lo: int, hi: int) -> str:
    """"13-17", or "22+" for the open-ended last range."""
    return f"{lo}+" if hi >= 10_000 else f"{lo}-{hi}"


def anchor(op: str) -> str:
    """The HTML id of an operator's row in the report's conformance matrix."""
    return f"conformance-op-{op}"


@dataclass
class Rate:
    """PASS count of `counted` cases (SKIPPED left out) and every outcome's count."""

    passed: int = 0
    counted: int = 0
    outcomes: Counter = field(default_factory=Counter)

    def add(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if outcome != "SKIPPED":
            self.counted += 1
            self.passed += outcome == "PASS"

    @property
    def percent(self) -> float | None:
        return 100.0 * self.passed / self.counted if self.counted else None

    def text(self) -> str:
        return f"{self.passed}/{self.counted}" + (f" ({self.percent:.1f} %)" if self.counted else "")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "counted": self.counted, "percent": self.percent,
                "outcomes": dict(self.outcomes)}


@dataclass
class Scoreboard:
    """What the report shows. `ops`: operator -> backend -> Rate (node cases); `wrong`: every
    WRONG result with its case; `models`: converted-suite case -> backend -> result;
    `disagreements`: (operator, cases where the backends' outcomes differ, of cases)."""

    backends: list[str]
    versions: dict[str, dict[str, str]]
    onnx: str
    overall: dict[str, dict[str, Rate]]  # suite -> backend -> Rate
    by_opset: dict[str, dict[str, Rate]]  # range label -> backend -> Rate (node suite)
    ops: dict[str, dict[str, Rate]]
    wrong: list[dict[str, Any]]
    problems: dict[str, dict[str, list[str]]]  # operator -> backend -> "case: outcome" lines (not PASS, not WRONG)
    models: dict[str, dict[str, dict[str, Any]]]
    disagreements: list[tuple[str, int, int]]
    costs: dict[str, dict[str, Any]]

    @property
    def anchors(self) -> dict[str, str]:
        return {op: anchor(op) for op in self.ops}

    def to_dict(self) -> dict[str, Any]:
        def rates(table):
            return {k: {b: r.to_dict() for b, r in v.items()} for k, v in table.items()}

        return {"onnx": self.onnx, "backends": self.backends, "versions": self.versions,
                "overall": rates(self.overall), "by_opset": rates(self.by_opset), "ops": rates(self.ops),
                "wrong": self.wrong, "models": self.models,
                "disagreements": [{"op": o, "differ": d, "cases": n} for o, d, n in self.disagreements],
                "costs": self.costs}


def build(documents: list[dict[str, Any]]) -> Scoreboard | None:
    """The scoreboard of the newest result per (case, backend) over `documents` (oldest first),
    or None when there are none."""
    if not documents:
        return None
    cases: dict[str, dict] = {}
    latest: dict[tuple[str, str], dict] = {}
    versions: dict[str, dict] = {}
    costs: dict[str, dict] = {}
    for doc in documents:
        for c in doc["cases"]:
            cases[c["name"]] = c
        for r in doc["results"]:
            latest[(r["case"], r["backend"])] = r
        for b, info in doc["backends"].items():
            versions[b] = info.get("versions", {})
            costs[b] = {k: info.get(k) for k in ("seconds", "per_case_s", "worker_starts", "compiles_shared")}
            costs[b]["cases"] = sum(1 for r in doc["results"] if r["backend"] == b)
            costs[b]["suite"] = doc["suite"]
    backends = sorted({b for _, b in latest})
    overall: dict[str, dict[str, Rate]] = defaultdict(lambda: defaultdict(Rate))
    by_opset: dict[str, dict[str, Rate]] = defaultdict(lambda: defaultdict(Rate))
    ops: dict[str, dict[str, Rate]] = defaultdict(lambda: defaultdict(Rate))
    problems: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    models: dict[str, dict[str, dict]] = defaultdict(dict)
    wrong = []
    per_case: dict[str, dict[str, str]] = defaultdict(dict)
    for (name, backend), r in sorted(latest.items()):
        case = cases.get(name)
        if case is None:
            continue
        outcome = r["outcome"]
        overall[case["suite"]][backend].add(outcome)
        if case["suite"] == "node":
            lo, hi = next(((lo, hi) for lo, hi in OPSET_RANGES if lo <= case["opset"] <= hi), OPSET_RANGES[-1])
            by_opset[range_label(lo, hi)][backend].add(outcome)
            op = case["op"] or "(model)"
            ops[op][backend].add(outcome)
            per_case[name][backend] = outcome
            if outcome not in ("PASS", "WRONG"):
                problems[op][backend].append(f"{name}: {outcome}")
        else:
            models[name][backend] = r
        if outcome == "WRONG":
            wrong.append({**r, "op": case["op"] or ", ".join(case["ops"][:4]), "opset": case["opset"]})
    differ: Counter = Counter()
    total: Counter = Counter()
    for name, outcomes in per_case.items():
        op = cases[name]["op"] or "(model)"
        total[op] += 1
        if len(outcomes) > 1 and len({o == "PASS" for o in outcomes.values()}) > 1:
            differ[op] += 1
    disagreements = sorted(((op, d, total[op]) for op, d in differ.items()), key=lambda t: (-t[1], t[0]))
    order = {label: i for i, label in enumerate(range_label(lo, hi) for lo, hi in OPSET_RANGES)}
    return Scoreboard(
        backends=backends, versions=versions, onnx=documents[-1]["onnx"],
        overall={k: dict(v) for k, v in overall.items()},
        by_opset={k: dict(by_opset[k]) for k in sorted(by_opset, key=order.get)},
        ops={k: dict(ops[k]) for k in sorted(ops, key=str.lower)},
        wrong=sorted(wrong, key=lambda w: (w["backend"], w["op"], w["case"])),
        problems={k: dict(v) for k, v in problems.items()}, models=dict(sorted(models.items())),
        disagreements=disagreements, costs=costs)

