"""Copy the trained weights of this machine's cache into `results/weights/` of the source tree
(`make ship-weights`), so a fresh clone loads them instead of training (workloads/training.py
uses them only when their whole key, torch version included, equals the one it would train
for). Weights above MAX_BYTES are left out: they train at first use."""

from __future__ import annotations

import shutil
import sys

# A project choice: the repository keeps no file near 2 MB (trained models belong in caches). The
# small models' weights are 0.2-0.7 MB; edge-inspect's (2.9 MB) stay out and train at first use
# (about 2 minutes on 2 cores); the comparability models' seeded weights are rebuilt in seconds.
MAX_BYTES = 2**20


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
