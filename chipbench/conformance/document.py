"""A conformance run as stored: a JSON document of kind `conformance`, beside the run records.

It is not a RunRecord (no workload, scenario or latency: one result per case and backend), so it
has its own schema (`chipbench/schema/conformance.schema.json`, validated before it is written),
its own folder (`RESULTS/conformance/<id>.json`, atomic rename; the truth) and its own table in
the store's SQLite index (`conformance`), which RunRecord readers never read. Append-only like
the runs: a rerun adds a document, and the scoreboard takes the newest result of each (case,
backend) over all of them.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from chipbench.paths import atomic_write_text

KIND = "conformance"
SCHEMA_VERSION = 1
_TABLE = """
CREATE TABLE IF NOT EXISTS conformance (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    suite TEXT NOT NULL,
    backends TEXT NOT NULL,
    document TEXT NOT NULL
)
"""


def make_document(cases: list, results: list[dict], backends: dict[str, dict], suite: str,
                  selection: dict[str, Any]) -> dict[str, Any]:
    """The document of one run: onnx and backend versions, machine, git commit, the cases
    (name, suite, operator, opset, tolerances), one result per (case, backend), and per backend
    the worker's cost (seconds in all and per case, wall clock on this machine)."""
    import onnx

    from chipbench.machine import git_commit, machine_info

    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "id": uuid.uuid4().hex[:16],
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "onnx": onnx.__version__,
        "suite": suite,
        "selection": selection,
        "backends": backends,
        "machine": machine_info(),
        "git_commit": git_commit(),
        "cases": [{k: v for k, v in c.to_dict().items() if k not in ("folder",)} for c in cases],
        "results": results,
    }


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON schema of a conformance document (chipbench/schema/conformance.schema.json)."""
    return json.loads(resources.files("chipbench").joinpath("schema/conformance.schema.json").read_text())


def validate(document: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `document` is not a valid conformance document."""
    import jsonschema

    jsonschema.validate(document, schema())


def store(root: Path, document: dict[str, Any]) -> Path:
    """Validate, write `root/conformance/<id>.json`, then index it. Returns the file's path."""
    validate(document)
    text = json.dumps(document, indent=0, sort_keys=True, allow_nan=False)
    path = Path(root) / "conformance" / f"{document['id']}.json"
    atomic_write_text(path, text)
    with closing(sqlite3.connect(Path(root) / "chipbench.sqlite", timeout=60)) as conn, conn:
        conn.execute(_TABLE)
        conn.execute("INSERT OR IGNORE INTO conformance VALUES (?,?,?,?,?)",
                     (document["id"], document["created"], document["suite"],
                      ",".join(document["backends"]), text))
    return path


def documents(root: Path) -> list[dict[str, Any]]:
    """Every stored conformance document under `root`, oldest first (from the JSON files, the
    truth; a file that cannot be read or is not valid is left out)."""
    folder = Path(root) / "conformance"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
            validate(doc)
        except Exception:
            continue
        out.append(doc)
    return sorted(out, key=lambda d: d["created"])
