"""keep_freed_memory keeps what a process frees in its heap: a large buffer freed and
allocated again costs no new page faults (XLA on CPU allocates each step's buffers afresh);
with run_on_calling_thread that holds for the scratch block of a jax step too."""

import os
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


JAX_SCRIPT = textwrap.dedent("""
    import resource, sys
    from roberta_jax import host_memory
    host_memory.keep_freed_memory()
    if sys.argv[1] == "calling-thread":
        host_memory.run_on_calling_thread()
    import jax, jax.numpy as jnp
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    @jax.jit
    def step(x):  # 128 MB of temporaries: more than a thread arena's 64 MB heaps hold
        y = jnp.sin(x) * 2.0
        return jnp.sum(jnp.cos(y) + jnp.tanh(y) * x)
    x = jnp.ones((32 << 20,), jnp.float32)
    for _ in range(5):  # the heap settles
        step(x).block_until_ready()
    before = faults()
    for _ in range(5):
        step(x).block_until_ready()
    print(faults() - before)
""")


def test_a_jax_step_s_scratch_block_stays_mapped_on_the_calling_thread():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", JAX_SCRIPT, mode], capture_output=True,
                             text=True, timeout=120, check=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return int(out.stdout.split()[-1])
    default, calling = run("worker-thread"), run("calling-thread")
    assert default > 200_000, default  # a fresh 256 MB mapping each step, faulted in again
    # Kept in the heap (now and then glibc still moves it once in the five steps: one step's
    # worth of faults)
    assert calling < default / 4, (calling, default)
