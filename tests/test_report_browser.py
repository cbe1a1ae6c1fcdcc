"""The HTML report as a reader sees it, in headless Chromium: no console errors, every image
loaded, nothing fetched from the network, the summary on the first screen at 1280×800, no
horizontal overflow at 1280 px, and hostile names shown as text.

Chromium is Debian's `chromium` (`.ci/run` installs it); playwright drives it. Without them the
test is skipped, saying which is missing."""

import shutil

import numpy as np
import pytest

from chipbench.cell import base_record
from chipbench.report import write_reports
from chipbench.samples import encode
from chipbench.stats import LatencyStats
from chipbench.store import ResultsStore
from chipbench.suite import Cell

HOSTILE = "<img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def record(workload, backend, ms, precision="fp32", seed=0):
    samples = ms / 1e3 * np.random.default_rng(seed).lognormal(0, 0.05, 200)
    latency = {**LatencyStats.from_samples(samples).to_dict(), "samples": encode(samples)}
    return base_record(Cell(workload=workload, backend=backend, precision=precision), "ok", latency=latency,
                       throughput={"value": 1e3 / ms, "unit": "samples/s"},
                       accuracy={"fidelity": {"max_abs": 0.0, "rel_l2": 1e-6, "cosine": 1.0}, "tolerance": {},
                                 "failures": [], "task": None},
                       verdict="VALID", compile={"seconds": 1.0, "artifact_bytes": 1024})


@pytest.fixture
def report(tmp_path):
    store = ResultsStore(tmp_path / "res")
    workloads = ["vibration-cnn1d", "sensor-ae", "edge-inspect", "rul-tcn", HOSTILE]
    backends = ["ort-cpu", "openvino-cpu", "tvm-llvm", "tvm-llvm-tuned", "torch-eager", "torch-compile",
                f"{HOSTILE}-backend"]
    for i, w in enumerate(workloads):
        for j, b in enumerate(backends):
            store.add(record(w, b, 0.1 * (j + 1) * (i + 1), seed=i * 10 + j))
        store.add(record(w, "ort-cpu", 0.05 * (i + 1), precision="int8", seed=i))
    write_reports(store.records(), tmp_path / "res" / "report.md", tmp_path / "res" / "report.html", tmp_path / "res")
    return tmp_path / "res" / "report.html"


def test_the_html_report_reads_well_in_a_real_browser(report):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    errors, requests, dialogs = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        box = page.locator("#summary").bounding_box()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        hostile_text = page.locator("#summary").inner_text()
        injected = page.evaluate("document.querySelectorAll('img[src=\"x\"]').length")
        browser.close()
    assert errors == [] and dialogs == []
    assert images and all(ok for _, ok in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # self-contained
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800  # on the first screen
    assert overflow <= 0
    assert HOSTILE in hostile_text and injected == 0
