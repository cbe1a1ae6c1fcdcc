"""Schema-1 records (the committed reference run) read as schema 2; records validated when stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chipbench.measures import plain
from chipbench.migrate import MIGRATED_NOTE, MigrationError, upgrade
from chipbench.record import SCHEMA_VERSION, RunRecord, validate
from chipbench.store import ResultsStore, StoreError

REFERENCE = Path(__file__).parents[1] / "results" / "reference" / "runs"


def reference_records() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(REFERENCE.glob("*.json"))]


def test_every_reference_record_reads_as_the_current_schema_unchanged_in_its_figures():
    old = reference_records()
    assert old and {r["schema_version"] for r in old} == {1}
    for data in old:
        rec = RunRecord.from_dict(data)
        assert rec.schema_version == SCHEMA_VERSION and rec.id == data["id"] and rec.config_hash == data["id"]
        assert plain(rec.latency) == data["latency"] and rec.verdict == data["verdict"]
        if data["accuracy"] is not None:  # every stored figure read back as it was
            acc = rec.accuracy.to_dict()
            assert {k: acc[k] for k in data["accuracy"] if k != "fidelity"} == {
                k: v for k, v in data["accuracy"].items() if k != "fidelity"}
            assert data["accuracy"]["fidelity"].items() <= acc["fidelity"].items()
        assert rec.notes[-1] == MIGRATED_NOTE and rec.validity is None and rec.resources is None
        validate(rec.to_dict())


def test_a_current_record_is_left_as_it_is_and_an_unknown_version_refused():
    data = upgrade(reference_records()[0])
    assert upgrade(data) == data and data["notes"].count(MIGRATED_NOTE) == 1
    with pytest.raises(MigrationError, match="schema_version 7"):
        upgrade({**data, "schema_version": 7})


def test_the_store_refuses_a_record_the_schema_does_not_allow(tmp_path):
    store = ResultsStore(tmp_path)
    rec = RunRecord.from_dict(reference_records()[0])
    store.add(rec)
    bad = RunRecord.from_dict({**rec.to_dict(), "id": "", "verdict": "SPLENDID"})
    with pytest.raises(StoreError, match="not a valid record.*verdict"):
        store.add(bad)
    assert [r.id for r in store.records()] == [rec.id]
    assert not (store.runs_dir / f"{bad.id}.json").exists()
