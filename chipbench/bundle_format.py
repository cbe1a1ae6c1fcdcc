"""The bundle on disk: what a compiled cell carries to the machine that runs it, and how its
integrity is checked on both ends.

A bundle is a folder:

    manifest.json    format, cell, workload, backend (name, versions, target, pipeline,
                     tuning_db), compile time, host provenance, tolerance, the runtime module
                     that loads it, and {file: {sha256, bytes}} for every other file
    <backend files>  e.g. model.so + params.npz (TVM) or model.onnx (ONNX Runtime)
    inputs.npz       the inputs the cell times (arrays a0, a1, ... named in the manifest)
    reference.npz    the FP32 reference outputs on those inputs

Arrays travel as `.npz` only and are read with `allow_pickle=False`: nothing in a bundle is
unpickled. Names live in the manifest, not as zip member names, so any ONNX name survives.

Arrays too large to carry (a ResNet-50's weights) may be left out of their `.npz`: the
manifest's `left_out` lists each such member with its `array_digest` (sha256 of dtype, shape
and bytes: an `.npz` file's own hash also covers zip metadata), and its `rebuild` section says
how the device makes them again (chipbench.bundle_rebuild). Rebuilt members are written to
`rebuilt/<file>.npz` in the bundle; `bundle_members` reads a file with them filled in, each
checked against its digest, and refuses one that is missing or differs, naming it.

The runner's records travel back as one JSON file (`RECORDS_FORMAT`) that names the bundle
by the sha256 of its manifest and carries a digest of its records. The digest catches a
record edited or swapped after the run, or records brought back to the wrong bundle; it is
not a signature (anyone who edits a record can recompute it), so it proves integrity
against accidents, not authenticity.

Light on purpose (json, hashlib, numpy): the runtime-side runner imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.paths import sha256_file

FORMAT = "chipbench-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INPUTS = "inputs.npz"
REFERENCE = "reference.npz"
RECORDS_FORMAT = "chipbench-bundle-records"
REBUILT = "rebuilt"  # the bundle's folder for the arrays the device rebuilt (see bundle_rebuild)
# The modules a manifest may name as its runtime: the runner imports nothing else by name.
RUNTIME_MODULES = ("chipbench.backends.tvm_runtime", "chipbench.backends.ort_runtime")

Arrays = dict[str, np.ndarray]


@dataclass
class Loaded:
    """A bundle loaded on its device by a runtime module's `load(folder, entries, input_names,
    output_names, device_index)`.

    - `run(inputs) -> outputs`: host arrays in, host arrays out, the device finished.
    - `timer(inputs, n)`: n queries by the device's own clock, seconds each (e.g. TVM
      `time_evaluator`, one query per repeat); None where the host clock times `run`.
    - `load_s`: seconds from nothing to ready (library, session or VM, weights on the device).
    - `device`: what the device reports (a GPU's name, memory, compute version; threads).
    - `versions`: the runtime libraries that ran it.
    """

    run: Callable[[Arrays], Arrays]
    timer: Callable[[Arrays, int], list[float]] | None
    load_s: float
    device: dict[str, Any]
    versions: dict[str, str]
    timer_untimed_calls: int = 0  # device calls each timer round makes outside its samples (time_evaluator: 1)
    close: Callable[[], None] = field(default=lambda: None)


class BundleError(Exception):
    """A bundle or records file that cannot be used. `path` is the file at fault; the message
    is one line that names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)




def file_entry(path: Path) -> dict[str, Any]:
    """The manifest's entry for one file: {"sha256": hex, "bytes": size}."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> list[str]:
    """Write `arrays` to an uncompressed .npz as a0, a1, ...; returns the names in that order
    (the manifest keeps them). Object arrays are refused (they would need pickle)."""
    names = list(arrays)
    for name in names:
        if np.asarray(arrays[name]).dtype == object:
            raise ValueError(f"array '{name}' has dtype object, which .npz can only hold pickled")
    with open(path, "wb") as f:
        np.savez(f, **{f"a{i}": np.asarray(arrays[n], order="C") for i, n in enumerate(names)})
    return names


def load_arrays(path: Path, names: list[str], members: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Read what `save_arrays` wrote, back under the manifest's names; BundleError naming the
    file when it is not a pickle-free .npz with exactly those arrays. `members` (from
    `bundle_members`) stands in for reading `path` when given."""
    data = read_npz(path) if members is None else members
    if sorted(data) != sorted(f"a{i}" for i in range(len(names))):
        raise BundleError(path, f"holds {sorted(data)}, the manifest names {len(names)} array(s)")
    return {n: data[f"a{i}"] for i, n in enumerate(names)}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of a pickle-free .npz, by member name; BundleError naming the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise BundleError(path, f"not a readable .npz ({exc})") from None


def array_digest(array: np.ndarray) -> str:
    """Hex sha256 of an array's dtype (numpy's `dtype.str`, e.g. '<f4'), shape and C-order
    bytes: equal arrays have equal digests whichever file or process holds them."""
    a = np.asarray(array)
    digest = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    digest.update(np.ascontiguousarray(a).tobytes())  # the same bytes for a 0-d array and its 1-element copy
    return digest.hexdigest()


def describe_array(member: str, entry: dict[str, Any]) -> str:
    """A left-out array in words, e.g. "p12 (weight 'onnx::Conv_497', float32 [2048, 512, 1, 1])"."""
    what = f"{entry['what']}, " if entry.get("what") else ""
    return f"{member} ({what}{entry.get('dtype')} {entry.get('shape')})"


def left_out(manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The manifest's left-out arrays: {file: {member: {sha256, dtype, shape, bytes, what}}}."""
    return manifest.get("left_out") or {}


def bundle_members(folder: Path, name: str, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The members of the bundle's .npz `name`, with those the manifest left out read from
    `rebuilt/<name>` and checked against their digests. BundleError naming the array when one
    is not rebuilt or differs: a bundle never runs with other arrays than it was compiled with."""
    folder = Path(folder)
    members = read_npz(folder / name)
    missing = left_out(manifest).get(name, {})
    if not missing:
        return members
    path = folder / REBUILT / name
    rebuilt = read_npz(path) if path.is_file() else {}
    for member, entry in missing.items():
        if member in members:
            raise BundleError(folder / name, f"holds {member}, which the manifest lists as left out")
        if member not in rebuilt:
            raise BundleError(path, f"array {describe_array(member, entry)} was left out of {name} and is not "
                                    f"rebuilt here (python -m chipbench.bundle_rebuild {folder})")
        found = array_digest(rebuilt[member])
        if found != entry.get("sha256"):
            raise BundleError(path, f"array {describe_array(member, entry)} has sha256 {found[:16]}..., the "
                                    f"compiling host's is {str(entry.get('sha256'))[:16]}... (rebuilt differently)")
        members[member] = rebuilt[member]
    return members


def check_left_out(folder: Path, manifest: dict[str, Any]) -> None:
    """Every array the manifest left out is rebuilt in `folder` and equals the compiling
    host's (BundleError naming the first that is not)."""
    for name in left_out(manifest):
        bundle_members(folder, name, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed manifest of the bundle in `folder`; BundleError when missing or not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(path, "no such file (not a chipbench bundle?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(path, f"not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise BundleError(path, f"bundle format version {manifest.get('version')}, this chipbench reads {FORMAT_VERSION}")
    if manifest.get("runtime", {}).get("module") not in RUNTIME_MODULES:
        raise BundleError(path, f"runtime module {manifest.get('runtime', {}).get('module')!r} is not one of "
                                f"{', '.join(RUNTIME_MODULES)}")
    return manifest


def verify(folder: Path) -> tuple[dict[str, Any], str]:
    """Check every file the manifest lists against its sha256 and size. Returns (manifest,
    sha256 of manifest.json). BundleError naming the first file that is missing or differs."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(folder / MANIFEST, "lists no files")
    for name, entry in sorted(files.items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(folder / MANIFEST, f"file name {name!r} leaves the bundle folder")
        if not path.is_file():
            raise BundleError(path, "listed in the manifest but missing")
        found = sha256_file(path)
        if found != entry.get("sha256"):
            raise BundleError(path, f"sha256 {found[:16]}... differs from the manifest's "
                                    f"{str(entry.get('sha256'))[:16]}... (modified after bundling?)")
    return manifest, sha256_file(folder / MANIFEST)


def records_digest(manifest_sha256: str, records: list[dict[str, Any]]) -> str:
    """sha256 over the bundle's manifest hash and the records' canonical JSON (sorted keys)."""
    text = json.dumps({"manifest_sha256": manifest_sha256, "records": records}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def records_document(manifest_sha256: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document a runner writes: format, the bundle it ran, its records and their digest."""
    return {"format": RECORDS_FORMAT, "manifest_sha256": manifest_sha256, "records": records,
            "sha256": records_digest(manifest_sha256, records)}


def read_records(path: Path) -> dict[str, Any]:
    """Parse a runner's records file and check its digest; BundleError naming it otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(path, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != RECORDS_FORMAT or not isinstance(doc.get("records"), list):
        raise BundleError(path, f"not a {RECORDS_FORMAT} file (written by `python -m chipbench.bundle_runner`)")
    if doc.get("sha256") != records_digest(str(doc.get("manifest_sha256")), doc["records"]):
        raise BundleError(path, "records do not match their digest (edited after the run?)")
    return doc
