"""The dynamic dependencies of a shared library, read from its ELF headers: which OpenMP
runtime a library links (``native``'s check that the C kernels share torch's)."""
from __future__ import annotations

import struct
from typing import List, Optional


def elf_needed(path: str) -> Optional[List[str]]:
    """The ``DT_NEEDED`` sonames of an ELF64 little-endian shared library; None if
    ``path`` is not one (or cannot be read)."""
    try:
        with open(path, "rb") as f:
            h = f.read(64)
            if len(h) < 64 or h[:4] != b"\x7fELF" or h[4] != 2 or h[5] != 1:
                return None
            (shoff,) = struct.unpack_from("<Q", h, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", h, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
            secs = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
            for sec in secs:
                if sec[1] != 6:  # SHT_DYNAMIC
                    continue
                f.seek(sec[4])
                dyn = f.read(sec[5])
                strtab = secs[sec[6]]
                f.seek(strtab[4])
                names = f.read(strtab[5])
                needed = []
                for i in range(0, len(dyn) - 15, 16):
                    tag, val = struct.unpack_from("<qQ", dyn, i)
                    if tag == 0:
                        break
                    if tag == 1:  # DT_NEEDED
                        needed.append(names[val:names.index(b"\0", val)].decode())
                return needed
            return []
    except (OSError, struct.error, ValueError, IndexError):
        return None
