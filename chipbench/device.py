"""Where a cell runs: this host's CPU, a local CUDA GPU, or a board behind a TVM RPC tracker.

A cell names its device as text (`--device`): `cpu`, `cuda` / `cuda:N`, or
`rpc://HOST:PORT/KEY` (a TVM RPC tracker at HOST:PORT and the key its servers registered
under). The compiling host is always this machine; the device is where the timing happens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("cpu", "cuda", "rpc")


class DeviceError(ValueError):
    """A device string that names no device chipbench knows (the message says what is accepted)."""


@dataclass(frozen=True)
class Device:
    """A parsed device: `kind` is one of KINDS; `index` is the CUDA ordinal; `host`, `port`
    and `key` locate an RPC tracker and the server key (empty for local devices)."""

    kind: str = "cpu"
    index: int = 0
    host: str = ""
    port: int = 0
    key: str = ""

    @classmethod
    def parse(cls, text: str) -> Device:
        """`cpu`, `cuda`, `cuda:1`, `rpc://127.0.0.1:9190/board` → Device; DeviceError otherwise."""
        value = text.strip()
        if value == "cpu":
            return cls("cpu")
        match = re.fullmatch(r"cuda(?::(\d+))?", value)
        if match:
            return cls("cuda", index=int(match.group(1) or 0))
        match = re.fullmatch(r"rpc://([^:/\s]+):(\d+)/([^/\s]+)", value)
        if match:
            port = int(match.group(2))
            if not 0 < port < 65536:
                raise DeviceError(f"--device '{text}': port {port} is not in 1..65535 (expected cpu, cuda[:N] or rpc://HOST:PORT/KEY)")
            return cls("rpc", host=match.group(1), port=port, key=match.group(3))
        raise DeviceError(f"--device '{text}': expected cpu, cuda[:N] or rpc://HOST:PORT/KEY")

    def __str__(self) -> str:
        if self.kind == "cuda":
            return f"cuda:{self.index}"
        if self.kind == "rpc":
            return f"rpc://{self.host}:{self.port}/{self.key}"
        return "cpu"


def default_device(backend) -> Device:
    """The device a backend runs on when the cell names none: the first kind it lists."""
    kind = supported_kinds(backend)[0]
    return Device(kind)


def supported_kinds(backend) -> tuple[str, ...]:
    """Device kinds a backend runs on (`Backend.devices`; plugins that predate it run on the CPU)."""
    return tuple(getattr(backend, "devices", ("cpu",)))
