"""The samples a scenario's queries rotate through.

LoadGen's query sample library (and the fixed-rate issuer) picks sample indices, so a backend
that caches one input's answer cannot win. A sampled response from the timed run is checked
against the same backend's untimed answer to its sample (MLPerf TEST01, chipbench.loadgen), so
the samples need no reference outputs of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from chipbench.backends.base import Arrays

DEFAULT_SAMPLE_COUNT = 32  # a workload without a test split: this many seeded inputs


@dataclass(frozen=True)
class SampleSet:
    """`items[i]` is sample i's inputs, keyed by name. Every item carries `unit` samples along
    axis 0: 1 for a workload's own samples (a query of B samples concatenates B items), or the
    compiled batch for a cell that has only its own inputs (a kernel case, a foreign model),
    where one item is a whole query.
    `source` says where the samples come from ("test split", "seeded inputs", "the cell's inputs")."""

    items: list[Arrays]
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
    """`n` samples of `workload`: its test split where it has labelled data (the first `n`;
    the split is cached by `Workload.dataset`), else `n` inputs seeded by `seed`
    (DEFAULT_SAMPLE_COUNT when `n` is None)."""
    n = n or DEFAULT_SAMPLE_COUNT
    if workload.data_source() is not None:
        inputs, _ = workload.dataset("test", n)
        inputs = {k: inputs[k][:n] for k in workload.input_names}
        source = "test split"
    else:
        inputs = workload.make_inputs(n, seed=seed)
        source = f"seeded inputs (seed {seed})"
    count = len(next(iter(inputs.values())))
    return SampleSet(split_items(inputs, count), 1, source)


def cell_samples(inputs: Arrays, batch: int) -> SampleSet:
    """The cell's own inputs as the only sample (a kernel case, a foreign model): one item
    that fills a whole compiled query of `batch` samples."""
    return SampleSet([dict(inputs)], batch, "the cell's inputs")
