"""python -m chipbench.tuning worker JOB.json OUT.json | ms-worker build|run"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from chipbench.tuning.pool import serve
from chipbench.tuning.worker import run_round


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) == 3 and args[0] == "worker":
        run_round(json.loads(Path(args[1]).read_text()), Path(args[2]))
        return 0
    if len(args) == 2 and args[0] == "ms-worker" and args[1] in ("build", "run"):
        return serve(args[1])
    print("usage: python -m chipbench.tuning worker JOB.json OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
