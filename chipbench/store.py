"""The results store: one JSON file per run plus an SQLite index, append-only.

A record is written to `runs/<id>.json` first (atomic rename), then indexed; the JSON files
are the truth and the index can always be rebuilt from them (`chipbench store rebuild`). The
index row holds the record without its raw latency samples' data (`ResultsStore.samples`
reads them from the JSON file).
Nothing is ever replaced: a rerun of a cell adds a record and `latest()` picks the newest per
cell. Cells write their record into `incoming/` before the sweep stores it, so a record
measured just before the CLI died is indexed by the next run (`sync()`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from typing import TYPE_CHECKING

from chipbench.paths import atomic_write_text
from chipbench.record import RunRecord, validate
from chipbench.samples import SamplesError
from chipbench.samples import decode as decode_samples

if TYPE_CHECKING:
    import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    workload TEXT NOT NULL,
    backend TEXT NOT NULL,
    precision TEXT NOT NULL,
    batch INTEGER NOT NULL,
    scenario TEXT NOT NULL,
    status TEXT NOT NULL,
    verdict TEXT,
    record TEXT NOT NULL
)
"""


class StoreError(Exception):
    """The results dir cannot be read or written; the message is one line naming the path."""


class ResultsStore:
    """Records under `root` (default `results/`): `runs/*.json`, `chipbench.sqlite`, `incoming/`."""

    def __init__(self, root: Path | str = "results") -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.incoming_dir = self.root / "incoming"
        self.db_path = self.root / "chipbench.sqlite"
        self.unreadable: list[str] = []  # rows or files skipped by the last read, one line each

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=60)
        conn.execute(_SCHEMA)
        return conn

    def check_writable(self) -> None:
        """Before a sweep measures anything: the folders can be made and written, and the index
        is a readable SQLite database. Raises StoreError naming the path."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: results dir is a file, not a folder")
        if self.db_path.exists():  # an index that is there must be readable before anything is made
            if not self.db_path.is_file():
                raise StoreError(f"{self.db_path}: the results index is not a file")
            try:
                with closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as conn:
                    # an SQLite database (another sweep may have made it and not its table yet)
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.db_path}: not a usable results index ({exc}); move it aside or run "
                                 f"`chipbench store rebuild --results-dir {self.root}`") from None
        for folder in (self.runs_dir, self.incoming_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-check-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise StoreError(f"{folder}: cannot write results here ({exc.strerror or exc})") from None
        try:
            with closing(self._connect()) as conn:
                conn.execute("BEGIN IMMEDIATE")  # a write lock: the index accepts writes
                conn.rollback()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.db_path}: cannot write the results index ({exc})") from None

    def add(self, record: RunRecord) -> Path:
        """JSON file first (atomic rename), then the index row. Raises StoreError (the record
        stays wherever it already was: its JSON file, or the cell's file in `incoming/`)."""
        text = record.to_json()
        check_record(record, text)
        path = self.runs_dir / f"{record.id}.json"
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise StoreError(f"{path}: cannot write the record ({exc.strerror or exc})") from None
        try:
            self._index(record, text)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.db_path}: cannot index record {record.id} ({exc}); its JSON file is "
                             f"kept and `chipbench store rebuild` indexes it") from None
        return path

    def _index(self, record: RunRecord, text: str, conn: sqlite3.Connection | None = None) -> None:
        row = (record.id, record.created, record.workload["name"], record.backend["name"], record.precision,
               record.batch, record.scenario["name"], record.status, record.verdict, index_text(text))
        # the id is unique per run: indexing a record twice (sync after a crash) keeps one row
        sql = "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)"
        if conn is not None:
            conn.execute(sql, row)
            return
        with closing(self._connect()) as c, c:
            c.execute(sql, row)

    def records(self) -> list[RunRecord]:
        """Every record, oldest first. Rows that cannot be read are skipped and listed in
        `unreadable` (one bad row never hides the others)."""
        self.unreadable = []
        if not self.db_path.exists():
            return []
        try:
            with closing(self._connect()) as conn:
                rows = conn.execute("SELECT id, record FROM runs ORDER BY created, rowid").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.db_path}: not a readable results index ({exc}); run "
                             f"`chipbench store rebuild --results-dir {self.root}`") from None
        out = []
        for rid, text in rows:
            try:
                out.append(RunRecord.from_dict(json.loads(text)))
            except (ValueError, TypeError, KeyError) as exc:
                self.unreadable.append(f"record {rid}: {type(exc).__name__}: {str(exc)[:120]}")
        return out

    def latest(self) -> list[RunRecord]:
        """The newest record of each cell (`RunRecord.cell_key`), in the order cells first appeared."""
        newest: dict[str, RunRecord] = {}
        for rec in self.records():
            newest[rec.cell_key()] = rec
        return list(newest.values())

    def measured_configs(self) -> set[str]:
        """The cell configurations (canonical JSON of `Cell.to_dict()`) that have an ok record,
        so a resumed sweep skips them."""
        return {canonical(rec.provenance.get("config")) for rec in self.records() if rec.status == "ok"}

    def sync(self) -> int:
        """Index what a crash or a full disk left behind: records in `incoming/` whose writer is
        gone, and JSON files in `runs/` that have no index row. Returns how many were added."""
        added = 0
        for path in sorted(self.incoming_dir.glob("*.json")) if self.incoming_dir.is_dir() else []:
            if _writer_alive(path):
                continue
            record = self._read_file(path)
            if record is None:  # kept, never deleted: a newer chipbench may read it
                unreadable = self.incoming_dir / "unreadable"
                unreadable.mkdir(exist_ok=True)
                path.rename(unreadable / path.name)
                continue
            try:
                self.add(record)
            except InvalidRecord as exc:  # kept aside, never deleted, and named
                self.unreadable.append(f"{path}: {exc}")
                unreadable = self.incoming_dir / "unreadable"
                unreadable.mkdir(exist_ok=True)
                path.rename(unreadable / path.name)
                continue
            added += 1
            path.unlink(missing_ok=True)
        if not self.runs_dir.is_dir():
            return added
        with closing(self._connect()) as conn, conn:
            known = {row[0] for row in conn.execute("SELECT id FROM runs")}
            for path in sorted(self.runs_dir.glob("*.json")):
                if path.stem in known:
                    continue
                record = self._read_file(path)
                if record is not None:
                    self._index(record, path.read_text(), conn)
                    added += 1
        return added

    def rebuild(self) -> tuple[int, Path | None]:
        """A fresh index from `runs/*.json` (and `incoming/`); an index that cannot be read is
        moved aside, never deleted. Returns (records indexed, where the old index went)."""
        moved = None
        if self.db_path.exists():
            try:
                with closing(self._connect()) as conn:
                    conn.execute("SELECT count(*) FROM runs").fetchone()
            except sqlite3.Error:
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                moved = self.db_path.with_name(f"{self.db_path.name}.unreadable-{stamp}")
                self.db_path.rename(moved)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.sync()
        with closing(self._connect()) as conn:
            count = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        return count, moved

    def samples(self, record: RunRecord) -> np.ndarray | None:
        """The record's raw per-query latencies in seconds (run order), or None when it kept none
        (older records). The index row holds only their count; the data is read from the
        record's JSON file. Raises StoreError when that file is gone or its samples are damaged."""
        stored = record.latency.samples if record.latency else None
        if stored is None:
            return None
        if "data" not in stored:
            path = self.runs_dir / f"{record.id}.json"
            try:
                stored = (json.loads(path.read_text()).get("latency") or {}).get("samples") or {}
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: cannot read the raw samples of record {record.id} ({exc})") from None
        try:
            return decode_samples(stored)
        except SamplesError as exc:
            raise StoreError(f"record {record.id}: {exc}") from None

    def _read_file(self, path: Path) -> RunRecord | None:
        try:
            return RunRecord.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self.unreadable.append(f"{path}: {type(exc).__name__}: {str(exc)[:120]}")
            return None


def index_text(text: str) -> str:
    """A record's JSON for its index row: the raw latency samples' data left out (their
    encoding, unit and count stay), so reading the index for a report stays fast however long
    the runs were; the record's JSON file keeps them (`ResultsStore.samples`)."""
    data = json.loads(text)
    samples = (data.get("latency") or {}).get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, dict) or "data" not in samples:
        return text
    samples.pop("data")
    return json.dumps(data, sort_keys=True, allow_nan=False)


class InvalidRecord(StoreError):
    """A record the schema does not allow: never stored."""


def check_record(record: RunRecord, text: str) -> None:
    """StoreError unless the record (as `text`, its JSON) is valid against the record schema
    (chipbench/schema/run_record.schema.json), naming the first field at fault."""
    import jsonschema

    try:
        validate(json.loads(text))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the record"
        raise InvalidRecord(f"record {record.id}: not a valid record ({where}: {exc.message[:200]})") from None


def canonical(value: object) -> str:
    """JSON text that is equal for equal values, whether they were tuples or lists."""
    return json.dumps(value, sort_keys=True, default=str)


def incoming_path(store: ResultsStore, token: str) -> Path:
    """Where a cell started by this process writes its record: named by this process's pid,
    so that `sync()` in another process leaves it alone while this one is alive."""
    return store.incoming_dir.resolve() / f"{os.getpid()}-{token}.json"  # absolute: cells run elsewhere


def _writer_alive(path: Path) -> bool:
    pid = path.name.split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
