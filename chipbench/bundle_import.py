"""Bring a bundle runner's records home: verify them against the bundle, then store them.

Refused (BundleError naming the file at fault) when any file of the bundle differs from its
manifest, when the records were measured from another bundle (or the manifest was edited),
when the records file does not match its digest, when a record is not a valid RunRecord, or
when a record's identity (workload, backend, precision, batch, model, compile, cell) is not
the bundle's or its id is not the hash of its content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chipbench.bundle_format import MANIFEST, BundleError, read_records, verify
from chipbench.record import RunRecord, config_hash
from chipbench.suite import Cell, SuiteError, check_cell

# The cell config keys a runner may change (the scenario it ran and its measurement settings).
_RUNNER_KEYS = ("scenario", "settings")


def check_records(bundle: Path, records_file: Path) -> list[RunRecord]:
    """The records of `records_file`, each verified to belong to `bundle` (see module doc)."""
    import jsonschema

    from chipbench.record import schema

    manifest, manifest_sha = verify(bundle)
    doc = read_records(records_file)
    if doc["manifest_sha256"] != manifest_sha:
        raise BundleError(Path(bundle) / MANIFEST, f"sha256 {manifest_sha[:16]}... is not the manifest "
                          f"{records_file} was measured from ({str(doc['manifest_sha256'])[:16]}...)")
    if not doc["records"]:
        raise BundleError(records_file, "holds no records")
    out = []
    for i, data in enumerate(doc["records"], 1):
        try:
            jsonschema.validate(data, schema())
        except jsonschema.ValidationError as exc:
            raise BundleError(records_file, f"record {i} is not a valid RunRecord ({exc.message[:200]})") from None
        try:  # what a runner may change must still be a cell chipbench would run
            check_cell(Cell.from_dict(data["provenance"]["config"]))
        except (SuiteError, TypeError, KeyError) as exc:
            raise BundleError(records_file, f"record {i}: its cell config is not valid ({exc})") from None
        for what, got, want in _identity(data, manifest):
            if got != want:
                raise BundleError(records_file, f"record {i}: {what} is not the bundle's")
        record = RunRecord.from_dict(data)
        if config_hash(record) != data.get("config_hash"):
            raise BundleError(records_file, f"record {i}: config_hash {data.get('config_hash')} is not the hash "
                                            f"of its content")
        out.append(record)
    return out


def _identity(rec: dict[str, Any], manifest: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    prov = rec.get("provenance", {})
    config = {k: v for k, v in prov.get("config", {}).items() if k not in _RUNNER_KEYS}
    cell = {k: v for k, v in manifest["cell"].items() if k not in _RUNNER_KEYS}
    model = manifest["model"]
    compiled = {k: rec.get("compile", {}).get(k) for k in manifest["compile"]}
    return [
        ("workload", rec.get("workload"), manifest["workload"]),
        ("backend", rec.get("backend"), manifest["backend"]),
        ("precision", rec.get("precision"), manifest["precision"]),
        ("batch", rec.get("batch"), manifest["batch"]),
        ("model", [prov.get(k) for k in ("onnx_sha256", "exporter", "opset")],
         [model[k] for k in ("onnx_sha256", "exporter", "opset")]),
        ("compile", compiled, manifest["compile"]),
        ("cell config", config, cell),
        ("compiling host", [prov.get("machine"), prov.get("libraries"), prov.get("git_commit")],
         [manifest["host"][k] for k in ("machine", "libraries", "git_commit")]),
        ("device kind", prov.get("device", {}).get("kind"), manifest["device"]["kind"]),
    ]


def import_records(bundle: Path, records_file: Path, store) -> list[RunRecord]:
    """Verify (check_records) and add every record to `store` (a ResultsStore)."""
    records = check_records(bundle, records_file)
    for record in records:
        store.add(record)
    return records
