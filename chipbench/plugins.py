"""Extensions from outside the package: entry points, or modules named in CHIPBENCH_PLUGINS."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os


class PluginError(ImportError):
    """A plugin module that cannot be imported; the message names it and where it was named."""


@functools.cache
def load_plugins(group: str) -> None:
    """Import every module registered under entry-point `group`, then every module named in
    the comma-separated CHIPBENCH_PLUGINS (local, unpackaged backends and workloads).
    Each module registers what it defines through the registry decorators. Raises PluginError
    (nothing is cached then, so the next call tries again)."""
    from chipbench.errors import one_line

    for ep in importlib.metadata.entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:
            raise PluginError(f"entry point '{ep.name}' ({ep.value}) of {group}: cannot import it ({one_line(exc)})") from None
    for name in filter(None, (m.strip() for m in os.environ.get("CHIPBENCH_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise PluginError(f"CHIPBENCH_PLUGINS: cannot import module '{name}' ({one_line(exc)})") from None
