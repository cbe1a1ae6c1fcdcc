"""Records written by older chipbench versions, read as the current schema (chipbench.record).

Schema 1 (before the append-only store) named a record by the hash of its configuration: its
`id` was what schema 2 calls `config_hash`, and it had no `config_hash`, `kind`, `profile`,
`energy`, `resources` or `validity`. `upgrade` turns such a record into a schema-2 one without
inventing anything: the id and every measured figure stay as they were, the configuration hash
is the old id, the fields schema 1 did not have are absent (None), and a note says where the
record came from. The committed reference run (`results/reference/`) is schema 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CURRENT = 2
MIGRATED_NOTE = "migrated from schema 1 (its id was the configuration hash)"


class MigrationError(ValueError):
    """A record whose schema version this chipbench cannot read."""


def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` (a record as stored) as a schema-CURRENT record dict; a current record is
    returned as a copy, unchanged. MigrationError for a version that is not 1 or CURRENT."""
    out = dict(data)
    version = out.get("schema_version", 1)
    if version == CURRENT:
        return out
    if version != 1:
        raise MigrationError(f"schema_version {version!r} is not one this chipbench reads (1 or {CURRENT})")
    out["schema_version"] = CURRENT
    out.setdefault("config_hash", out.get("id", ""))
    out.setdefault("kind", "run")
    notes = list(out.get("notes") or [])
    if MIGRATED_NOTE not in notes:
        notes.append(MIGRATED_NOTE)
    out["notes"] = notes
    return out
