"""Extended XYZ text -> a calculate request (structures as numbers, positions, cell, pbc).

Before ASE reads anything, `scan` walks the header lines (count line, comment line) of every frame
in one cheap pass over the bytes and refuses, with a 413 naming the limit and the value, more
frames than `max_structures`, a count line over `max_atoms`, a `Properties=` header declaring more
than `MAX_COLUMNS` columns, or a line longer than `MAX_LINE_BYTES`: ASE would otherwise allocate
per declared column or loop over every claimed atom (a 50-byte header cost seconds and gigabytes).
The frames are then read with ASE's extxyz reader; what it cannot read becomes a DecodeError (400)
that quotes its reason. Frames then go through the same schema validation as JSON requests.
"""
from __future__ import annotations

import io
import re
from typing import Any

from ase.io import read

from .error_replies import APIError, DecodeError

MAX_COLUMNS = 100            # values per atom line (species + pos are 4; forces, masses, tags... add a few)
MAX_LINE_BYTES = 64 * 1024   # any line: a comment line with a lattice and some info is < 1 KiB
DEFAULT_COLUMNS = 4          # species:S:1:pos:R:3, ASE's default when a frame has no Properties
_PROPERTIES = re.compile(rb"(?i)(?:^|\s)properties\s*=\s*\"?([^\"\s]*)")


def _too_large(message: str, field: str) -> APIError:
    return APIError(413, "too_large", f"{field}: {message}", field)


def _columns(comment: bytes, frame: int) -> int:
    """Values per atom line that a comment line's `Properties=name:type:ncols:...` declares."""
    m = _PROPERTIES.search(comment)
    if m is None:
        return DEFAULT_COLUMNS
    fields = m.group(1).split(b":")
    counts = fields[2::3]
    if len(fields) % 3 or not all(c.isdigit() for c in counts):
        raise DecodeError(f"frame {frame}: Properties must be name:type:ncols triples, got "
                          f"{m.group(1)[:80].decode(errors='replace')!r}", f"frames[{frame}].Properties")
    return sum(int(c) for c in counts)


def scan(data: bytes, max_atoms: int, max_structures: int) -> int:
    """Check the frame headers against the limits as ASE's reader would walk them (count line,
    comment line, the atom lines, up to 3 VEC lines; a blank line ends the text); the frame count."""
    pos, end, frame = 0, len(data), 0

    def line() -> bytes | None:
        nonlocal pos
        if pos >= end:
            return None
        nl = data.find(b"\n", pos, pos + MAX_LINE_BYTES + 1)
        stop = end if nl < 0 and end - pos <= MAX_LINE_BYTES else nl
        if stop < 0:
            raise _too_large(f"a line longer than {MAX_LINE_BYTES} bytes (limit)", f"frames[{frame}]")
        out, pos = data[pos:stop], stop + 1
        return out

    while (count := line()) is not None and count.strip():
        if frame >= max_structures:
            raise _too_large(f"more than {max_structures} frames in one request (limit {max_structures})",
                             "structures")
        text = count.strip()
        if not text.isdigit():
            raise DecodeError(f"frame {frame}: the first line must be the atom count, got "
                              f"{text[:40].decode(errors='replace')!r}", f"frames[{frame}]")
        n = int(text)
        if n > max_atoms:
            raise _too_large(f"count line says {n} atoms (limit {max_atoms} per structure)", f"frames[{frame}]")
        comment = line()
        if comment is None:
            raise DecodeError(f"frame {frame}: no comment line after the count line", f"frames[{frame}]")
        columns = _columns(comment, frame)
        if columns > MAX_COLUMNS:
            raise _too_large(f"Properties declares {columns} columns per atom (limit {MAX_COLUMNS})",
                             f"frames[{frame}].Properties")
        for k in range(n):
            if line() is None:
                raise DecodeError(f"frame {frame}: the count line says {n} atoms but the text ends after {k}",
                                  f"frames[{frame}]")
        for _ in range(3):                 # ASE reads up to 3 VEC lines (lattice vectors) after the atoms
            mark = pos
            vec = line()
            if vec is None or not vec.lstrip().startswith(b"VEC"):
                pos = mark
                break
        frame += 1
    return frame


def decode_extxyz(data: bytes, max_atoms: int, max_structures: int) -> dict[str, Any]:
    """The request document of extended XYZ bytes, checked by `scan` before ASE parses it."""
    if not data.strip():
        raise DecodeError("empty extended XYZ text")
    frames = scan(data, max_atoms, max_structures)
    if not frames:
        raise DecodeError("no structure found in the extended XYZ text")
    try:
        frames = read(io.StringIO(data.decode("utf-8")), index=f":{frames}", format="extxyz")
    except UnicodeDecodeError:
        raise
    except Exception as ex:  # the reader signals bad text by many exception types; all are the input's fault
        raise DecodeError(f"malformed extended XYZ: {type(ex).__name__}: {ex}") from None
    structures = []
    for atoms in frames:
        pbc = [bool(p) for p in atoms.pbc]
        cell = atoms.cell.array.tolist() if atoms.cell.rank > 0 or any(pbc) else None
        structures.append({"numbers": [int(z) for z in atoms.numbers],
                           "positions": atoms.positions.tolist(), "cell": cell, "pbc": pbc})
    return {"structure": structures[0]} if len(structures) == 1 else {"structures": structures}
