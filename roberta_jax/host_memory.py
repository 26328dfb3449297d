"""Keep the host memory a process frees, rather than handing it back to the OS at once.

XLA on CPU allocates each step's buffers afresh and frees them at the end of the step. glibc
returns large freed blocks to the OS (blocks it mapped on their own, and the top of the heap
past a threshold), so the next step takes a page fault on every 4 kB it touches again: in a
fine-tuning step of the 4-layer benchmark model that was 6 ms of zero-filling one 8 MB
embedding gradient and 5 ms more in the GELUs, and the whole step ran ~15% faster with the
memory kept (the embedding's share grows with the vocabulary). With the memory kept, the
process's resident size stays at its peak, as a training process's does anyway.

These settings govern the heap of the main thread only. jax on CPU runs a computation on a
thread of its own by default, and the scratch block XLA allocates there outgrows that thread's
arena (64 MB heaps: the base model's step takes 1.1-1.5 GB), so glibc maps it afresh and
unmaps it every step: 270,000-390,000 page faults and 0.5-1 s of kernel time a base-model
step. `run_on_calling_thread` makes jax run single-device CPU computations on the thread that
calls them (the main one), whose heap keeps the block: the faults go, and a base step with
full logits took 3.5 s instead of 4.0-4.3 (same user time). jax still releases the GIL while
the computation runs, so input threads go on. Putting every thread on the main arena instead
(M_ARENA_MAX=1) removed the faults too, but with glibc 2.36 the heap then often grew by the
whole block every step (3.9 to 9.8 GB in five steps).

A heap keeps what it frees below its top as holes: the 1 GB of temporaries of the program
that initialises a base model's state stay resident below the state, and the step's larger
scratch block goes above them. `release_free_pages` hands such holes back once the state is
built, so that the resident size is the state plus one step's scratch, as before.

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
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _DONE = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _DONE


def run_on_calling_thread() -> bool:
    """jax on CPU: run single-device computations on the calling thread (see above). Returns
    False, changing nothing, once jax has created its backends (the setting is read then)."""
    import jax
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def release_free_pages(ready=None) -> bool:
    """Return the whole pages of the heap's free chunks to the OS (glibc malloc_trim), e.g.
    the holes the initialisation of a training state leaves, once the arrays `ready` are
    computed; whether glibc released any."""
    if ready is not None:
        import jax
        jax.block_until_ready(ready)  # its temporaries are freed only then
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def _glibc(name: str):
    """A glibc malloc function, or None where there is none (not Linux, or musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols: libc is loaded already (find_library would run ldconfig
        # at every command's start).
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
