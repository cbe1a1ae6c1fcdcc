"""The results store: an SQLite index plus one JSON file per run, both written atomically."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from chipbench.paths import atomic_write_text
from chipbench.record import RunRecord

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


class ResultsStore:
    def __init__(self, root: Path | str = "results") -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.db_path = self.root / "chipbench.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=30)
        conn.execute(_SCHEMA)
        return conn

    def add(self, record: RunRecord) -> Path:
        """JSON file first (atomic rename), then the index row in one transaction."""
        text = record.to_json()
        path = self.runs_dir / f"{record.id}.json"
        atomic_write_text(path, text)
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (record.id, record.created, record.workload["name"], record.backend["name"],
                 record.precision, record.batch, record.scenario["name"], record.status,
                 record.verdict, text),
            )
        return path

    def records(self) -> list[RunRecord]:
        if not self.db_path.exists():
            return []
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT record FROM runs ORDER BY created, id").fetchall()
        return [RunRecord.from_dict(json.loads(r[0])) for r in rows]

    def latest(self) -> list[RunRecord]:
        """The newest record of each (workload, backend, precision, batch, scenario) cell."""
        newest: dict[tuple, RunRecord] = {}
        for rec in self.records():
            key = (rec.workload["name"], rec.backend["name"], rec.precision, rec.batch, rec.scenario["name"])
            newest[key] = rec
        return list(newest.values())
