"""`chipbench verify` and `chipbench publish` on real results: fresh ones pass, a record edited
after the run and a report edited after it was written are named, bad input exits 2."""

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from chipbench.bundle_format import FORMAT, FORMAT_VERSION, file_entry, records_document
from chipbench.publish import RESULTS_COLUMNS, SYSTEM_FIELDS
from chipbench.report_check import compare, tables
from chipbench.verify import check_bundles
from test_cli import cli

SHORT = ["--min-count", "64", "--min-duration", "0.05"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """Results of two backends on a small workload, the first cell measured twice (history)."""
    res = tmp_path_factory.mktemp("verify") / "res"
    cli("run", "-w", "tiny-mlp", "-b", "null,ort-cpu", *SHORT, "--no-report", "--results-dir", res)
    cli("run", "-w", "tiny-mlp", "-b", "null", "--batch", "2", "--scenario", "offline", *SHORT, "--results-dir", res)
    return res


def copy(fresh: Path, tmp_path: Path) -> Path:
    res = tmp_path / "res"
    shutil.copytree(fresh, res)
    return res


def by_backend(res: Path) -> dict[str, Path]:
    return {json.loads(p.read_text())["backend"]["name"] + "/" + json.loads(p.read_text())["scenario"]["name"]: p
            for p in (res / "runs").glob("*.json")}


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_verify_passes_on_fresh_results_and_writes_nothing(fresh):
    before = listing(fresh)
    proc = cli("verify", fresh, "--report", fresh / "report.md", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "3 records" in summary and "report cells and text lines" in summary and "OK" in summary
    assert listing(fresh) == before


def test_verify_names_a_tampered_median_and_a_tampered_report_figure(fresh, tmp_path):
    res = copy(fresh, tmp_path)
    path = by_backend(res)["ort-cpu/single-stream"]
    data = json.loads(path.read_text())
    stored_median = data["latency"]["median"]
    data["latency"]["median"] = stored_median * 1.5  # someone edits runs/<id>.json; the index is left as it was
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    report = res / "report.md"
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tiny-mlp |"))
    cells = row.split("|")
    number = next(i for i, c in enumerate(cells) if re.fullmatch(r"\s*[\d.]+\s*", c))  # the first backend's p50
    tampered = row.replace("|" + cells[number] + "|", f"| 999.5 |", 1)
    report.write_text(text.replace(row, tampered, 1))

    proc = cli("verify", res, "--report", report, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    median = [line for line in lines if line.startswith(f"{path}: latency.median: ")]
    assert median == [f"{path}: latency.median: stored {stored_median * 1.5!r}, derived {stored_median!r}"] or (
        len(median) == 1 and f"stored {stored_median * 1.5!r}" in median[0]), lines
    assert any(line.startswith(f"{path}: latency.median (file vs index)") for line in lines)
    figure = [line for line in lines if line.startswith(f"{report}: ")]
    assert len(figure) == 1, lines
    assert "row 'tiny-mlp'" in figure[0] and "p50" in figure[0] and f"stored 999.5, derived {cells[number].strip()}" in figure[0]
    assert "FAILED" in lines[-1]


def test_verify_names_a_record_whose_verdict_does_not_follow_from_its_rules(fresh, tmp_path):
    res = copy(fresh, tmp_path)
    path = by_backend(res)["null/offline"]
    data = json.loads(path.read_text())
    data["verdict"] = "INVALID" if data["verdict"] != "INVALID" else "VALID"
    path.write_text(json.dumps(data))
    proc = cli("verify", res, check=False)
    assert proc.returncode == 1
    assert any(line.startswith(f"{path}: verdict: stored {data['verdict']}") for line in proc.stdout.splitlines())


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such results dir"),
    (["{res}", "--report", "{missing}"], "no such report"),
    (["{res}", "--report", "{res}/report.html"], "Markdown"),
])
def test_verify_bad_input_is_one_error_line_and_exit_2(fresh, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "nope", res=fresh) for a in args]
    proc = cli("verify", *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("error:") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_bundle_files_are_checked_against_their_manifest(tmp_path):
    bundle = tmp_path / "bundles" / "b1"
    bundle.mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(b"model bytes")
    (bundle / "inputs.npz").write_bytes(b"inputs")
    manifest = {"format": FORMAT, "version": FORMAT_VERSION,
                "files": {n: file_entry(bundle / n) for n in ("model.onnx", "inputs.npz")}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    doc = records_document("ab" * 32, [{"id": "r1", "latency": {"median": 1.25}}])
    (tmp_path / "bundles" / "records.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    checked = Counter()
    assert check_bundles(tmp_path, checked) == [] and checked["bundles"] == 1
    assert checked["bundle records files"] == 1
    (bundle / "model.onnx").write_bytes(b"model bytez")
    (bundle / "inputs.npz").unlink()
    doc["records"][0]["latency"]["median"] = 1.0
    (tmp_path / "bundles" / "records.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    found = {(Path(m.file).name, m.field) for m in check_bundles(tmp_path, Counter())}
    assert found == {("model.onnx", "sha256"), ("inputs.npz", "file"), ("records.json", "sha256")}


def test_report_tables_are_keyed_by_row_and_column():
    md = ("## single-stream, fp32\n\n| workload | a p50 | p99 | b p50 | p99 |\n|---|---:|---:|---:|---:|\n"
          "| m1 | 1.0 | 2.0 | 3.0 | 4.0 |\n\n## Runs\n\n| workload | backend | n | id |\n|---|---|---:|---|\n"
          "| m1 | a | 10 | abc |\n| m1 | b | 10 | def |\n")
    parsed = tables(md)
    main = next(rows for name, rows in parsed.items() if name.startswith("single-stream"))
    assert main[0]["b p50 / p99"] == "4.0" and main[0]["a p50 / p99"] == "2.0" and main[0]["\0key"] == "m1"
    runs = next(rows for name, rows in parsed.items() if name.startswith("Runs"))
    assert [r["\0key"] for r in runs] == ["id abc", "id def"]
    found, cells = compare(md.replace("| 10 | def", "| 11 | def"), md, "r.md")
    assert cells == 13 and [(m.stored, m.derived) for m in found] == [("11", "10")] and "id def" in found[0].field
    text = "# r\n\nGenerated 2026-01-01T00:00:00+00:00 from 4 cells.\n\n![roofline](roofline.png)\n\n" + md
    again = text.replace("2026-01-01T00:00:00", "2027-02-02T10:00:00").replace("](roofline", "](figures/roofline")
    assert compare(again, text, "r.md")[0] == []  # when it was generated and where its images lie
    found, _ = compare(text.replace("from 4 cells", "from 5 cells"), text, "r.md")
    assert [(m.field, m.stored, m.derived) for m in found] == [
        ("section 'r' text line 1", "Generated <time> from 5 cells.", "Generated <time> from 4 cells.")]


def test_publish_writes_the_package_and_its_verify_log(fresh, tmp_path):
    out = tmp_path / "pkg"
    cli("publish", fresh, "--out", out)
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.html", "results.csv", "system.json", "records",
                                               "verify.log"}
    runs = sorted(p.name for p in (fresh / "runs").glob("*.json"))
    assert sorted(p.name for p in (out / "records").iterdir()) == runs
    assert all((out / "records" / n).read_bytes() == (fresh / "runs" / n).read_bytes() for n in runs)
    assert (out / "verify.log").read_text().strip().splitlines()[-1].endswith("OK: every figure re-derived")
    system = json.loads((out / "system.json").read_text())
    assert tuple(sorted(system)) == tuple(sorted(SYSTEM_FIELDS))
    assert system["cpu"]["count"] >= 1 and system["libraries"]["onnxruntime"]

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert tuple(rows[0]) == RESULTS_COLUMNS
    latest = {}
    for n in runs:  # the newest record of each cell is what the report and the CSV show
        rec = json.loads((fresh / "runs" / n).read_text())
        latest[(rec["backend"]["name"], rec["scenario"]["name"], rec["batch"])] = rec
    assert {r["record_id"] for r in rows} == {rec["id"] for rec in latest.values()}
    for rec in latest.values():
        mine = {r["metric"]: r for r in rows if r["record_id"] == rec["id"]}
        assert {"p50", "p90", "p99", "throughput", "fidelity_rel_l2"} <= set(mine)
        assert float(mine["p50"]["value"]) == rec["latency"]["median"] and mine["p50"]["unit"] == "ms"
        assert float(mine["throughput"]["value"]) == rec["throughput"]["value"]
        assert mine["p99"]["verdict"] == rec["verdict"] and mine["p99"]["batch"] == str(rec["batch"])


def test_publish_refuses_when_verify_fails_unless_forced(fresh, tmp_path):
    res = copy(fresh, tmp_path)
    path = by_backend(res)["ort-cpu/single-stream"]
    data = json.loads(path.read_text())
    data["latency"]["p99"] += 1.0
    path.write_text(json.dumps(data))
    proc = cli("publish", res, "--out", tmp_path / "pkg", check=False)
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1 and "--force" in proc.stderr
    assert f"{path}: latency.p99" in proc.stdout and not (tmp_path / "pkg" / "report.md").exists()
    forced = cli("publish", res, "--out", tmp_path / "pkg", "--force", check=False)
    assert forced.returncode == 0, forced.stderr
    assert f"{path}: latency.p99" in (tmp_path / "pkg" / "verify.log").read_text()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    taken = cli("publish", res, "--out", tmp_path / "full", check=False)
    assert taken.returncode == 2 and "not an empty folder" in taken.stderr


def test_a_record_file_must_be_named_by_its_id_and_the_id_unique(fresh, tmp_path):
    res = copy(fresh, tmp_path)
    path = by_backend(res)["null/offline"]
    twin = res / "runs" / "0123456789abcdef.json"
    shutil.copyfile(path, twin)
    proc = cli("verify", res, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1
    assert f"{twin}: id: stored {path.stem}, derived 0123456789abcdef (the file name)" in lines
    first, second = sorted([twin, path])  # the second file read holds an id already seen
    assert f"{second}: id: stored {path.stem}, derived unique (also in {first})" in lines
    assert f"{twin}: index row: stored none, derived one (run `chipbench store rebuild`)" in lines
    (res / "chipbench.sqlite").unlink()  # a copied runs/ folder: no index to compare with
    twin.unlink()
    assert cli("verify", res, check=False).returncode == 0
