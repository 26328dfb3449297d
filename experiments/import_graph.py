"""The import graph among roberta_jax modules (imports inside functions included), and any cycle.

    python experiments/import_graph.py                      # every module
    python experiments/import_graph.py weights train finetune export pretrained
"""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "roberta_jax"


def graph() -> dict[str, list[str]]:
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               or "__init__": p for p in ROOT.rglob("*.py")}
    edges = {}
    for module, path in sorted(modules.items()):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("roberta_jax"):
                base = node.module.removeprefix("roberta_jax").lstrip(".")
                names = [f"{base}.{a.name}".lstrip(".") for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                names = [a.name.removeprefix("roberta_jax.") for a in node.names
                         if a.name.startswith("roberta_jax.")]
            found |= {n for n in names if n in modules}
            found |= {n.rsplit(".", 1)[0] for n in names
                      if n not in modules and n.rsplit(".", 1)[0] in modules}
        edges[module] = sorted(found - {module, "", "__init__"})
    return edges


def cycles(edges) -> list[list[str]]:
    found, done = [], set()

    def visit(module, stack):
        if module in stack:
            found.append(stack[stack.index(module):] + [module])
            return
        if module in done:
            return
        for dep in edges[module]:
            visit(dep, stack + [module])
        done.add(module)

    for module in edges:
        visit(module, [])
    return found


if __name__ == "__main__":
    edges = graph()
    for module in sys.argv[1:] or edges:
        print(f"{module:24} -> {', '.join(edges[module])}")
    print("cycles:", cycles(edges) or "none")
