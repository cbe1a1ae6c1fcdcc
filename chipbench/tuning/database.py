"""Tuning databases: their exact keys, folders, lookup, and shipping (see the package doc)."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KEY_FORMAT = 3
LEGACY_KEY_FORMAT = 2  # before weight prepacking: no "weight_prepack" field, built without it
KEY_FILE = "key.json"
META_FILE = "meta.json"
CURVE_FILE = "curve.json"
COST_MODEL_FILE = "cost_model.tar"  # XGBoost model and its training data, carried from round to round
RECORD_FILES = ("database_workload.json", "database_tuning_record.json")
SHIPPED_FILES = (KEY_FILE, *(f"{n}.gz" for n in RECORD_FILES), META_FILE, CURVE_FILE)  # as in results/tuned
TUNING_SUBDIR = "tuning"  # RESULTS_DIR/tuning
ENV_DIRS = "CHIPBENCH_TUNING_DIRS"  # extra roots, os.pathsep-separated


class TuningError(Exception):
    """Tuning could not start or finish (bad input, locked database, no tasks)."""


def shipped_root() -> Path:
    """`results/tuned/` in the source tree: pre-tuned databases that ship with chipbench."""
    return Path(__file__).resolve().parents[2] / "results" / "tuned"


# --------------------------------------------------------------------------- keys and lookup

def canonical_target(target: str | dict | None = None, threads: int | None = None) -> str:
    """The canonical TVM target string (JSON) that keys a database: the host CPU by default."""
    import tvm

    if target is None:
        from chipbench.backends.tvm import host_target

        return str(host_target(threads))
    if isinstance(target, str):
        return str(tvm.target.Target(target))
    return str(tvm.target.Target(dict(target)))


def target_slug(target: str) -> str:
    """A readable folder name for a target, e.g. 'llvm-znver4-2c' (+ a hash when it has
    attributes beyond kind, mcpu and num-cores, so distinct targets never share a folder)."""
    try:
        spec = json.loads(target)
    except ValueError:
        spec = {"kind": target}
    parts = [str(spec.get("kind", "target")), str(spec.get("mcpu") or "generic")]
    if spec.get("num-cores"):
        parts.append(f"{spec['num-cores']}c")
    plain = {"kind", "mcpu", "num-cores", "tag", "keys"}
    extra = {k: v for k, v in spec.items() if k not in plain}
    if extra or spec.get("keys", ["cpu"]) != ["cpu"] or spec.get("tag"):
        parts.append(hashlib.sha256(target.encode()).hexdigest()[:8])
    return _safe("-".join(parts))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")[:80] or "model"


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True, default=str)


_FLOAT_TYPES = (1, 10, 11, 16)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_KEEP_VALUES_UP_TO = 16  # elements: scalars and tiny tensors (clip bounds, scales) stay in the hash


def graph_sha256(onnx_path: Path) -> str:
    """sha256 of the ONNX model without its weights' values (see the module docstring)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def strip(graph) -> None:
        for t in graph.initializer:
            if t.data_type in _FLOAT_TYPES and math.prod(t.dims) > _KEEP_VALUES_UP_TO:
                for f in ("raw_data", "float_data", "double_data", "int32_data", "external_data"):
                    t.ClearField(f)
                t.ClearField("data_location")
        graph.ClearField("doc_string")
        for node in graph.node:
            node.ClearField("doc_string")
            for attr in node.attribute:
                if attr.HasField("g"):
                    strip(attr.g)
                for g in attr.graphs:
                    strip(g)

    strip(model.graph)
    for f in ("doc_string", "producer_name", "producer_version", "model_version"):
        model.ClearField(f)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def database_key(graph_sha: str, target: str, weight_prepack: bool = True) -> dict:
    """The full key of a database: what key.json holds and what a lookup compares, exactly."""
    return {"format": KEY_FORMAT, "graph_sha256": graph_sha, "target": target, "weight_prepack": weight_prepack}


def weight_prepack(key: dict | None) -> bool:
    """Whether a database's tasks (and so its build) have weights prepacked."""
    return bool((key or {}).get("weight_prepack", False))


def database_folder(root: Path, key: dict, name: str) -> Path:
    digest = hashlib.sha256(_key_text(key).encode()).hexdigest()[:12]
    return Path(root) / target_slug(key["target"]) / f"{_safe(name)}-{digest}"


def read_key(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None


def key_matches(key: dict | None, graph_sha: str, target: str) -> bool:
    """Exact comparison of the whole key (format, graph hash, canonical target string, prepacking)."""
    legacy = {"format": LEGACY_KEY_FORMAT, "graph_sha256": graph_sha, "target": target}
    return key in (database_key(graph_sha, target, True), database_key(graph_sha, target, False), legacy)


def search_roots(extra: Iterable[Path | str] = ()) -> list[Path]:
    """Where `tvm-llvm-tuned` looks, in order: roots it is given (--tuning-db, options),
    $CHIPBENCH_TUNING_DIRS, ./results/tuning (the default results dir), the shipped results/tuned."""
    roots = [Path(p) for p in extra if p]
    roots += [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    roots += [Path("results") / TUNING_SUBDIR, shipped_root()]
    seen, out = set(), []
    for r in roots:
        resolved = r.resolve()
        if resolved not in seen:
            seen.add(resolved)
            out.append(r)
    return out


def candidate_folders(roots: Sequence[Path], target: str) -> list[Path]:
    """Database folders under the roots' slug folder for this target (a root may itself be a
    slug folder or a database folder)."""
    slug = target_slug(target)
    out: list[Path] = []
    for root in roots:
        root = Path(root)
        if (root / KEY_FILE).is_file():
            out.append(root)
            continue
        for base in (root / slug, root):
            if base.is_dir():
                out += sorted(p for p in base.iterdir() if (p / KEY_FILE).is_file())
    return out


def find_database(graph_sha: str, target: str, roots: Sequence[Path] | None = None) -> Path | None:
    """The database folder whose key.json is exactly this model's and target's key; the first
    root that has one wins, and within a root a prepacked one, then the one with the most records."""
    for root in roots if roots is not None else search_roots():
        matches = [f for f in candidate_folders([root], target) if key_matches(read_key(f), graph_sha, target)]
        if matches:
            return max(matches, key=lambda f: (weight_prepack(read_key(f)), record_count(f)))
    return None


def unpacked(folder: Path) -> Path:
    """A database MetaSchedule can open. Shipped databases keep their records gzipped (the
    serialized task modules are megabytes of JSON); they are unpacked once into the cache,
    reused only while the cached key.json and records equal the shipped ones exactly."""
    folder = Path(folder)
    if not (folder / f"{RECORD_FILES[0]}.gz").is_file():
        return folder
    from chipbench.paths import atomic_write_bytes, cache_dir

    dest = cache_dir("tuned", folder.parent.name, folder.name)
    files = {name: gzip.decompress((folder / f"{name}.gz").read_bytes()) for name in RECORD_FILES}
    files.update({name: (folder / name).read_bytes() for name in (KEY_FILE, META_FILE, CURVE_FILE)
                  if (folder / name).is_file()})
    for name, data in files.items():
        path = dest / name
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
    return dest


def record_count(folder: Path) -> int:
    """Measured candidates in the database (one line per tuning record)."""
    path = Path(folder) / RECORD_FILES[1]
    packed = path.with_name(path.name + ".gz")
    if packed.is_file():
        data = gzip.decompress(packed.read_bytes())
    elif path.is_file():
        data = path.read_bytes()
    else:
        return 0
    return sum(1 for line in data.splitlines() if line.strip())


def records_digest(folder: Path) -> str:
    """sha256 over key.json and the two record files: what a tuned build depends on."""
    digest = hashlib.sha256()
    for name in (KEY_FILE, *RECORD_FILES):
        path = Path(folder) / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def read_curve(folder: Path) -> list[dict]:
    try:
        return json.loads((Path(folder) / CURVE_FILE).read_text())
    except (OSError, ValueError):
        return []


def ship(folder: Path, dest_root: Path | None = None, prune: bool = True) -> Path:
    """Copy a database into results/tuned/<target-slug>/<model>-<key>/ as a shareable artifact
    (TopHub-style): key.json, meta.json, curve.json and the records, by default pruned to the
    best record per task (MetaSchedule's `dump_pruned`), which is all a build applies."""
    import shutil

    key = read_key(folder)
    if key is None:
        raise TuningError(f"{folder}: no key.json")
    folder = Path(folder)
    name = read_meta(folder).get("model", {}).get("name") or folder.name.rsplit("-", 1)[0]
    dest = database_folder(dest_root or shipped_root(), key, name)
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        (dest / name).unlink(missing_ok=True)
        (dest / f"{name}.gz").unlink(missing_ok=True)
    if prune:
        from tvm.s_tir import meta_schedule as ms

        source = ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")
        source.dump_pruned(ms.database.JSONDatabase(work_dir=str(dest), module_equality="structural"))
    else:
        for name in RECORD_FILES:
            shutil.copy2(folder / name, dest / name)
    shutil.copy2(folder / KEY_FILE, dest / KEY_FILE)
    if (folder / CURVE_FILE).is_file():
        shutil.copy2(folder / CURVE_FILE, dest / CURVE_FILE)
    meta = read_meta(folder)
    meta["shipped"] = {"from": f"{folder.parent.name}/{folder.name}", "at": now(), "pruned_to_best": prune,
                       "records": record_count(dest)}
    write_json(dest / META_FILE, meta)
    for name in RECORD_FILES:  # gzipped in the source tree; `unpacked` restores them for use
        (dest / f"{name}.gz").write_bytes(gzip.compress((dest / name).read_bytes(), mtime=0))
        (dest / name).unlink()
    return dest


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    from chipbench.paths import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))
