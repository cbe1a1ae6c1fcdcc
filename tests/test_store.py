import json

import jsonschema
import pytest

from chipbench.cell import base_record
from chipbench.record import RunRecord, validate
from chipbench.store import ResultsStore, StoreError
from chipbench.suite import Cell


def _record(backend="null", status="failed", reason="x"):
    return base_record(Cell(workload="tiny-mlp", backend=backend), status, reason)


def test_a_record_has_a_stable_configuration_hash_and_a_unique_id():
    rec = _record()
    validate(rec.to_dict())
    again = _record()
    assert rec.config_hash == again.config_hash and rec.id != again.id
    assert rec.config_hash != _record(backend="ort-cpu").config_hash


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
    with pytest.raises(StoreError, match="disk full"):
        store.add(_record("ort-cpu"))
    monkeypatch.undo()
    assert [r.id for r in store.records()] == [first.id]
    assert [p.stem for p in (tmp_path / "runs").glob("*")] == [first.id]


def test_a_rerun_adds_to_the_history_and_latest_is_the_newest(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(_record(reason="first"))
    store.add(_record(reason="second"))
    assert [r.reason for r in store.records()] == ["first", "second"]
    assert [r.reason for r in store.latest()] == ["second"]


def test_two_models_with_the_same_file_name_are_two_cells(tmp_path):
    store = ResultsStore(tmp_path)
    for sha in ("a" * 64, "b" * 64):
        cell = Cell(workload="m", backend="null", model="/x/m.onnx", workload_params={"sha256": sha})
        store.add(base_record(cell, "failed", sha[:1]))
    assert sorted(r.reason for r in store.latest()) == ["a", "b"]


def test_an_unreadable_row_is_skipped_and_named(tmp_path):
    import sqlite3

    store = ResultsStore(tmp_path)
    store.add(_record(reason="good"))
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("INSERT INTO runs VALUES ('bad','2026-01-01','w','b','fp32',1,'single-stream','ok',NULL,'{not json')")
    assert [r.reason for r in store.records()] == ["good"]
    assert len(store.unreadable) == 1 and "record bad" in store.unreadable[0]


def test_sync_indexes_what_a_crash_left_behind(tmp_path):
    store = ResultsStore(tmp_path)
    store.check_writable()
    orphan = _record(reason="json only")
    (tmp_path / "runs" / f"{orphan.id}.json").write_text(orphan.to_json())  # written, never indexed
    pending = _record(reason="incoming")
    (tmp_path / "incoming" / "999999999-abc.json").write_text(pending.to_json())  # its writer is gone
    assert store.sync() == 2
    assert {r.reason for r in store.records()} == {"json only", "incoming"}
    assert not list((tmp_path / "incoming").iterdir())
    assert store.sync() == 0


def test_a_corrupt_index_is_refused_before_a_sweep_and_rebuild_moves_it_aside(tmp_path):
    store = ResultsStore(tmp_path)
    kept = _record(reason="kept")
    store.add(kept)
    store.db_path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="chipbench.sqlite"):
        store.check_writable()
    count, moved = store.rebuild()
    assert count == 1 and moved is not None and moved.exists()
    assert [r.id for r in store.records()] == [kept.id]


def test_a_results_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "r").write_text("")
    with pytest.raises(StoreError, match="is a file"):
        ResultsStore(tmp_path / "r").check_writable()


def test_an_unwritable_results_dir_is_found_before_any_cell(tmp_path, monkeypatch):
    from pathlib import Path

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(StoreError, match="Read-only file system"):
        ResultsStore(tmp_path / "r").check_writable()
