"""The samples a scenario's queries rotate through, each with its FP32 reference output.

LoadGen's query sample library (and the fixed-rate issuer) picks sample indices; a backend that
caches one input's answer cannot win, and a sampled response from the timed run can be checked
against the reference of the sample it answered (chipbench.loadgen).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from chipbench.backends.base import Arrays
from chipbench.paths import atomic_write_bytes, atomic_write_text, cache_dir

DEFAULT_SAMPLE_COUNT = 32  # a workload without a test split: this many seeded inputs


@dataclass(frozen=True)
class SampleSet:
    """`items[i]` is sample i's inputs and `references[i]` its FP32 reference outputs, both
    keyed by name. Every item carries `unit` samples along axis 0: 1 for a workload's own
    samples (a query of B samples concatenates B items), or the compiled batch for a cell that
    has only its own inputs (a kernel case, a foreign model), where one item is a whole query.
    `source` says where the samples come from ("test split", "seeded inputs", "the cell's inputs")."""

    items: list[Arrays]
    references: list[Arrays]
    unit: int
    source: str

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict:
        return {"count": len(self.items), "unit": self.unit, "source": self.source}


def split_items(arrays: Arrays, n: int) -> list[Arrays]:
    """`n` one-sample items (views) of arrays whose axis 0 holds `n` samples."""
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)]


def workload_samples(workload, n: int | None, seed: int) -> SampleSet:
    """`n` samples of `workload` with their FP32 torch reference outputs: its test split where
    it has labelled data (the first `n`), else `n` inputs seeded by `seed` (DEFAULT_SAMPLE_COUNT
    when `n` is None). Cached under cache_dir("samples") by the exact key (workload, torch,
    exporter, n, seed, split)."""
    from chipbench.prepare import export_key, reference_outputs

    n = n or DEFAULT_SAMPLE_COUNT
    split = "test" if workload.data_source() is not None else "seeded"
    key = {**export_key(workload, 1), "n": n, "seed": seed if split == "seeded" else None, "split": split}
    text = json.dumps(key, sort_keys=True, default=str)
    folder = cache_dir("samples", hashlib.sha256(text.encode()).hexdigest()[:24])
    data_file, key_file = folder / "data.npz", folder / "key.json"
    if data_file.exists() and key_file.exists() and key_file.read_text() == text:
        with np.load(data_file) as data:
            inputs = {k: data[f"in/{k}"] for k in workload.input_names}
            reference = {k: data[f"out/{k}"] for k in workload.output_names}
    else:
        if split == "test":
            inputs, _ = workload.dataset("test", n)
            inputs = {k: inputs[k][:n] for k in workload.input_names}
        else:
            inputs = workload.make_inputs(n, seed=seed)
        reference = reference_outputs(workload, inputs)
        buf = io.BytesIO()
        np.savez(buf, **{f"in/{k}": v for k, v in inputs.items()}, **{f"out/{k}": v for k, v in reference.items()})
        atomic_write_bytes(data_file, buf.getvalue())
        atomic_write_text(key_file, text)
    count = len(next(iter(inputs.values())))
    return SampleSet(split_items(inputs, count), split_items(reference, count), 1,
                     "test split" if split == "test" else f"seeded inputs (seed {seed})")


def cell_samples(inputs: Arrays, reference: Arrays, batch: int) -> SampleSet:
    """The cell's own inputs as the only sample (a kernel case, a foreign model): one item
    that fills a whole compiled query of `batch` samples."""
    return SampleSet([dict(inputs)], [dict(reference)], batch, "the cell's inputs")
