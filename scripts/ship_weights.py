"""Copy the trained weights of this machine's cache into `results/weights/` of the source tree
(`make ship-weights`), so a fresh clone loads them instead of training (workloads/training.py
uses them only when their whole key, torch version included, equals the one it would train
for). Models above MAX_BYTES are left out: the large comparability models keep seeded weights
that are rebuilt in seconds."""

from __future__ import annotations

import shutil
import sys

MAX_BYTES = 5 * 2**20  # a project choice: keeps the repository small (all shipped weights: ~5 MB)


def main() -> int:
    from chipbench.workloads.base import get_workload, workload_names
    from chipbench.workloads.training import cache_entries, shipped_root

    for name in workload_names():
        for kpath, _ in cache_entries(get_workload(name)):
            weights = kpath.with_name(kpath.name.removesuffix(".key.json") + ".pt")
            if not weights.is_file() or weights.stat().st_size > MAX_BYTES:
                continue
            dest = shipped_root() / name
            dest.mkdir(parents=True, exist_ok=True)
            for path in (kpath, weights):
                shutil.copyfile(path, dest / path.name)
            print(f"{name}: {weights.stat().st_size / 1024:.0f} KiB -> {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
