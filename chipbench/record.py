"""RunRecord: one measured (or failed) cell, with everything needed to reproduce and trust it."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from copy import deepcopy
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from chipbench.measures import Accuracy, CompileCost, Resources, Throughput, plain, typed
from chipbench.stats import LatencyStats

SCHEMA_VERSION = 2
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
    latency: LatencyStats | None = None  # per-query ms, tails, raw samples
    throughput: Throughput | None = None  # samples/s or tokens/s
    accuracy: Accuracy | None = None  # fidelity, tolerance, failures, task metric
    verdict: str | None = None  # VALID / NOISY / INVALID (only for measured cells; chipbench.validity)
    compile: CompileCost = field(default_factory=CompileCost)  # seconds, artifact_bytes
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, Any] | None = None  # ONNX operators: counts and what became of each
    work: dict[str, Any] | None = None  # FLOPs and minimum bytes of one query (for the roofline)
    kind: str = "run"  # "run": a benchmark; "profile": a per-operator breakdown (in `profile`); "fit": a deployment verdict (in `fit`)
    profile: dict[str, Any] | None = None  # chipbench.opprofile.OpProfile.to_dict()
    energy: dict[str, Any] | None = None  # measured device energy over the timed run (chipbench.energy)
    generation: dict[str, Any] | None = None  # the generation scenario: TTFT, TPOT, tokens/s (chipbench.generation)
    resources: Resources | None = None  # memory, CPU use, cold start, threads, affinity (chipbench.resources)
    validity: list[dict[str, Any]] | None = None  # named rules behind the verdict (chipbench.validity)
    tuning: dict[str, Any] | None = None  # how a tuned backend's schedules were obtained (tvm_tuned.tuning_provenance)
    quantization: dict[str, Any] | None = None  # the int8 configuration that ran and why (chipbench.int8_search)
    fit: dict[str, Any] | None = None  # kind "fit": a requirement judged against a measured cell (chipbench.fit)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    schema_version: int = SCHEMA_VERSION
    config_hash: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        # The measured parts are value objects (chipbench.measures); a stored record's dicts become them here.
        self.latency = typed(LatencyStats, self.latency)
        self.throughput = typed(Throughput, self.throughput)
        self.accuracy = typed(Accuracy, self.accuracy)
        self.compile = typed(CompileCost, self.compile or {})
        self.resources = typed(Resources, self.resources)
        if not self.config_hash:
            self.config_hash = config_hash(self)
        if not self.id:
            # Unique per run: the store is append-only, so a rerun of the same configuration
            # adds a record beside the earlier one instead of replacing it.
            self.id = uuid.uuid4().hex[:16]

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON form (chipbench/schema/run_record.schema.json), parts serialised."""
        parts = ("latency", "throughput", "accuracy", "compile", "resources")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in parts}
        return {**deepcopy(d), **{name: plain(getattr(self, name)) for name in parts}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record as stored, of this schema or an older one (chipbench.migrate.upgrade)."""
        from chipbench.migrate import upgrade

        return cls(**upgrade(data))

    @property
    def device_id(self) -> str:
        """Where the cell ran, as cells name devices: cpu, cuda:0, rpc://HOST:PORT/KEY."""
        return (self.provenance.get("device") or {}).get("id") or "cpu"

    @property
    def device_label(self) -> str:
        """The device id with what the device calls itself, e.g. "cuda:0 (NVIDIA H200)"."""
        name = (self.provenance.get("device") or {}).get("name")
        return f"{self.device_id} ({name})" if name else self.device_id

    def cell_key(self) -> str:
        """What makes two records measurements of the same cell: the kind, the cell's whole
        configuration but how long it was measured (workload and its params, a foreign model by
        its content hash, backend, precision, batch, scenario, threads, target, tuning
        database, seed) and the device, on the machine it ran on. The newest record of a cell is
        its current result; the others are history."""
        config = {k: v for k, v in (self.provenance.get("config") or {}).items() if k not in _NOT_IN_CELL_KEY}
        device = self.provenance.get("device") or {}
        where = (device.get("machine") or self.provenance.get("machine") or {}).get("hostname")
        key = [self.kind, self.workload.get("name"), self.workload.get("params"), self.backend.get("name"),
               config, self.device_id, where, self.precision, self.batch, self.scenario.get("name")]
        return json.dumps(key, sort_keys=True, default=str)


# Config keys left out of the cell key: how long a cell is measured, and the device as the cell
# named it (None or "cuda:0" alike: the key holds the id of the device it ran on).
_NOT_IN_CELL_KEY = ("settings", "timeout_s", "task_samples", "device")


def config_hash(rec: RunRecord) -> str:
    """Hash of what makes the result what it is: the same configuration gets the same hash."""
    key = {
        "schema": rec.schema_version,
        "kind": rec.kind,
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
