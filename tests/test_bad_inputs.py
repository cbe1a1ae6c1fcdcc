"""Every file of the bad-input corpus (tests/bad_corpus.py), and bad flags, through the CLI.

Bad input: exit 2, exactly one non-empty stderr line starting `error:` that names the file,
flag or input; no traceback; and the results store exactly as it was (a seeded record, same
files, same rows). A valid model that cannot run: failed/unsupported cells with a one-line
reason naming the operator. A valid model that runs: VALID (NaN/Inf reproduced exactly is right).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import bad_corpus
from chipbench.record import validate

FAST = ["--min-duration", "0.05", "--min-count", "5"]
CELL_TIMEOUT = ["--timeout", "120"]  # a cell that should never have started cannot hang the suite
MEMORY_CAP = 6 << 30  # bytes of address space for cases whose wrong handling allocates GBs


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def cli(*args, env: dict | None = None, timeout: float = 300, cap_memory: bool = False,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "chipbench.cli", *map(str, args)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                              cwd=cwd, preexec_fn=_cap_memory if cap_memory else None)
    except subprocess.TimeoutExpired as exc:  # a hang is an observed behaviour too: report it, do not wait on
        def text(v):
            return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")
        return subprocess.CompletedProcess(argv, 124, text(exc.stdout),
                                           text(exc.stderr) + f"\n[test: killed after {timeout:g} s]\n")


# --- the results store ------------------------------------------------------------------------

def snapshot(results: Path) -> dict:
    """What a bad input must not change: every file under runs/ (by content) and the rows."""
    runs = results / "runs"
    files = {str(p.relative_to(runs)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(runs.rglob("*")) if p.is_file()} if runs.is_dir() else None
    db = results / "chipbench.sqlite"
    rows = None
    if db.is_file():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = sorted(conn.execute("SELECT id, record FROM runs").fetchall())
        except sqlite3.DatabaseError:
            rows = ("unreadable", hashlib.sha256(db.read_bytes()).hexdigest())
    return {"runs": files, "rows": rows}


def records(results: Path) -> list[dict]:
    out = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    for r in out:
        validate(r)
    return out


def new_records(results: Path, before: dict) -> list[dict]:
    old = set((before["runs"] or {}))
    if not (results / "runs").is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json")) if p.name not in old]


def describe(proc: subprocess.CompletedProcess, results: Path | None = None, before: dict | None = None) -> str:
    """The observed behaviour, for assertion messages: exit code, stderr ends, new records."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    text = f"exit {proc.returncode}; {len(lines)} stderr line(s)"
    if lines:
        text += f"; first: {lines[0][:300]!r}"
    if len(lines) > 1:
        text += f"; last: {lines[-1][:300]!r}"
    if "Traceback" in proc.stdout + proc.stderr:
        raised = [line.strip() for line in lines if re.match(r"\s*[\w.]+(Error|Exception|Exit)\b", line)]
        text += f"; TRACEBACK ({raised[-1][:200] if raised else 'exception line not found'})"
    if results is not None and before is not None:
        for r in new_records(results, before):
            text += (f"; record {r['backend']['name']}: {r['status']} {r.get('verdict')} batch={r.get('batch')} "
                     f"reason={(r.get('reason') or '')[:200]!r}")
    return text


def assert_bad_input(proc, results: Path, before: dict, *needles: str) -> str:
    """Exit 2, one `error:` line naming every needle, no traceback, the store unchanged."""
    why = describe(proc, results, before)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, why
    assert proc.returncode == 2, why
    assert len(lines) == 1 and lines[0].startswith("error:"), why
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named: {why}"
    assert snapshot(results) == before, f"results store changed: {why}"
    return lines[0]


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return bad_corpus.build_all(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def seeded(tmp_path_factory) -> Path:
    """A results store holding one real record (tiny-mlp on null)."""
    root = tmp_path_factory.mktemp("seeded") / "results"
    proc = cli("run", "-w", "tiny-mlp", "-b", "null", *FAST, "--results-dir", root)
    assert proc.returncode == 0, proc.stderr
    assert len(records(root)) == 1
    return root


@pytest.fixture
def store(seeded, tmp_path) -> tuple[Path, dict]:
    """A private copy of the seeded store and its snapshot before the call."""
    root = tmp_path / "results"
    shutil.copytree(seeded, root)
    before = snapshot(root)
    assert before["runs"] and len(before["rows"]) == 1
    return root, before


# --- broken models and hostile external data --------------------------------------------------

# case: (corpus key, substrings the one error line must hold)
BAD_MODELS = {
    "empty": ("empty", ["empty.onnx"]),
    "random-bytes": ("random", ["random.onnx"]),
    "truncated-protobuf": ("truncated", ["truncated.onnx"]),
    "tensorproto-as-model": ("nonmodel", ["nonmodel.onnx"]),
    "unknown-op-default-domain": ("badop", ["badop.onnx", "NoSuchOp"]),
    "opset-999": ("opset999", ["opset999.onnx"]),
    "no-opset-import": ("noopset", ["noopset.onnx"]),
    "graph-cycle": ("cycle", ["cycle.onnx"]),
    "huge-dim-1e9": ("hugedim", ["hugedim.onnx"]),
    "huge-dim-1e15": ("hugedim1e15", ["hugedim1e15.onnx"]),
    "negative-dim": ("negdim", ["negdim.onnx", "-5"]),
    "zero-dim": ("zerodim", ["zerodim.onnx"]),
    "ext-traversal": ("ext_traversal", ["ext_traversal/", "outside"]),
    "ext-traversal-to-etc-passwd": ("ext_traversal_real", ["ext_traversal_real/", "outside"]),
    "ext-absolute-path": ("ext_abs", ["ext_abs/", "outside"]),
    "ext-symlink-to-etc-passwd": ("ext_symlink", ["ext_symlink/", "outside"]),
    "ext-symlinked-folder": ("ext_dirlink", ["ext_dirlink/", "outside"]),
    "ext-short-file-with-length": ("ext_short", ["ext_short/", "w.bin"]),
    "ext-short-file-no-length": ("ext_short_nolen", ["ext_short_nolen/", "w.bin"]),
    "ext-missing-file": ("ext_missing", ["ext_missing/", "nothere.bin"]),
    "ext-dev-zero": ("ext_devzero", ["ext_devzero/", "/dev/zero"]),
    "ext-fifo": ("ext_fifo", ["ext_fifo/", "w.bin"]),
    "ext-in-local-function-constant": ("ext_in_function", ["ext_in_function/", "outside"]),
    "ext-sparse-initializer": ("ext_sparse", ["ext_sparse/", "outside"]),
    "ext-in-constant-node": ("ext_in_constant", ["ext_in_constant/", "outside"]),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_is_refused(corpus, store, case):
    key, needles = BAD_MODELS[case]
    results, before = store
    proc = cli("run", "--model", corpus[key], "-b", "ort-cpu", *FAST, *CELL_TIMEOUT, "--results-dir", results,
               cap_memory=key.startswith("hugedim"), timeout=150)
    assert_bad_input(proc, results, before, *needles)


def test_the_corpus_external_data_never_leaks(corpus, store):
    """Control: /etc/passwd (reached by any route) never ends up in a record or a report."""
    results, before = store
    secret = Path("/etc/passwd").read_text(errors="replace").splitlines()[0]
    for key in ("ext_traversal_real", "ext_abs", "ext_symlink", "ext_dirlink", "ext_in_function", "ext_sparse",
                "ext_in_constant"):
        cli("run", "--model", corpus[key], "-b", "null", *FAST, *CELL_TIMEOUT, "--results-dir", results)
    for path in results.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".html"):
            assert secret not in path.read_text(errors="replace"), path


def test_custom_domain_op_is_a_failed_cell_naming_the_op(corpus, store):
    results, before = store
    proc = cli("run", "--model", corpus["customdomain"], "-b", "ort-cpu,null", *FAST, *CELL_TIMEOUT,
               "--results-dir", results)
    why = describe(proc, results, before)
    assert "Traceback" not in proc.stdout + proc.stderr, why
    assert proc.returncode in (0, 1), why
    recs = new_records(results, before)
    assert sorted(r["backend"]["name"] for r in recs) == ["null", "ort-cpu"], why
    for r in recs:
        validate(r)
        assert r["status"] in ("failed", "unsupported"), why
        reason = r["reason"] or ""
        assert "Frobnicate" in reason and "\n" not in reason.strip(), why
    # the record that was there before is untouched
    assert {k: v for k, v in snapshot(results)["runs"].items() if k in before["runs"]} == before["runs"]


@pytest.mark.parametrize("key", ["nan_log", "inf_div0"])
def test_nonfinite_outputs_reproduced_exactly_are_valid(corpus, store, key):
    results, before = store
    proc = cli("run", "--model", corpus[key], "-b", "ort-cpu,null", *FAST, *CELL_TIMEOUT, "--results-dir", results)
    why = describe(proc, results, before)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, why
    recs = new_records(results, before)
    assert sorted(r["backend"]["name"] for r in recs) == ["null", "ort-cpu"], why
    for r in recs:
        validate(r)
        assert r["status"] == "ok" and r["verdict"] == "VALID", why


# --- input and expected arrays ----------------------------------------------------------------

# case: (model key, {flag: corpus key}, substrings the one error line must hold)
BAD_ARRAYS = {
    "wrong-name": ("good", {"--input-data": "in_wrongname"}, ["in_wrongname.npz", "foo"]),
    "two-wrong-names": ("good", {"--input-data": "in_twowrong"}, ["in_twowrong.npz"]),
    "wrong-rank": ("good", {"--input-data": "in_wrongrank"}, ["in_wrongrank.npz"]),
    "float64-for-float32": ("good", {"--input-data": "in_wrongdtype"}, ["in_wrongdtype.npz", "float32", "float64"]),
    "int64-for-float32": ("good", {"--input-data": "in_int"}, ["in_int.npz", "float32", "int64"]),
    "garbage-npz": ("good", {"--input-data": "in_garbage"}, ["in_garbage.npz"]),
    "object-dtype-npy": ("good", {"--input-data": "in_pickle"}, ["in_pickle.npy"]),
    "evil-pickle-npy": ("good", {"--input-data": "in_evilpickle"}, ["in_evilpickle.npy"]),
    "wrong-shape-on-static-model": ("relu_1x8", {"--input-data": "in_wrongshape"}, ["in_wrongshape.npz"]),
    "wrong-batch-on-static-model": ("relu_1x8", {"--input-data": "in_wrongbatch"}, ["in_wrongbatch.npz"]),
    "expected-wrong-shape": ("good", {"--input-data": "in_good", "--expected": "exp_wrongshape"},
                             ["exp_wrongshape.npy"]),
    "expected-without-input-data": ("good", {"--expected": "exp_good"}, ["exp_good.npy", "--input-data"]),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays_are_refused_before_any_cell(corpus, store, case):
    model, flags, needles = BAD_ARRAYS[case]
    results, before = store
    args = [a for flag, key in flags.items() for a in (flag, corpus[key])]
    proc = cli("run", "--model", corpus[model], "-b", "ort-cpu", *args, *FAST, *CELL_TIMEOUT, "--results-dir", results)
    assert_bad_input(proc, results, before, *needles)


def test_missing_input_data_file_is_refused(corpus, store, tmp_path):
    results, before = store
    proc = cli("run", "--model", corpus["good"], "-b", "ort-cpu", "--input-data", tmp_path / "nothere.npz", *FAST,
               *CELL_TIMEOUT, "--results-dir", results)
    assert_bad_input(proc, results, before, "nothere.npz")


def test_evil_pickle_is_never_unpickled(corpus, store):
    results, before = store
    marker = corpus["in_evilpickle"].parent / bad_corpus.PICKLE_MARKER
    proc = cli("run", "--model", corpus["good"], "-b", "ort-cpu,null", "--input-data", corpus["in_evilpickle"],
               *FAST, *CELL_TIMEOUT, "--results-dir", results)
    assert not marker.exists(), "the .npy's pickle ran"
    assert proc.returncode == 2, describe(proc, results, before)


@pytest.mark.parametrize("expected, verdict", [(None, "VALID"), ("exp_good", "VALID"),
                                               ("exp_good_shape_wrong_values", "INVALID")],
                         ids=["good-npz", "good-npz-expected-right", "expected-wrong-values"])
def test_good_arrays_run(corpus, store, expected, verdict):
    results, before = store
    args = ["--expected", corpus[expected]] if expected else []
    proc = cli("run", "--model", corpus["good"], "-b", "ort-cpu", "--input-data", corpus["in_good"], *args, *FAST,
               *CELL_TIMEOUT, "--results-dir", results)
    why = describe(proc, results, before)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, why
    (rec,) = new_records(results, before)
    validate(rec)
    assert rec["status"] == "ok" and rec["verdict"] == verdict, why


# --- a name that is markup --------------------------------------------------------------------

def test_model_named_like_markup_is_escaped_in_reports(corpus, store):
    results, before = store
    proc = cli("run", "--model", corpus["xss"], "-b", "null", *FAST, "--results-dir", results)
    assert proc.returncode == 0, describe(proc, results, before)
    raw = bad_corpus.XSS_NAME
    html = (results / "report.html").read_text()
    assert raw not in html and "&lt;img" in html
    md = (results / "report.md").read_text()
    assert "img src=x onerror" in md  # the name is there, as text
    assert raw not in md
    # the standalone report command writes the same escaping
    out = results.parent / "again"
    proc = cli("report", "--results-dir", results, "--html", out / "r.html", "--md", out / "r.md")
    assert proc.returncode == 0, describe(proc)
    assert raw not in (out / "r.html").read_text() and "&lt;img" in (out / "r.html").read_text()
    assert raw not in (out / "r.md").read_text()


# --- settings out of range --------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--batch", "0"), ("--batch", "-1"), ("--min-count", "-5"), ("--min-duration", "-1"), ("--timeout", "0"),
    ("--task-samples", "-1"), ("--seed", "-1"),
], ids=lambda v: v)
def test_setting_out_of_range_is_refused(store, flag, value):
    results, before = store
    settings = {"--min-duration": "0.05", "--min-count": "5", flag: value}
    args = [a for kv in settings.items() for a in kv]
    proc = cli("run", "-w", "tiny-mlp", "-b", "null", "--scenario", "offline", *args, "--results-dir", results)
    assert_bad_input(proc, results, before, flag)


def test_unknown_plugin_module_is_refused(store):
    results, before = store
    proc = cli("run", "-w", "tiny-mlp", "-b", "null", *FAST, "--results-dir", results,
               env={"CHIPBENCH_PLUGINS": "no_such_module_xyz"})
    assert_bad_input(proc, results, before, "no_such_module_xyz")


def test_results_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "notadir"
    target.write_text("a regular file\n")
    proc = cli("run", "-w", "tiny-mlp", "-b", "null", *FAST, "--results-dir", target)
    why = describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, why
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), why
    assert "notadir" in lines[0], why
    assert target.read_text() == "a regular file\n"


def test_garbage_sqlite_is_refused(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    garbage = b"this is not an SQLite database \x00\xff" * 64
    (results / "chipbench.sqlite").write_bytes(garbage)
    before = snapshot(results)
    proc = cli("run", "-w", "tiny-mlp", "-b", "null", *FAST, "--results-dir", results)
    assert_bad_input(proc, results, before, "chipbench.sqlite")
    assert (results / "chipbench.sqlite").read_bytes() == garbage


def test_report_html_to_a_folder_is_refused(store, tmp_path):
    results, before = store
    folder = tmp_path / "htmlfolder"
    folder.mkdir()
    proc = cli("report", "--results-dir", results, "--html", folder)
    assert_bad_input(proc, results, before, "htmlfolder")


@pytest.mark.parametrize("spec", ["x:abc", "x:1x8:float128", "x", ":1x8"])
def test_bad_input_spec_is_refused(corpus, store, spec):
    results, before = store
    proc = cli("run", "--model", corpus["dyn"], "-b", "null", "--input", spec, *FAST, "--results-dir", results)
    assert_bad_input(proc, results, before, "--input")


def test_input_spec_for_no_such_input_is_refused(corpus, store):
    results, before = store
    proc = cli("run", "--model", corpus["dyn"], "-b", "null", "--input", "x:2x8", "--input", "nosuch:2x8", *FAST,
               "--results-dir", results)
    assert_bad_input(proc, results, before, "nosuch")


# --- other verbs ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["profile", "-w", "no-such-workload"], "no-such-workload"),
    (["project", "--hw", "no-such-hw", "-w", "edge-inspect"], "no-such-hw"),
    (["tune", "-w", "no-such-workload", "--trials", "1"], "no-such-workload"),
    (["kernels", "-k", "no-such-kernel"], "no-such-kernel"),
], ids=["profile", "project", "tune", "kernels"])
def test_other_verbs_refuse_unknown_names(store, args, needle):
    results, before = store
    proc = cli(*args, "--results-dir", results)
    assert_bad_input(proc, results, before, needle)


def test_roofline_refuses_garbage_json(store, tmp_path):
    results, before = store
    probe = cli("probe", "--quick", "--results-dir", results)
    assert probe.returncode == 0, describe(probe)
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"benchmarks": [{"name": 1, "stats": "fast"}]} trailing garbage {{{')
    proc = cli("roofline", garbage, "--results-dir", results)
    assert_bad_input(proc, results, before, "garbage.json")
    wellformed = tmp_path / "wrongshape.json"
    wellformed.write_text('{"benchmarks": [{"name": 1, "stats": "fast"}]}')
    proc = cli("roofline", wellformed, "--results-dir", results)
    assert_bad_input(proc, results, before, "wrongshape.json")


# --- suites -----------------------------------------------------------------------------------

SUITE_CASES = ["malformed", "unknown_workload", "unknown_backend", "cells_not_table", "defaults_string",
               "timeout_string", "unknown_key", "empty", "binary", "adir", "workload_int"]


@pytest.mark.parametrize("name", SUITE_CASES)
def test_bad_suite_is_refused(corpus, store, name):
    results, before = store
    suite = corpus[f"suite_{name}"]
    proc = cli("run", "--suite", suite, "--results-dir", results, timeout=120)
    assert_bad_input(proc, results, before, suite.name)


# --- dynamic dims: the hint works -------------------------------------------------------------

def _hinted_input(line: str) -> str:
    """The value after `--input` in an error line, as a shell would read it when pasted."""
    match = re.search(r"--input[ =](.*)", line)
    assert match, f"no --input hint in {line!r}"
    words = shlex.split(match.group(1).replace("`", " "))
    assert words, f"no --input value in {line!r}"
    return words[0].rstrip(").,;")


def test_dynamic_dims_need_an_input_and_the_hint_works(corpus, store):
    results, before = store
    proc = cli("run", "--model", corpus["dyn"], "-b", "null", *FAST, "--results-dir", results)
    line = assert_bad_input(proc, results, before, "dyn.onnx")
    value = _hinted_input(line)
    proc = cli("run", "--model", corpus["dyn"], "-b", "null", "--input", value, *FAST, "--results-dir", results)
    assert proc.returncode == 0, f"the hint --input {value!r} does not work: {describe(proc, results, before)}"
    (rec,) = new_records(results, before)
    assert rec["status"] == "ok" and rec["verdict"] == "VALID"


def test_dynamic_batch_only_runs_at_the_asked_batch(corpus, store):
    results, before = store
    proc = cli("run", "--model", corpus["dynlead"], "-b", "ort-cpu", "--scenario", "offline", "--batch", "4", *FAST,
               "--results-dir", results)
    assert proc.returncode == 0, describe(proc, results, before)
    (rec,) = new_records(results, before)
    assert rec["verdict"] == "VALID" and rec["batch"] == 4
