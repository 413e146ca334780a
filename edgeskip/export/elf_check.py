"""Static checks of compiled modules: the ELF executables embedded in a .vmfb.

Used for armv7 beside the run under qemu-arm (and instead of it where no armv7 runtime was built): an embedded
ELF that imports any symbol (e.g. ``__aeabi_unwind_cpp_pr0`` when debug symbols are on) is refused
by the IREE runtime's embedded loader.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from edgeskip.errors import EdgeskipError


@dataclass(frozen=True)
class EmbeddedElf:
    offset: int
    machine: str
    elf_class: int
    undefined: tuple[str, ...]


def _elf_end(data: bytes, start: int) -> int:
    """End offset of the ELF starting at ``start`` (section headers are the last thing in it)."""
    endian = "<" if data[start + 5] == 1 else ">"
    if data[start + 4] == 1:  # 32-bit
        (shoff,) = struct.unpack_from(endian + "I", data, start + 0x20)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, start + 0x2E)
    else:
        (shoff,) = struct.unpack_from(endian + "Q", data, start + 0x28)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, start + 0x3A)
    return start + shoff + shentsize * shnum


def embedded_elfs(vmfb: str | os.PathLike) -> list[EmbeddedElf]:
    """Every ELF embedded in a .vmfb, with its machine and undefined dynamic symbols."""
    data = open(vmfb, "rb").read()
    found = []
    i = data.find(b"\x7fELF")
    while i >= 0:
        end = _elf_end(data, i)
        try:
            elf = ELFFile(io.BytesIO(data[i:end]))
            undefined = []
            for sec in elf.iter_sections():
                if isinstance(sec, SymbolTableSection) and sec.name == ".dynsym":
                    undefined += [s.name for s in sec.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"]
            found.append(EmbeddedElf(i, elf["e_machine"], elf.elfclass, tuple(undefined)))
        except Exception as e:  # noqa: BLE001 - pyelftools raises several types on damaged input
            raise EdgeskipError(f"{vmfb}: damaged embedded ELF at offset {i}: {e}") from None
        i = data.find(b"\x7fELF", max(end, i + 4))
    return found


def check_no_imports(vmfb: str | os.PathLike, machine: str | None = None) -> list[EmbeddedElf]:
    """Raise EdgeskipError unless the module embeds ELFs (of ``machine``) that import no symbols."""
    elfs = embedded_elfs(vmfb)
    if not elfs:
        raise EdgeskipError(f"{vmfb}: no embedded ELF executable found")
    for e in elfs:
        if machine and e.machine != machine:
            raise EdgeskipError(f"{vmfb}: embedded ELF is {e.machine}, expected {machine}")
        if e.undefined:
            raise EdgeskipError(
                f"{vmfb}: embedded ELF imports {', '.join(e.undefined)}; the IREE runtime will refuse it"
            )
    return elfs
