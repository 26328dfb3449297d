"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections as they are."""

import pathlib
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
