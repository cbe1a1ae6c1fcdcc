import json

import jsonschema
import pytest

from chipbench.cell import base_record
from chipbench.record import RunRecord, validate
from chipbench.store import ResultsStore
from chipbench.suite import Cell


def _record(backend="null", status="failed", reason="x"):
    return base_record(Cell(workload="tiny-mlp", backend=backend), status, reason)


def test_failed_record_validates_and_has_a_stable_id():
    rec = _record()
    validate(rec.to_dict())
    assert rec.id == _record().id
    assert rec.id != _record(backend="ort-cpu").id


def test_schema_rejects_a_broken_record():
    data = _record().to_dict()
    data["status"] = "great"
    with pytest.raises(jsonschema.ValidationError):
        validate(data)
    data = _record().to_dict()
    del data["provenance"]
    with pytest.raises(jsonschema.ValidationError):
        validate(data)


def test_store_keeps_sqlite_and_json_in_step(tmp_path):
    store = ResultsStore(tmp_path)
    a, b = _record("null"), _record("ort-cpu")
    store.add(a)
    store.add(b)
    assert {r.id for r in store.records()} == {a.id, b.id}
    on_disk = {p.stem for p in (tmp_path / "runs").glob("*.json")}
    assert on_disk == {a.id, b.id}
    saved = RunRecord.from_dict(json.loads((tmp_path / "runs" / f"{a.id}.json").read_text()))
    assert saved.to_json() == a.to_json()
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failing_write_leaves_earlier_records_whole(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    first = _record("null")
    store.add(first)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        store.add(_record("ort-cpu"))
    monkeypatch.undo()
    assert [r.id for r in store.records()] == [first.id]
    assert [p.stem for p in (tmp_path / "runs").glob("*")] == [first.id]


def test_rerun_of_the_same_cell_replaces_its_record(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(_record(reason="first"))
    store.add(_record(reason="second"))
    assert [r.reason for r in store.latest()] == ["second"]
