"""keep_freed_memory keeps what a process frees in its heap: a large buffer freed and
allocated again costs no new page faults (XLA on CPU allocates each step's buffers afresh)."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "keep":
        from roberta_jax.host_memory import keep_freed_memory
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):  # warm: the first pass faults in any case
        a = np.ones(64 << 18, np.float32); del a  # 64 MB
    before = faults()
    for _ in range(10):
        a = np.ones(64 << 18, np.float32); del a
    print(faults() - before)
""")


def page_faults(mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         timeout=120, check=True)
    return int(out.stdout.split()[-1])


def test_a_freed_buffer_comes_back_without_page_faults():
    default, kept = page_faults("default"), page_faults("keep")
    # By default glibc maps and unmaps such a buffer each time, and every page of it faults in
    # again (fewer than 4 kB pages' worth where the kernel backs it with huge pages).
    assert default > 1_000, default
    assert kept < 100, kept
