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
    def step(x):  # 8192 x 8192 products (256 MB): beyond a thread arena's 64 MB heaps
        y = jnp.tanh(x @ x.T)
        return jnp.sum(y @ x)
    x = jnp.ones((8 << 10, 128), jnp.float32) / 128
    for _ in range(5):  # the heap settles
        step(x).block_until_ready()
    before = faults()
    for _ in range(5):
        step(x).block_until_ready()
    print(faults() - before)
""")


def _huge_pages_always() -> bool:
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    return os.path.exists(path) and "[always]" in open(path).read()


@pytest.mark.skipif(_huge_pages_always(), reason="faults count 2 MB pages: too few to compare")
def test_a_jax_step_s_scratch_block_stays_mapped_on_the_calling_thread():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", JAX_SCRIPT, mode], capture_output=True,
                             text=True, timeout=120, check=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return int(out.stdout.split()[-1])
    default, calling = run("worker-thread"), run("calling-thread")
    assert default > 50_000, default  # a fresh mapping each step, faulted in again
    # Kept in the heap (now and then glibc still moves it once in the five steps: one step's
    # worth of faults)
    assert calling < default / 4, (calling, default)


TRIM_SCRIPT = textwrap.dedent("""
    import numpy as np
    from roberta_jax import host_memory
    assert host_memory.keep_freed_memory()
    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    hole = np.ones(100 << 18, np.float32)  # 100 MB
    above = np.ones(1 << 18, np.float32)   # keeps the heap's top above the hole
    del hole
    before = resident_mb()
    host_memory.release_free_pages()
    print(before - resident_mb())
""")


def test_free_pages_below_the_heap_s_top_are_handed_back():
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True,
                         timeout=120, check=True)
    assert float(out.stdout.split()[-1]) > 90  # of the 100 MB hole


def test_the_calling_thread_setting_says_when_it_comes_too_late():
    script = ("import jax.numpy as jnp\nfrom roberta_jax import host_memory\n"
              "jnp.ones(1).block_until_ready()\nprint(host_memory.run_on_calling_thread())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.split()[-1] == "False"
