"""Reading `.npz` archives safely (no pickle: object arrays are refused), for the file formats that
are numpy archives (`asi`, `activeset_file`). Every failure is a `ModelFileError` naming the file."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelFileError


def read_arrays(path, kind: str) -> dict[str, np.ndarray]:
    """{key: array} of the `.npz` archive at path; kind names the format in errors (".asi")."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path} is a single .npy array, not an {kind} (.npz) archive")
        with npz:
            arrays = {}
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as err:   # object arrays need pickle, which is refused
                    raise ModelFileError(f"{path}: array {key!r} cannot be read without pickle "
                                         f"(object array?): {err}") from None
    except FileNotFoundError:
        raise ModelFileError(f"{kind} file {path} does not exist") from None
    except ModelFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{path} is not a readable {kind} (.npz) file: {err}") from None
    return arrays
