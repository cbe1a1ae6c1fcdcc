"""The tuning databases `chipbench list` shows: where each was tuned and, for this CPU, whether
`tvm-llvm-tuned` would use it as tuned here or transferred (chipbench.tuning.transfer)."""
from __future__ import annotations

from pathlib import Path

from chipbench.tuning.database import read_key, read_meta, record_count, search_roots, target_slug


def database_rows(host_target: str | None = None, roots: list[Path] | None = None) -> list[dict]:
    """One row per database under the lookup's roots (key.json and meta.json only: no TVM):
    {"model", "target" (slug), "records", "seeded_from", "path"}. With `host_target` (a
    canonical target string; needs TVM) each row also gets "here": "tuned here" (its key's
    target is this one), "transferred from <slug>" (the database tvm-llvm-tuned would transfer
    for this graph: no exact one, and the closest of the same kind), or "" (not used here)."""
    from chipbench.tuning.transfer import all_databases

    folders = all_databases(roots if roots is not None else search_roots())
    rows = []
    for folder in folders:
        key, meta = read_key(folder) or {}, read_meta(folder)
        rows.append({"model": (meta.get("model") or {}).get("name") or folder.name.rsplit("-", 1)[0],
                     "target": target_slug(str(key.get("target", ""))), "records": record_count(folder),
                     "seeded_from": (meta.get("seeded_from") or {}).get("source_slug"), "path": str(folder),
                     "graph_sha256": key.get("graph_sha256"), "_key_target": key.get("target")})
    if host_target is not None:
        from chipbench.tuning.transfer import find_source

        for row in rows:
            row["here"] = ""
        for sha in {r["graph_sha256"] for r in rows}:
            mine = [r for r in rows if r["graph_sha256"] == sha]
            exact = [r for r in mine if r["_key_target"] == host_target]
            if exact:
                for r in exact:
                    r["here"] = "tuned here"
                continue
            source = find_source(sha, host_target, [Path(r["path"]) for r in mine])
            for r in mine:
                if source is not None and Path(r["path"]).resolve() == source.folder.resolve():
                    r["here"] = f"transferred from {source.slug}"
    for row in rows:
        del row["_key_target"]
    return rows
