"""Per-operator profiles taken as cells: isolated, stored with provenance, read back as OpProfiles."""

from __future__ import annotations

from chipbench.opprofile import OpProfile, OpProfileError
from chipbench.record import RunRecord
from chipbench.store import ResultsStore
from chipbench.suite import Cell


def profile_cell(workload: str, backend: str, batch: int = 1, runs: int = 10, device: str | None = None,
                 workload_params: dict | None = None) -> Cell:
    """The cell that profiles `workload` on `backend` at `batch` over `runs` runs."""
    return Cell(workload=workload, backend=backend, scenario="single-stream" if batch == 1 else "offline",
                batch=None if batch == 1 else batch, profile_runs=runs, device=device,
                workload_params=dict(workload_params or {}))


def profile_of(record: RunRecord) -> OpProfile:
    """The OpProfile a profile record holds; OpProfileError with the record's reason otherwise."""
    if record.status != "ok" or not record.profile:
        raise OpProfileError(f"{record.workload['name']} × {record.backend['name']}: "
                             f"{record.status}: {record.reason or 'no profile'}")
    return OpProfile.from_dict(record.profile)


def take_profile(cell: Cell, store: ResultsStore) -> OpProfile:
    """Run a profile cell in its own process, store its record, return its profile."""
    from chipbench.runner import run_cells

    (record,) = run_cells([cell], store)
    return profile_of(record)
