"""A Markdown report against the report re-rendered from the store, figure by figure.

The report is re-rendered exactly as `chipbench report` writes it (chipbench.report: the newest
record of every cell, per-operator profiles apart), with its plots drawn into a scratch folder
so that checking writes nothing into the results dir. Both texts are parsed into their tables
(`| a | b |` rows under a `|---|` line): a table is named by the heading above it and its
header; a row by its record id where the table has an `id` column, else by its leading cells
up to the first one holding a number (workload, backend, ...), with a count where that repeats.
Every cell of every row is compared as text (numbers are printed by the same formatting on
both sides, so equal figures print equally); a row or table on one side only is a mismatch
too. The text outside tables is compared line by line within each section (`prose`: the
generation time and image paths masked).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from pathlib import Path

from chipbench.store import ResultsStore
from chipbench.verify import Mismatch

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_NUMBER = re.compile(r"\d")
_GENERATED = re.compile(r"((?:^G|\bg)enerated )\S+")  # "Generated T." or "… · generated T from …"
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def link_inputs(results: Path, into: Path) -> list[Path]:
    """Symbolic links in `into` to every folder of `results` (device profiles, projections,
    tuning databases, runs), so that rendering the report with `into` as its results dir reads
    what it would read from `results` and draws its plots into `into`. Top-level files (the
    plots and reports already there) are not linked: nothing under `results` is written.
    Returns the links (the caller removes them)."""
    links = []
    into.mkdir(parents=True, exist_ok=True)
    for child in sorted(results.iterdir()):
        if child.is_dir():
            link = into / child.name
            os.symlink(child.resolve(), link, target_is_directory=True)
            links.append(link)
    return links


def render_reports(store: ResultsStore, md: Path | None, html: Path | None, figures: Path) -> list[Path]:
    """The reports `chipbench report` would write from `store`, written to `md` / `html`, with
    their plots drawn into `figures` (a folder of their own). StoreError when the store cannot
    be read; ValueError when it holds no records."""
    from chipbench.report import write_reports

    records = store.latest()
    if not records:
        raise ValueError(f"no results in {store.root}/")
    links = link_inputs(store.root, figures)
    try:
        return write_reports(records, md, html, figures)
    finally:
        for link in links:
            link.unlink()


def rendered_markdown(store: ResultsStore) -> str:
    """The Markdown report re-rendered from `store` (render_reports into a scratch folder)."""
    with tempfile.TemporaryDirectory(prefix="chipbench-verify-") as tmp:
        md = Path(tmp) / "report.md"
        render_reports(store, md, None, Path(tmp) / "figures")
        return md.read_text()


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The Markdown tables of `text`: {table name: rows}, each row {column header: cell text}
    with its key under "\\0key" (see the module doc). A table's name is the heading above it
    and its header cells, with " #2" ... where that repeats."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, lines = "(top)", text.splitlines()
    names: Counter = Counter()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()):
            header = _cells(line)
            names[(heading, tuple(header))] += 1
            n = names[(heading, tuple(header))]
            name = _plain(f"{heading} [{' | '.join(header)}]") + (f" #{n}" if n > 1 else "")
            rows, keys = [], Counter()
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = _cells(lines[i].strip())
                row = {_column(header, j): c for j, c in enumerate(cells)}
                key = _row_key(header, cells)
                keys[key] += 1
                row["\0key"] = _plain(key) + (f" #{keys[key]}" if keys[key] > 1 else "")
                rows.append(row)
                i += 1
            out[name] = rows
            continue
        i += 1
    return out


def prose(text: str) -> dict[str, list[str]]:
    """The lines of `text` outside tables and headings, by the heading above them: {heading:
    lines}. The time a report was generated and where its images lie (a path that differs
    between two renderings of the same figures) are masked."""
    out: dict[str, list[str]] = {}
    heading, lines = "(top)", text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("|"):
            continue
        if line.startswith("#"):
            heading = _plain(line.lstrip("#").strip())
            continue
        line = _GENERATED.sub(r"\1<time>", line)
        out.setdefault(heading, []).append(_IMAGE.sub(r"![\1](<image>)", line))
    return out


def _plain(text: str) -> str:
    """A name without Markdown's escapes (chipbench.report.md_escape), for reading."""
    return re.sub(r"\\(.)", r"\1", text)


def _cells(line: str) -> list[str]:
    parts = _CELL_SPLIT.split(line.strip())
    if parts and parts[0].strip() == "":
        parts = parts[1:]
    if parts and parts[-1].strip() == "":
        parts = parts[:-1]
    return [p.strip() for p in parts]


def _column(header: list[str], j: int) -> str:
    """A column's name: its header, and where a header repeats (a column group per backend) the
    group's first header before it, e.g. "ort-cpu p50 / p99"."""
    name = header[j] if j < len(header) else f"column {j + 1}"
    if j < len(header) and header.count(name) > 1:
        # the group's label is the nearest header to the left that appears once
        label = next((header[m] for m in range(j, -1, -1) if header.count(header[m]) == 1), "")
        name = f"{label} / {name}" if label else name
    same = sum(1 for m in range(j) if header[m] == header[j] and _column(header, m) == name) if j < len(header) else 0
    return f"{name} #{same + 1}" if same else name


def _row_key(header: list[str], cells: list[str]) -> str:
    if "id" in header:
        j = header.index("id")
        if j < len(cells) and cells[j]:
            return f"id {cells[j]}"
    lead = []
    for c in cells:
        if _NUMBER.search(c):
            break
        lead.append(c)
    return " / ".join(lead or cells[:1])


def _one_sided(name: str, label: str, stored: dict, derived: dict) -> list[Mismatch]:
    """A Mismatch for each key (a table, a row: `label` formats it) only one side has."""
    return ([Mismatch(name, label.format(k), "present", "absent") for k in stored if k not in derived]
            + [Mismatch(name, label.format(k), "absent", "present") for k in derived if k not in stored])


def compare(stored: str, derived: str, name: str) -> tuple[list[Mismatch], int]:
    """The Mismatches of Markdown `stored` (the report file `name`) against `derived` (the
    re-rendered report), and how many table cells and text lines were compared."""
    a, b = tables(stored), tables(derived)
    found = _one_sided(name, "table '{}'", a, b)
    cells = 0
    for table, rows in b.items():
        if table not in a:
            continue
        have = {r["\0key"]: r for r in a[table]}
        want = {r["\0key"]: r for r in rows}
        found += _one_sided(name, f"table '{table}' row '{{}}'", have, want)
        for key, row in want.items():
            if key not in have:
                continue
            for col, value in row.items():
                if col == "\0key":
                    continue
                cells += 1
                got = have[key].get(col)
                if got != value:
                    found.append(Mismatch(name, f"table '{table}' row '{key}' column '{col}'",
                                          "(missing)" if got is None else got, value))
    a, b = prose(stored), prose(derived)
    for section in sorted(set(a) | set(b)):
        have, want = a.get(section, []), b.get(section, [])
        for j in range(max(len(have), len(want))):
            got = have[j] if j < len(have) else "(absent)"
            value = want[j] if j < len(want) else "(absent)"
            cells += 1
            if got != value:
                found.append(Mismatch(name, f"section '{section}' text line {j + 1}", got, value))
    return found, cells


def check_report(store: ResultsStore, report: Path, text: str, checked: Counter) -> list[Mismatch]:
    """The Markdown `text` of the file `report` against the report re-rendered from `store`
    (see the module doc)."""
    from chipbench.store import StoreError

    try:
        derived = rendered_markdown(store)
    except (StoreError, ValueError) as exc:
        return [Mismatch(str(report), "report", "present", f"cannot be re-rendered ({exc})")]
    found, cells = compare(text, derived, str(report))
    checked["report cells and text lines"] += cells
    return found
