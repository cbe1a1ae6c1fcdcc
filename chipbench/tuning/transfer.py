"""Transferred tuning databases: schedules tuned for one x86 CPU target, used on another.

A database is found by its exact key (graph, canonical target; see `database`). When no
database matches exactly, `tvm-llvm-tuned` may use the database of the same graph tuned for
another target of the same kind (transfer tuning): LLVM, the same architecture in the
`-mtriple` (x86_64). Of several, the closest wins (`closeness`): the same vendor, then the most
ISA extensions in common (Jaccard index of the feature sets LLVM reports for each target's
`-mcpu`/`-mattr`), then the same native vector width, then the same `-mcpu`, then the
nearest core count.

Every record of the source is checked against this target before it is used (`check_record`):
a record is dropped, and its task keeps the default schedule, when

- its trace tensorizes with an intrinsic whose instructions this target lacks (the x86
  intrinsics of TVM's `s_tir/tensor_intrin/x86.py`; an intrinsic we cannot check is dropped
  too), or
- its scheduled function does not build for this target (MetaSchedule's builder function).

A record whose vectorized loops are wider than this target's native vectors (e.g. 16 fp32
lanes, 512 bits, on an AVX2-only target) builds: LLVM splits such vectors into native-width
instructions, as it does on the source target (MetaSchedule's CPU rules vectorize up to 64
lanes, 2048 bits of fp32, wider than any x86 register). It is kept and counted
(`records_wider_than_native`), so a report can say so.

The checked records go into a folder of their own in the cache (`materialize`), with a
`transfer.json` that says where they came from. That folder has no key.json: nothing can find
it by key, so a transferred database is never taken for one tuned here, and `chipbench tune`
never writes into it (it copies its records as seeds, re-measured here; see `session`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from chipbench.tuning.database import (KEY_FILE, LEGACY_KEY_FORMAT, KEY_FORMAT, read_key, record_count,
                                       records_digest, target_slug, unpacked, weight_prepack, write_json)

TRANSFER_FILE = "transfer.json"
TRANSFER_FORMAT = 1  # of transfer.json; a cached transfer of another format is redone
ENV_TARGET = "CHIPBENCH_TVM_TARGET"  # overrides the detected host target (see backends.tvm.host_target)

# LLVM's x86 CPU names by vendor (llvm/lib/TargetParser/X86TargetParser.cpp): AMD's families,
# and the generic micro-architecture levels; every other x86 name there is Intel's.
_AMD_PREFIXES = ("znver", "bdver", "btver", "amdfam", "athlon", "k8", "k6", "opteron", "barcelona", "geode")
_GENERIC = ("", "generic", "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "i386", "i486", "i586", "i686")

# LLVM features whose presence sets the widest native vector register (bits) of an x86 CPU.
_VECTOR_BITS = (("avx512f", 512), ("avx", 256), ("sse2", 128), ("sse", 128))

# Tensor intrinsics of TVM 0.27's s_tir/tensor_intrin/x86.py and the LLVM features their
# instructions need: VNNI's vpdpbusd.512 (avx512vnni on 512-bit registers), and the AVX-512
# fallback's pmaddubs.w.512 / pmaddw.d.512 (avx512bw).
INTRINSIC_FEATURES: dict[str, frozenset[str]] = {
    "dot_16x4_vnni": frozenset({"avx512f", "avx512vnni"}),
    "dot_16x4_avx512": frozenset({"avx512f", "avx512bw"}),
}


@dataclass(frozen=True)
class TargetTraits:
    """What decides whether schedules tuned for one CPU target suit another.

    kind: the TVM target kind ("llvm"); arch: the architecture of its `-mtriple` (the host's
    when it names none), e.g. "x86_64"; mcpu: the LLVM CPU name ("" = generic); vendor: "AMD",
    "Intel" or "generic" (from the CPU name); features: LLVM's feature names for that CPU
    (+ `-mattr`); vector_bits: the widest native vector register, bits; cores: `num-cores`
    (None when the target does not say)."""

    kind: str
    arch: str
    mcpu: str
    vendor: str
    features: frozenset[str]
    vector_bits: int
    cores: int | None

    def label(self) -> str:
        """e.g. "llvm -mcpu=znver4 -num-cores=2", the CLI form of the target."""
        parts = [self.kind, f"-mcpu={self.mcpu}" if self.mcpu else "", f"-num-cores={self.cores}" if self.cores else ""]
        return " ".join(p for p in parts if p)


def vendor_of(mcpu: str) -> str:
    """"AMD", "Intel" or "generic" for an LLVM x86 CPU name (see _AMD_PREFIXES)."""
    name = (mcpu or "").lower()
    if name in _GENERIC:
        return "generic"
    return "AMD" if name.startswith(_AMD_PREFIXES) else "Intel"


def vector_bits_of(features: frozenset[str] | set[str]) -> int:
    """Widest native vector register in bits: 512 with AVX-512F, 256 with AVX, else 128 (64 without SSE)."""
    return next((bits for feature, bits in _VECTOR_BITS if feature in features), 64)


def target_spec(target: str) -> dict:
    """A canonical target string (TVM's JSON) as a dict; {"kind": target} when it is not JSON."""
    try:
        spec = json.loads(target)
    except ValueError:
        return {"kind": target}
    return spec if isinstance(spec, dict) else {"kind": str(target)}


def traits_of(target: str) -> TargetTraits:
    """TargetTraits of a canonical target string (needs TVM: LLVM reports the CPU's features)."""
    import tvm
    from tvm.target import codegen

    spec = target_spec(target)
    kind = str(spec.get("kind", ""))
    features: frozenset[str] = frozenset()
    arch = ""
    if kind == "llvm":
        features = frozenset(str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(target)))
        arch = _arch(str(spec.get("mtriple") or codegen.llvm_get_system_triple()))
    cores = spec.get("num-cores")
    mcpu = str(spec.get("mcpu") or "")
    return TargetTraits(kind=kind, arch=arch, mcpu=mcpu, vendor=vendor_of(mcpu), features=features,
                        vector_bits=vector_bits_of(features), cores=int(cores) if cores else None)


def _arch(triple: str) -> str:
    arch = triple.split("-", 1)[0].lower()
    return {"amd64": "x86_64", "x86-64": "x86_64"}.get(arch, arch)


def same_kind(want: TargetTraits, have: TargetTraits) -> bool:
    """Whether schedules for `have` may be tried on `want` at all: both LLVM, same architecture."""
    return want.kind == have.kind == "llvm" and want.arch == have.arch and bool(want.arch)


def closeness(want: TargetTraits, have: TargetTraits) -> tuple:
    """Sort key, larger is closer: (same vendor, Jaccard index of the feature sets, same native
    vector width, same -mcpu, same core count, minus the core-count difference)."""
    union = want.features | have.features
    jaccard = len(want.features & have.features) / len(union) if union else 1.0
    cores_diff = abs((want.cores or 0) - (have.cores or 0))
    return (want.vendor == have.vendor, round(jaccard, 6), want.vector_bits == have.vector_bits,
            want.mcpu == have.mcpu, want.cores == have.cores, -cores_diff)


T = TypeVar("T")


def rank(want: TargetTraits, candidates: Sequence[tuple[T, TargetTraits]]) -> list[tuple[T, TargetTraits]]:
    """The candidates of the same kind as `want`, closest first (stable: equally close ones keep
    their order, i.e. search-root order). Pure: no TVM needed."""
    usable = [(item, traits) for item, traits in candidates if same_kind(want, traits)]
    return sorted(usable, key=lambda c: closeness(want, c[1]), reverse=True)


# --------------------------------------------------------------------------- finding a source

@dataclass(frozen=True)
class TransferSource:
    """A database of the same graph tuned for another target, chosen to transfer from."""

    folder: Path
    key: dict
    traits: TargetTraits

    @property
    def slug(self) -> str:
        return target_slug(self.key["target"])


def all_databases(roots: Sequence[Path]) -> list[Path]:
    """Every database folder (one with a key.json) under the roots, for any target: a root may
    be a database folder, a target's slug folder, or a root of slug folders."""
    out: list[Path] = []
    for root in map(Path, roots):
        if (root / KEY_FILE).is_file():
            out.append(root)
            continue
        for base in (root, *sorted(p for p in root.glob("*") if p.is_dir())) if root.is_dir() else ():
            out += sorted(p for p in base.iterdir() if p.is_dir() and (p / KEY_FILE).is_file())
    seen, unique = set(), []
    for folder in out:
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            unique.append(folder)
    return unique


def find_source(graph_sha: str, target: str, roots: Sequence[Path]) -> TransferSource | None:
    """The closest database of this graph made for another target of the same kind, or None.
    Among equally close ones: the first root's, then a prepacked one, then the most records."""
    want = traits_of(target)
    found: list[tuple[tuple[Path, dict], TargetTraits]] = []
    for folder in all_databases(roots):
        key = read_key(folder)
        if (not isinstance(key, dict) or key.get("graph_sha256") != graph_sha or key.get("target") == target
                or key.get("format") not in (KEY_FORMAT, LEGACY_KEY_FORMAT)):
            continue
        try:
            found.append(((folder, key), traits_of(str(key["target"]))))
        except Exception:  # a target this TVM cannot parse: not a candidate
            continue
    ranked = rank(want, found)
    if not ranked:
        return None
    best = closeness(want, ranked[0][1])
    ties = [c for c in ranked if closeness(want, c[1]) == best]
    (folder, key), traits = max(ties, key=lambda c: (weight_prepack(c[0][1]), record_count(c[0][0])))  # stable
    return TransferSource(folder, key, traits)


# --------------------------------------------------------------------------- checking records

def record_intrinsics(record: Any) -> list[str]:
    """Names of the tensor intrinsics a tuning record's trace tensorizes with."""
    names = []
    for inst in record.trace.insts:
        if inst.kind.name in ("Tensorize", "Blockize"):
            names += [str(a) for a in inst.attrs if isinstance(a, str) or type(a).__name__ == "String"]
    return names


_VECTORIZED = re.compile(r"T\.vectorized\((?:T\.u?int\d+\()?(\d+)\)")
_DTYPE_BITS = re.compile(r'"(?:float|int|uint|bfloat)(\d+)"')


def vector_bits_used(scheduled_mod: Any) -> int:
    """Widest vectorized loop of a scheduled module in bits: its extent times the widest
    element type the module names (an upper bound, read from the TVMScript text)."""
    text = scheduled_mod.script()
    lanes = [int(n) for n in _VECTORIZED.findall(text)]
    if not lanes:
        return 0
    bits = max((int(b) for b in _DTYPE_BITS.findall(text)), default=32)
    return max(lanes) * bits


def check_record(record: Any, target: Any, features: frozenset[str]) -> tuple[str | None, int]:
    """(why the record cannot be used on `target`, or None; bits of its widest vectorized loop).
    Builds the record's scheduled function for `target` (MetaSchedule's builder function)."""
    from chipbench.errors import one_line
    from chipbench.tuning.tasks import build_without_gpu_intrinsics

    for name in record_intrinsics(record):
        need = INTRINSIC_FEATURES.get(name)
        if need is None:
            return f"tensor intrinsic {name}: not one whose instructions can be checked", 0
        if not need <= features:
            return f"tensor intrinsic {name} needs {', '.join(sorted(need - features))}", 0
    try:
        mod = record.as_measure_candidate().sch.mod
        build_without_gpu_intrinsics(mod, target, None)
    except Exception as exc:
        return f"does not build for this target: {one_line(exc, 200)}", 0
    return None, vector_bits_used(mod)


def materialize(source: TransferSource, target: str) -> tuple[Path, dict]:
    """The source's records that build for `target`, as a database folder in the cache, and
    what transfer.json says about them (see the module doc). Reused while the source's records,
    the target and the TVM version are the same; redone otherwise."""
    import tvm

    from chipbench.paths import cache_dir
    from chipbench.tuning.database import now

    src = unpacked(source.folder)
    digest = records_digest(src)
    dest = cache_dir("transferred", target_slug(target), f"{source.slug}--{source.folder.name}")
    expect = {"format": TRANSFER_FORMAT, "source_digest": digest, "target": target, "tvm": tvm.__version__}
    info = _read_json(dest / TRANSFER_FILE)
    if info and {k: info.get(k) for k in expect} == expect and all((dest / n).is_file() for n in _RECORD_NAMES):
        return dest, info

    from tvm.s_tir import meta_schedule as ms

    from chipbench.tuning.tasks import load_cpu_intrinsics

    load_cpu_intrinsics()  # records may replay x86 tensorize steps
    want = traits_of(target)
    tvm_target = tvm.target.Target(target)
    for name in (*_RECORD_NAMES, TRANSFER_FILE):
        (dest / name).unlink(missing_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(src), module_equality="structural")
    out = ms.database.JSONDatabase(work_dir=str(dest), module_equality="structural")
    records = database.get_all_tuning_records()
    dropped: dict[str, int] = {}
    wider = 0
    for record in records:
        reason, bits = check_record(record, tvm_target, want.features)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        wider += bits > want.vector_bits
        workload = out.commit_workload(record.workload.mod)
        out.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs, record.target,
                                                          record.args_info))
    info = {**expect, "provenance": "transferred", "source_key": source.key, "source_slug": source.slug,
            "source_target": source.traits.label(), "source_folder": str(source.folder),
            "source_traits": _traits_dict(source.traits), "target_traits": _traits_dict(want),
            "records_source": len(records), "records_kept": len(records) - sum(dropped.values()),
            "records_dropped": sum(dropped.values()), "dropped_reasons": dropped,
            "records_wider_than_native": wider, "created": now()}
    write_json(dest / TRANSFER_FILE, info)
    return dest, info


_RECORD_NAMES = ("database_workload.json", "database_tuning_record.json")


def _traits_dict(traits: TargetTraits) -> dict:
    d = asdict(traits)
    d.pop("features")  # dozens of names; the record keeps the summary
    return d


def read_transfer(folder: Path) -> dict:
    """transfer.json of a transferred database folder ({} when it is not one)."""
    return _read_json(Path(folder) / TRANSFER_FILE)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def provenance_label(tuning: dict | None) -> str:
    """How a record's schedules were obtained, in words: "tuned here", "tuned here (seeded from
    llvm-znver4-2c)", "transferred from llvm-znver4-2c (3 records dropped)"; "" when untuned."""
    if not tuning:
        return ""
    if tuning.get("provenance") == "transferred":
        dropped = tuning.get("records_dropped") or 0
        return f"transferred from {tuning.get('source_slug')}" + (f" ({dropped} record(s) dropped)" if dropped else "")
    seeded = (tuning.get("seeded_from") or {}).get("source_slug")
    return "tuned here" + (f" (seeded from {seeded})" if seeded else "")


def target_from_text(text: str) -> dict:
    """A target as a user writes it, TVM JSON ('{"kind": "llvm", "mcpu": "haswell"}') or the
    CLI form TVM 0.27 no longer parses ('llvm -mcpu=haswell -num-cores=2'), as a dict.
    ValueError when it is neither."""
    text = text.strip()
    if text.startswith("{"):
        spec = json.loads(text)
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ValueError(f"target {text!r}: a JSON target needs a \"kind\"")
        return spec
    words = text.split()
    if not words or words[0].startswith("-"):
        raise ValueError(f"target {text!r}: give a kind first, e.g. 'llvm -mcpu=haswell'")
    spec: dict[str, Any] = {"kind": words[0]}
    for word in words[1:]:
        name, eq, value = word.lstrip("-").partition("=")
        if not word.startswith("-") or not eq or not name:
            raise ValueError(f"target {text!r}: {word!r} is not -name=value")
        spec[name] = int(value) if name == "num-cores" and value.isdigit() else (
            value.split(",") if name in ("mattr", "keys") else value)
    return spec
