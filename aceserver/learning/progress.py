"""Progress bars: tqdm when it is installed, else a plain line at each tenth of the work.

    bar(total, desc, out, enabled) -> an object with update(n=1) and close()
"""
from __future__ import annotations

import sys


class _Plain:
    def __init__(self, total: int, desc: str, out):
        self.total, self.desc, self.out, self.done, self.shown = max(int(total), 1), desc, out, 0, -1

    def update(self, n: int = 1) -> None:
        self.done += n
        tenth = min(10, 10 * self.done // self.total)
        if tenth > self.shown:
            self.shown = tenth
            print(f"{self.desc}: {min(self.done, self.total)}/{self.total}", file=self.out, flush=True)

    def close(self) -> None:
        pass


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, out=None, enabled: bool = True):
    if not enabled:
        return _Off()
    out = sys.stderr if out is None else out
    try:
        from tqdm import tqdm     # optional
    except ImportError:
        return _Plain(total, desc, out)
    return tqdm(total=total, desc=desc, file=out, leave=False)
