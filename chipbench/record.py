"""RunRecord: one measured (or failed) cell, with everything needed to reproduce and trust it."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "unsupported", "failed")


@dataclass
class RunRecord:
    workload: dict[str, Any]  # name, scenario (industrial), params
    backend: dict[str, Any]  # name, versions, target, pipeline, tuning_db, details
    precision: str
    batch: int
    scenario: dict[str, Any]  # name, settings
    status: str
    reason: str | None = None
    latency: dict[str, Any] | None = None  # LatencyStats.to_dict()
    throughput: dict[str, Any] | None = None  # {"value": float, "unit": "samples/s"}
    accuracy: dict[str, Any] | None = None  # fidelity, tolerance, failures, task metric
    verdict: str | None = None  # VALID / INVALID (only for measured cells)
    compile: dict[str, Any] = field(default_factory=dict)  # seconds, artifact_bytes
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, Any] | None = None  # ONNX operators: counts and what became of each
    work: dict[str, Any] | None = None  # FLOPs and minimum bytes of one query (for the roofline)
    energy: dict[str, Any] | None = None  # measured device energy over the timed run (chipbench.energy)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = record_id(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        return cls(**data)


def record_id(rec: RunRecord) -> str:
    """Hash of what makes the result what it is: the same configuration gets the same id."""
    key = {
        "schema": rec.schema_version,
        "workload": rec.workload.get("name"),
        "params": rec.workload.get("params"),
        "backend": {k: rec.backend.get(k) for k in ("name", "versions", "target", "pipeline", "tuning_db")},
        "precision": rec.precision,
        "batch": rec.batch,
        "scenario": rec.scenario,
        "provenance": {k: rec.provenance.get(k) for k in
                       ("onnx_sha256", "exporter", "opset", "libraries", "machine", "device", "git_commit", "seed",
                        "config")},
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(resources.files("chipbench").joinpath("schema/run_record.schema.json").read_text())


def validate(data: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `data` is not a valid record."""
    import jsonschema

    jsonschema.validate(data, schema())
