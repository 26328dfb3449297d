"""Keep the host memory a process frees, rather than handing it back to the OS at once.

XLA on CPU allocates each step's buffers afresh and frees them at the end of the step. glibc
returns large freed blocks to the OS (blocks it mapped on their own, and the top of the heap
past a threshold), so the next step takes a page fault on every 4 kB it touches again: in a
fine-tuning step of the 4-layer benchmark model that was 6 ms of zero-filling one 8 MB
embedding gradient and 5 ms more in the GELUs, and the whole step ran ~15% faster with the
memory kept (the embedding's share grows with the vocabulary). With the memory kept, the
process's resident size stays at its peak, as a training process's does anyway.

Blocks that XLA allocates from its own threads and that outgrow a thread arena's 64 MB heaps
(the base model's 1.1 GB scratch block a step) are still mapped afresh each time: 0.5-0.6 s
of kernel time in page faults a base-model step on CPU. Putting every thread on the heap's arena
(M_ARENA_MAX=1) removed them, but with glibc 2.36 the heap then often grew by the whole block
every step instead of reusing the last one (3.9 to 9.8 GB in five steps), so it is not done.

Only glibc on Linux has these knobs; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_DONE = False


def keep_freed_memory() -> bool:
    """Tell glibc to serve every allocation from its heap and to trim the heap only past
    2 GB of free memory at its top. Returns whether the settings took; idempotent."""
    global _DONE
    if _DONE:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols: libc is loaded already (find_library would run ldconfig
        # at every command's start).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _DONE = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _DONE
