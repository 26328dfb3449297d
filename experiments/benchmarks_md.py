"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections as they are."""

import pathlib
import platform
import re

PATH = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nWritten by the scripts in `experiments/`; each section says how it was "
          "made.\n")


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = PATH.read_text() if PATH.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    PATH.write_text(text)
    print(f"wrote the {name} section of {PATH}")


def cpu() -> str:
    """The CPU's model and its widest fp32 vector instructions, which set the matmul ceiling
    (the same benchmark on AVX2 and AVX-512 machines can rank the sides differently)."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = set(flags[1].split()) if flags else set()
    name = model[1].strip() if model else platform.machine()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{name}, {isa}" if isa else name
