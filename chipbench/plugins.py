"""Extensions from outside the package: entry points, or modules named in CHIPBENCH_PLUGINS."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os


@functools.cache
def load_plugins(group: str) -> None:
    """Import every module registered under entry-point `group`, then every module named in
    the comma-separated CHIPBENCH_PLUGINS (local, unpackaged backends and workloads).
    Each module registers what it defines through the registry decorators."""
    for ep in importlib.metadata.entry_points(group=group):
        ep.load()
    for name in filter(None, (m.strip() for m in os.environ.get("CHIPBENCH_PLUGINS", "").split(","))):
        importlib.import_module(name)
