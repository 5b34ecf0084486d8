"""Files replaced durably: written beside their destination, fsynced, renamed onto it, and the
directory fsynced, so that a reader, or a restart after a crash, sees the old file or the new one,
never a part of one. The temporary file is `.<name>.<pid>.tmp<suffix>` beside the destination
(`leftovers` finds those a crash left behind)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def fsync_file(path) -> None:
    """fsync a file's contents by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """fsync a directory (its entries: a rename or a new file in it), where the platform allows."""
    try:
        fsync_file(path)
    except OSError:                  # directories cannot be opened or fsynced on some systems
        pass


def replace_durably(write: Callable[[Path], Any], dest, suffix: str = "") -> None:
    """`write(tmp)` a file beside `dest` (the temporary name ends in `suffix`, for writers that
    append an extension otherwise), fsync it, rename it onto `dest`, fsync the directory."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp{suffix}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(dest.parent)


def leftovers(dest) -> Iterator[Path]:
    """Temporary files of `replace_durably` onto `dest` that an interrupted write left behind."""
    dest = Path(dest)
    return dest.parent.glob(f".{dest.name}.*.tmp*")
