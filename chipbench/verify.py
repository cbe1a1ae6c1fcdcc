"""`chipbench verify`: re-derive what a results dir claims from what it holds, and list every
figure that does not follow.

For every record file `runs/<id>.json` (the store's truth; chipbench.store):

- it is a valid record (chipbench/schema/run_record.schema.json);
- its file name is its id and no other file holds that id. Record ids in schema 2 are random
  per run (the store is append-only: a rerun of the same configuration adds a record beside
  the earlier one), so an id cannot be derived from content; `config_hash` is the content
  hash, and is re-derived (`chipbench.record.config_hash`; schema-1 records kept their old id
  there and are not re-hashed);
- the index row (`chipbench.sqlite`) holds the same record (its raw samples' data left out,
  as `chipbench.store.index_text` writes it), and every index row has its file (a results
  dir without an index, e.g. a copied `runs/`, has nothing to compare with);
- every latency statistic equals `LatencyStats.from_samples` of its decoded raw samples with
  the record's seed (median CI included), within the float32 rounding the samples were kept
  with (chipbench.samples);
- the throughput follows from the samples and the batch (batch × queries / summed seconds,
  chipbench.recording.measured_fields), or, for Server and fixed-rate cells, from the rate
  LoadGen or the issuer reported (chipbench.scenario_run._served_rate);
- the verdict and its named rules equal `chipbench.validity.judge` of a copy of the record
  (records older than named rules: the verdict alone).

Figures that cannot be re-derived from a record are not claimed to be: `bare_loop_median_ms`
(a separate timing loop), tokens/s of generation cells, and records without raw samples.

Bundles under the results dir (a `manifest.json` of format chipbench-bundle): every file it
lists has its sha256 and size; a runner's records file (chipbench-bundle-records) matches its
digest. A Markdown report (`--report`) is compared with the report re-rendered from the store,
table by table, row by row, cell by cell (chipbench.report_check).

Every disagreement is a `Mismatch(file, field, stored, derived)`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipbench.record import RunRecord, config_hash, validate
from chipbench.store import ResultsStore, index_text

# The raw samples are float32 (chipbench.samples): each is within 2**-24 (relative) of the
# value the stored statistics were computed from, so every order statistic, mean, interval
# bound and standard deviation is within 2**-24 × the largest sample of it. The tolerance
# allows 16 times that.
FLOAT32_ROUNDING = 2.0 ** -24
SAMPLE_TOLERANCE = 16 * FLOAT32_ROUNDING
# Figures that follow from a record's own fields are compared to this relative precision
# (they were computed by the same code from the same numbers).
RELATIVE_TOLERANCE = 1e-9
LATENCY_FIELDS = ("count", "median", "p90", "p99", "p999", "mean", "stdev", "min", "max")


class VerifyInputError(Exception):
    """The results dir or report cannot be verified at all (missing, not a folder, not a
    Markdown report); the message is one line naming the path."""


@dataclass(frozen=True)
class Mismatch:
    """One figure that does not follow: in `file`, the `field` (a dotted path, or a report's
    table/row/column) holds `stored`; re-derived it is `derived` (both as text)."""

    file: str
    field: str
    stored: str
    derived: str

    def line(self) -> str:
        return f"{self.file}: {self.field}: stored {self.stored}, derived {self.derived}"


@dataclass
class Verification:
    """What `verify_results` checked (`checked`: counts by kind, e.g. records, bundles, report
    cells) and every `Mismatch` it found; `ok` when there is none."""

    mismatches: list[Mismatch] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def lines(self) -> list[str]:
        """The verify log: one line per mismatch, then a summary line."""
        what = ", ".join(f"{n} {kind}" for kind, n in self.checked.items()) or "nothing"
        end = ("OK: every figure re-derived" if self.ok else f"FAILED: {len(self.mismatches)} mismatch(es)")
        return [m.line() for m in self.mismatches] + [f"checked {what}; {end}"]


def verify_results(root: Path | str, report: Path | str | None = None) -> Verification:
    """Verify the results dir `root` (and the Markdown `report`, when given) as the module doc
    says. Raises VerifyInputError when `root` is not a results dir or `report` not a readable
    Markdown file."""
    root = Path(root)
    if not root.is_dir():
        raise VerifyInputError(f"{root}: no such results dir")
    store = ResultsStore(root)
    text = None
    if report is not None:
        report = Path(report)
        if not report.is_file():
            raise VerifyInputError(f"{report}: no such report")
        if report.suffix.lower() != ".md":
            raise VerifyInputError(f"{report}: --report takes the Markdown report (report.md)")
        try:
            text = report.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VerifyInputError(f"{report}: cannot read the report ({exc})") from None
    out = Verification()
    has_records = store.runs_dir.is_dir() or store.db_path.exists()
    if has_records:
        out.mismatches += check_records(store, out.checked)
    out.mismatches += check_bundles(root, out.checked)
    if not has_records and not out.checked:
        raise VerifyInputError(f"{root}: no results here (no runs/, no {store.db_path.name}, no bundle)")
    if report is not None:
        from chipbench.report_check import check_report

        out.mismatches += check_report(store, report, text, out.checked)
    return out


def check_records(store: ResultsStore, checked: Counter) -> list[Mismatch]:
    """Every record file and index row of `store` (see the module doc)."""
    found: list[Mismatch] = []
    index = _index_rows(store, found)
    files = sorted(store.runs_dir.glob("*.json")) if store.runs_dir.is_dir() else []
    seen: dict[str, Path] = {}
    for path in files:
        checked["records"] += 1
        name = str(path)
        try:
            text = path.read_text()
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            found.append(Mismatch(name, "record", "unreadable", f"({type(exc).__name__}: {str(exc)[:80]})"))
            continue
        if not isinstance(data, dict):
            found.append(Mismatch(name, "record", type(data).__name__, "a JSON object"))
            continue
        rid = data.get("id")
        if rid != path.stem:
            found.append(Mismatch(name, "id", str(rid), f"{path.stem} (the file name)"))
        if rid in seen:
            found.append(Mismatch(name, "id", str(rid), f"unique (also in {seen[rid]})"))
        seen.setdefault(rid, path)
        if index is not None:  # no index at all: the files are the truth, nothing to compare with
            found += _check_index(name, text, index.pop(path.stem, None))
        found += check_record(name, data, store)
    for rid in index or {}:
        found.append(Mismatch(str(store.db_path), f"row {rid}", "indexed",
                              f"no record file runs/{rid}.json"))
    return found


def check_record(name: str, data: dict[str, Any], store: ResultsStore | None = None) -> list[Mismatch]:
    """One record's JSON `data` (from the file `name`): schema, config_hash, statistics from
    its raw samples, throughput and verdict."""
    import jsonschema

    try:
        validate(data)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "record"
        return [Mismatch(name, where, "not schema-valid", exc.message[:160])]
    try:
        rec = RunRecord.from_dict(json.loads(json.dumps(data)))
    except (ValueError, TypeError, KeyError) as exc:
        return [Mismatch(name, "record", "unreadable", f"({type(exc).__name__}: {str(exc)[:80]})")]
    found = []
    if data.get("schema_version", 1) >= 2 and config_hash(rec) != data.get("config_hash"):
        found.append(Mismatch(name, "config_hash", str(data.get("config_hash")), config_hash(rec)))
    samples = _samples(name, rec, found)
    if samples is not None:
        found += _check_latency(name, rec, samples)
        found += _check_throughput(name, rec, samples)
    found += _check_verdict(name, data, rec)
    return found


def _index_rows(store: ResultsStore, found: list[Mismatch]) -> dict[str, str] | None:
    """{id: index row} of the store's index; None when there is no index (a copied runs/ folder)."""
    if not store.db_path.exists():
        return None
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{store.db_path}?mode=ro", uri=True)) as conn:
            return dict(conn.execute("SELECT id, record FROM runs").fetchall())
    except sqlite3.Error as exc:
        found.append(Mismatch(str(store.db_path), "index", "unreadable", f"a results index ({exc})"))
        return {}


def _check_index(name: str, text: str, row: str | None) -> list[Mismatch]:
    """The index row against the file (file = stored, index = what the store reads back)."""
    if row is None:
        return [Mismatch(name, "index row", "none", "one (run `chipbench store rebuild`)")]
    try:
        want, got = json.loads(index_text(text)), json.loads(row)
    except ValueError as exc:
        return [Mismatch(name, "index row", "unreadable", str(exc)[:80])]
    return [Mismatch(name, f"{path} (file vs index)", _show(a), _show(b)) for path, a, b in _diff(want, got)]


def _diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves where two JSON values differ, as (dotted path, a's, b's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path or "record", a, b)]


def _samples(name: str, rec: RunRecord, found: list[Mismatch]):
    if rec.latency is None or rec.latency.samples is None:
        return None
    from chipbench.samples import SamplesError, decode

    try:
        return decode(rec.latency.samples)
    except SamplesError as exc:
        found.append(Mismatch(name, "latency.samples", "stored", f"undecodable ({exc})"))
        return None


def _check_latency(name: str, rec: RunRecord, samples) -> list[Mismatch]:
    from chipbench.stats import LatencyStats

    seed = int(rec.provenance.get("seed") or 0)
    derived = LatencyStats.from_samples(samples, seed=seed)
    tol = SAMPLE_TOLERANCE * float(samples.max()) * 1e3  # ms
    stored = rec.latency
    found = []
    for f in LATENCY_FIELDS:
        a, b = getattr(stored, f), getattr(derived, f)
        if a is None and f == "p999":  # schema-1 records have none
            continue
        if not _close(a, b, tol):
            found.append(Mismatch(name, f"latency.{f}", _show(a), _show(b)))
    for i, (a, b) in enumerate(zip(stored.median_ci95, derived.median_ci95)):
        if not _close(a, b, tol):
            found.append(Mismatch(name, f"latency.median_ci95[{i}]", _show(a), _show(b)))
    for tail, want in derived.tails.items():
        have = stored.tails.get(tail)
        if have is None:
            continue  # older records kept no tails
        a, b = have.to_dict(), want.to_dict()
        for key in sorted(set(a) | set(b)):
            if not _close(a.get(key), b.get(key), tol):
                found.append(Mismatch(name, f"latency.tails.{tail}.{key}", _show(a.get(key)), _show(b.get(key))))
    return found


def _check_throughput(name: str, rec: RunRecord, samples) -> list[Mismatch]:
    """Samples/s as the harness computed it (see the module doc); tokens/s is not re-derived."""
    if rec.throughput is None or rec.throughput.unit != "samples/s":
        return []
    derived = served_rate(rec)
    tol = RELATIVE_TOLERANCE
    if derived is None:
        derived = rec.batch * samples.size / float(samples.sum())
        tol = SAMPLE_TOLERANCE * samples.size  # a sum of float32-rounded seconds
    if _close(rec.throughput.value, derived, tol * abs(derived)):
        return []
    return [Mismatch(name, "throughput.value", _show(rec.throughput.value), _show(derived))]


def served_rate(rec: RunRecord) -> float | None:
    """A Server or fixed-rate cell's throughput as its issuer reported it (samples/s): LoadGen's
    completed samples per second, or queries × batch per wall second; None for other scenarios
    or where the issuer reported none (the harness then used the samples)."""
    loadgen = (rec.scenario or {}).get("loadgen") or {}
    name = (rec.scenario or {}).get("name")
    if name == "server":
        rate = (loadgen.get("loadgen_summary_stats") or {}).get("result_completed_samples_per_sec")
        return float(rate) if rate else None
    if name == "fixed-rate" and loadgen.get("wall_s") and rec.latency is not None:
        return rec.latency.count * rec.batch / float(loadgen["wall_s"])
    return None


def _check_verdict(name: str, data: dict[str, Any], rec: RunRecord) -> list[Mismatch]:
    """The verdict and its rules re-judged on a copy. A generation cell is judged on its
    accuracy and TTFT without the scenario (chipbench.generation_cell), and so here."""
    from chipbench.validity import DERIVED_RULES, Rule, judge, judged

    copy = RunRecord.from_dict(json.loads(json.dumps(data)))
    if copy.generation and copy.status == "ok" and copy.latency is not None:
        kept = [Rule.from_dict(r) for r in copy.validity or [] if r["rule"] not in DERIVED_RULES]
        out = judged(copy.accuracy, copy.latency, None, kept)
        copy.validity, copy.verdict, copy.reason = out["validity"], out["verdict"], out["reason"]
    else:
        judge(copy)
    found = []
    if copy.verdict != rec.verdict:
        found.append(Mismatch(name, "verdict", str(rec.verdict), str(copy.verdict)))
    # records written before verdicts were named rules keep no `validity`: their verdict is checked
    if rec.validity is not None and copy.validity != rec.validity:
        found.append(Mismatch(name, "validity", _show(rec.validity), _show(copy.validity)))
    return found


def check_bundles(root: Path, checked: Counter) -> list[Mismatch]:
    """Every bundle (manifest.json of format chipbench-bundle) and runner records file under
    `root`: each listed file's sha256 and size, each records file's digest."""
    from chipbench.bundle_format import FORMAT, RECORDS_FORMAT, records_digest
    from chipbench.paths import sha256_file

    found = []
    for path in sorted(root.rglob("*.json")):
        if path.parent.name in ("runs", "incoming") and path.parent.parent == root:
            continue  # records, checked above
        try:
            if path.name != "manifest.json":  # a runner's records file names its format first (sorted keys)
                with path.open("rb") as f:
                    if RECORDS_FORMAT.encode() not in f.read(4096):
                        continue
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        if doc.get("format") == FORMAT and path.name == "manifest.json":
            checked["bundles"] += 1
            folder = path.parent
            for fname, entry in sorted((doc.get("files") or {}).items()):
                target = folder / fname
                name = str(target)
                if Path(fname).is_absolute() or ".." in Path(fname).parts:
                    found.append(Mismatch(str(path), f"files.{fname}", "listed", "a file outside the bundle"))
                elif not target.is_file():
                    found.append(Mismatch(name, "file", "listed in the manifest", "missing"))
                else:
                    digest = sha256_file(target)
                    if digest != entry.get("sha256"):
                        found.append(Mismatch(name, "sha256", str(entry.get("sha256")), digest))
                    if target.stat().st_size != entry.get("bytes"):
                        found.append(Mismatch(name, "bytes", str(entry.get("bytes")), str(target.stat().st_size)))
        elif doc.get("format") == RECORDS_FORMAT and isinstance(doc.get("records"), list):
            checked["bundle records files"] += 1
            digest = records_digest(str(doc.get("manifest_sha256")), doc["records"])
            if digest != doc.get("sha256"):
                found.append(Mismatch(str(path), "sha256", str(doc.get("sha256")), digest))
    return found


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=tol)
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."

