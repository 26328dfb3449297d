"""keep_freed_memory keeps what a process frees in its heap: a large buffer freed and
allocated again costs no new page faults (XLA on CPU allocates each step's buffers afresh),
from the main thread or from another (XLA allocates from its own threads)."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

SCRIPT = textwrap.dedent("""
    import resource, sys, threading
    import numpy as np
    if sys.argv[1] == "keep":
        from roberta_jax.host_memory import keep_freed_memory
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def allocate(megabytes, times):
        for _ in range(times):
            a = np.ones(megabytes << 18, np.float32); del a
    def measure(megabytes):
        allocate(megabytes, 3)  # warm: the first pass faults in any case
        before = faults()
        allocate(megabytes, 10)
        return faults() - before
    if sys.argv[2] == "main":
        print(measure(64))
    else:
        # Past a thread arena's 64 MB heaps, as XLA's scratch block for a large model is.
        result = []
        worker = threading.Thread(target=lambda: result.append(measure(128)))
        worker.start(); worker.join()
        print(result[0])
""")


def page_faults(mode, thread):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, thread], capture_output=True,
                         text=True, timeout=120, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_a_freed_buffer_comes_back_without_page_faults(thread):
    default, kept = page_faults("default", thread), page_faults("keep", thread)
    # By default glibc maps and unmaps such a buffer each time, and every page of it faults in
    # again: at least one fault per 2 MB huge page (ten buffers of 64 or 128 MB), many more
    # where the kernel backs it with 4 kB pages.
    assert default > 300, default
    assert kept < 100, kept
