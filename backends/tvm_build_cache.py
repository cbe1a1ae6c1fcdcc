"""Compiled TVM libraries kept by their exact build inputs, so a cell that was built before loads
its shared library instead of compiling again (minutes for a ResNet-50 untuned, most of a
small model's cell).

The key is everything the machine code depends on: the ONNX file's sha256 (after any
quantization), the canonical target string (CPU, features, cores), the tuning database's
records digest and weight prepacking, the TVM version (and with it LLVM's) and the sha256 of
the build recipe itself (`backends/tvm.py`). A different value of any of them is a miss; there
is no near match. A hit is reported as such (`BuildCacheEntry.hit`, with the seconds the
original build took), never as a fresh compile. CHIPBENCH_BUILD_CACHE=0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipbench.paths import atomic_write_text, cache_dir, sha256_file

LIBRARY = "model.so"
META = "build.json"


def enabled() -> bool:
    """False when CHIPBENCH_BUILD_CACHE is 0/false/off/no."""
    return os.environ.get("CHIPBENCH_BUILD_CACHE", "1").strip().lower() not in ("0", "false", "off", "no")


def build_key(onnx_path: Path, target: str, database_digest: str | None, weight_prepack: bool) -> dict[str, Any]:
    """The exact inputs of a TVM build (see the module docstring), as a JSON-ready dict."""
    import tvm

    recipe = Path(__file__).with_name("tvm.py")
    return {"onnx_sha256": sha256_file(Path(onnx_path)), "target": str(target), "database": database_digest,
            "weight_prepack": bool(weight_prepack), "tvm": tvm.__version__, "recipe_sha256": sha256_file(recipe)}


@dataclass(frozen=True)
class BuildCacheEntry:
    """Where one build lives: `library` (the exported shared object) and what building it cost
    (`build_s`, seconds; `pipeline`, as the build named itself). `hit`: it was there before
    this cell asked."""

    folder: Path
    hit: bool
    build_s: float | None
    pipeline: str

    @property
    def library(self) -> Path:
        return self.folder / LIBRARY

    @property
    def library_bytes(self) -> int:
        return self.library.stat().st_size

    def to_dict(self) -> dict[str, Any]:
        """What the record's backend details say of it."""
        return {"hit": self.hit, "build_s": self.build_s, "key": self.folder.name}


def _folder(key: dict[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True)
    return cache_dir("tvm-build", hashlib.sha256(text.encode()).hexdigest()[:24])


def lookup(key: dict[str, Any]) -> BuildCacheEntry | None:
    """The cached build for exactly `key`, or None (also when the cache is off or damaged)."""
    if not enabled():
        return None
    folder = _folder(key)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not (folder / LIBRARY).is_file():
        return None
    return BuildCacheEntry(folder, True, meta.get("build_s"), meta.get("pipeline", ""))


def store(key: dict[str, Any], exe: Any, build_s: float, pipeline: str) -> BuildCacheEntry | None:
    """Export `exe` (a relax executable) under `key`; None when the cache is off. The library is
    written beside and renamed into place, so a reader never loads half a file."""
    if not enabled():
        return None
    folder = _folder(key)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        built = Path(tmp) / LIBRARY
        exe.export_library(str(built))
        shutil.move(str(built), str(folder / LIBRARY))
    atomic_write_text(folder / META, json.dumps({"key": key, "build_s": build_s, "pipeline": pipeline}, indent=1))
    return BuildCacheEntry(folder, False, build_s, pipeline)


def remembered(name: str, key: dict[str, Any], compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, hit): `compute()`'s JSON-ready result for exactly `key`, kept as `name`.json in the
    key's cache folder (what a build of those inputs implies, e.g. which tasks a tuning database
    schedules), so a later cell reads it instead of working it out again. Computed every time
    when the cache is off."""
    if not enabled():
        return compute(), False
    path = _folder(key) / f"{name}.json"
    try:
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept["value"], True
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    atomic_write_text(path, json.dumps({"key": key, "value": value}, indent=1))
    return value, False


def load(entry: BuildCacheEntry) -> Any:
    """The cached library as a runtime module a `relax.VirtualMachine` runs."""
    import tvm

    return tvm.runtime.load_module(str(entry.library))
