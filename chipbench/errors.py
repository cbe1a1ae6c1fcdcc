"""One-line reasons from exceptions, keeping the cause and dropping the runtimes' noise."""

from __future__ import annotations

import re

# Prefixes runtimes put before the cause: ONNX Runtime's status and "Load model ... failed:", and
# the C++ source location and function signature of the check that fired.
_NOISE = (re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "), re.compile(r"Load model from .*? failed:"),
          re.compile(r"\S+\.(?:cc|cpp|h|hpp):\d+ (?:[^()]|\([^()]*\))*?\)\s+"))


def one_line(exc: BaseException, limit: int = 400) -> str:
    """`Type: first line of the message`, once runtime status prefixes and C++ source locations
    are taken off, cut at `limit` characters."""
    text = str(exc).strip()
    for pattern in _NOISE:
        text = pattern.sub("", text, count=1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = lines[0] if lines else ""
    return (f"{type(exc).__name__}: {head}" if head else type(exc).__name__)[:limit]


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
