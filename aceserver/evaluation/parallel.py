"""When an evaluation runs on numba's threads: one lock for the threading layer, and the size
below which threads cost more than they save. Shared by `site_potential` (one structure) and
`many` (many structures in one pass)."""
from __future__ import annotations

import threading

# numba's default threading layer must not be entered by two threads at once: the parallel
# kernels run under this lock, and a caller that finds it taken uses the serial kernels.
PARALLEL_LOCK = threading.Lock()
PARALLEL_MIN_ATOMS = 256   # below this, thread start-up and waits cost more than they save
