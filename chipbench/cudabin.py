"""What GPU code a compiled library holds: the fatbins in it, and the architecture of each image.

A library built for CUDA by TVM (or anything else using nvcc) embeds its device code as one or
more *fatbins*; each holds images: machine code (a cubin, an ELF file for one SM architecture)
or PTX (virtual code the driver compiles at load). This reads them from the bytes without the
CUDA toolkit's `cuobjdump`, which a toolkit may lack (nvcc 13 ships without it here).

Layouts (little-endian):
- fatbin header, 16 bytes: magic 0xBA55ED50 (u32), version (u16, 1), header size (u16, 16),
  size of the entries that follow (u64). Source: `fatbinary.h` of the CUDA toolkit
  (`struct fatBinaryHeader`, FATBIN_MAGIC).
- entry header: kind (u16: 1 PTX, 2 ELF), version (u16), header size (u32), payload size (u64),
  ..., SM architecture (u32 at byte 28, e.g. 90 for sm_90); the payload follows the header.
  Reverse-engineered layout (e.g. the Kaitai `fatbin` description); checked against nvcc 13's
  output: `nvcc --fatbin -gencode arch=compute_90,code=[sm_90,compute_90]` gives a PTX and an
  ELF entry, both with 90 at byte 28.
- a cubin's own ELF header: e_machine 190 (EM_CUDA); its SM number is in e_flags, in the low
  byte for ELF ABI version 7 (EF_CUDA_SM) and in bits 8-15 from ABI version 8 on
  (EF_CUDA_SM_MASK, EF_CUDA_SM_OFFSET). Source: LLVM `llvm/BinaryFormat/ELF.h` and
  `ELFObjectFileBase::getNVPTXCPUName`. nvcc 13 writes ABI version 8 for sm_80, sm_90, sm_100.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
EM_CUDA = 190
ELF_MAGIC = b"\x7fELF"
_KINDS = {1: "ptx", 2: "elf"}


@dataclass(frozen=True)
class DeviceImage:
    """One image of a fatbin: `kind` "elf" (machine code) or "ptx"; `arch` the SM number its
    entry header names (90 = sm_90); `elf_arch` the SM number the cubin's own ELF header
    names (None for PTX or a compressed payload); `size` the payload's bytes."""

    kind: str
    arch: int
    elf_arch: int | None
    size: int

    @property
    def sm(self) -> str:
        """`sm_90` for machine code, `compute_90` for PTX."""
        return f"{'sm' if self.kind == 'elf' else 'compute'}_{self.arch}"


def cubin_arch(elf: bytes) -> int | None:
    """The SM number of a CUDA ELF image (90 for sm_90), or None if `elf` is not one."""
    if len(elf) < 52 or not elf.startswith(ELF_MAGIC) or elf[4] != 2:  # ELFCLASS64
        return None
    (machine,) = struct.unpack_from("<H", elf, 18)
    if machine != EM_CUDA:
        return None
    (flags,) = struct.unpack_from("<I", elf, 48)
    abi_version = elf[8]
    return (flags & 0xFF) if abi_version < 8 else (flags >> 8) & 0xFF


def device_images(data: bytes) -> list[DeviceImage]:
    """Every image of every fatbin found in `data` (a shared library, a .fatbin or a cubin:
    a bare cubin yields one ELF image). Malformed containers are skipped."""
    bare = cubin_arch(data)
    if bare is not None:
        return [DeviceImage("elf", bare, bare, len(data))]
    images: list[DeviceImage] = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    start = data.find(magic)
    while start >= 0:
        images.extend(_fatbin_images(data, start))
        start = data.find(magic, start + 4)
    return images


def _fatbin_images(data: bytes, start: int) -> list[DeviceImage]:
    if start + 16 > len(data):
        return []
    _magic, version, header_size, size = struct.unpack_from("<IHHQ", data, start)
    if version != 1 or header_size < 16:
        return []
    images = []
    offset, end = start + header_size, min(start + header_size + size, len(data))
    while offset + 32 <= end:
        kind, _ver, entry_size, payload = struct.unpack_from("<HHIQ", data, offset)
        if kind not in _KINDS or entry_size < 32 or offset + entry_size + payload > end:
            break
        (arch,) = struct.unpack_from("<I", data, offset + 28)
        body = data[offset + entry_size: offset + entry_size + payload]
        images.append(DeviceImage(_KINDS[kind], arch, cubin_arch(body) if kind == 2 else None, payload))
        offset += entry_size + payload
    return images


def library_archs(path: Path) -> list[str]:
    """The distinct architectures of the device code in a file, e.g. ["sm_90"] (machine code)
    or ["compute_90", "sm_90"]; empty when it holds no fatbin or cubin (e.g. CUDA source only)."""
    return sorted({image.sm for image in device_images(Path(path).read_bytes())})
