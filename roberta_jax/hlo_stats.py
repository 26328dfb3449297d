"""What one compiled step does, read from its optimized HLO text: FLOPs with every loop body
counted once per trip, and the collectives it runs.

XLA's `cost_analysis()` counts the body of a while loop once, however many times it runs; a
scanned layer stack (and gradient accumulation, a scan over micro-batches) is such a loop. Here
each computation is costed on its own by XLA's cost analysis, and a loop body's cost is
multiplied by its trip count (XLA's known_trip_count, or read from the loop's counter: its
start, limit and step).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

_CALLEE = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)="
                     r"%([\w.\-]+)")
_CALLEE_LIST = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_ARRAY = re.compile(r"\b(pred|token|[subfc]\w*?)\[([\d,]*)\]")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16,
         "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64,
         "c64": 64, "c128": 128}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    arguments: str           # the text between the opcode's parentheses
    attributes: str
    line: str


@dataclasses.dataclass
class Computation:
    name: str
    header: str
    lines: list[str]
    instructions: list[Instruction]
    root: Instruction | None


@dataclasses.dataclass
class Loop:
    body: str
    trips: int | None        # None: not read from the condition (counted once)
    enclosing_trips: int     # product of the trip counts of the loops around it
    where: str               # the op_name jax gave it (which scan it is)


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (a tuple's elements summed); layouts and tiles ignored."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype == "token":
            continue
        bits = _BITS.get(dtype, 8 if dtype.startswith("f8") else 32)
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * bits // 8
    return total


def _matching(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "({[":
            depth += 1
        elif text[i] in ")}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape "(a, (b, c), d)"."""
    inner, elements, depth, start = shape[1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            elements.append(inner[start:i])
            start = i + 1
    return elements + [inner[start:]]


def _parse_instruction(line: str) -> Instruction | None:
    text = line.strip()
    if text.startswith("ROOT "):
        text = text[5:]
    if not text.startswith("%") or " = " not in text:
        return None
    name, rest = text[1:].split(" = ", 1)
    if rest.startswith("("):
        end = _matching(rest, 0)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren]
    end = _matching(rest, paren)
    arguments = rest[paren + 1:end - 1]
    operands = re.findall(r"%([\w.\-]+)", arguments)
    return Instruction(name, shape, opcode, operands, arguments, rest[end:], line)


class HloModule:
    """The computations of one HLO module (as `compiled.as_text()` prints it)."""

    def __init__(self, text: str):
        self.computations: dict[str, Computation] = {}
        self.entry = None
        current = None
        for line in text.splitlines():
            if current is None:
                match = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
                if match and not line.startswith("HloModule"):
                    current = Computation(match.group(2), line, [], [], None)
                    if match.group(1):
                        self.entry = current.name
                continue
            if line.strip() == "}":
                self.computations[current.name] = current
                current = None
                continue
            current.lines.append(line)
            instruction = _parse_instruction(line)
            if instruction is not None:
                current.instructions.append(instruction)
                if line.lstrip().startswith("ROOT "):
                    current.root = instruction
        self.shapes = {i.name: i.shape for c in self.computations.values()
                       for i in c.instructions}
        self.defined = {i.name: i for c in self.computations.values() for i in c.instructions}
        if self.entry is None:
            raise ValueError("no ENTRY computation in this HLO text")

    @staticmethod
    def callees(instruction: Instruction) -> list[str]:
        names = [m.group(2) for m in _CALLEE.finditer(instruction.attributes)]
        for m in _CALLEE_LIST.finditer(instruction.attributes):
            names += re.findall(r"%([\w.\-]+)", m.group(2))
        return names

    # ------------------------------------------------------------------------- loops

    def trip_count(self, loop: Instruction) -> int | None:
        """XLA's known_trip_count where it wrote one (CPU, GPU); else read the loop as TPU
        programs leave it: the condition `counter < N`, the counter's initial constant in the
        loop's input tuple, and the constant the body adds to it each trip. None: not that
        shape (the body is then counted once)."""
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.attributes)
        if known:
            return int(known.group(1))
        condition = dict(m.groups() for m in _CALLEE.finditer(loop.attributes)).get("condition")
        comp = self.computations.get(condition)
        if comp is None or comp.root is None:
            return None
        compare, operands = self._unfused(comp.root)
        if compare.opcode != "compare" or len(operands) < 2:
            return None
        direction = re.search(r"direction=(\w+)", compare.attributes)
        if not direction or direction.group(1) not in ("LT", "GT"):
            return None
        a, b = operands[:2]
        if direction.group(1) == "GT":
            a, b = b, a
        limit = self._constant(b)
        index = self._tuple_index(a)
        if limit is None or index is None:
            return None
        init = self.defined.get(loop.operands[0]) if loop.operands else None
        if init is None or init.opcode != "tuple" or index >= len(init.operands):
            return None
        start = self._constant(self.defined.get(init.operands[index]))
        step = self._step(self.computations.get(self._body(loop)), index)
        if start is None or step is None:
            return None
        return max(-(-(limit - start) // step), 0)

    def _step(self, body: Computation | None, index: int) -> int | None:
        """How much the body adds to the counter in tuple slot `index` (XLA unrolls some loops,
        e.g. TPU's collective matmuls, to two chunks a trip)."""
        if body is None or body.root is None or body.root.opcode != "tuple" \
                or index >= len(body.root.operands):
            return 1
        update = self.defined.get(body.root.operands[index])
        while update is not None and update.opcode in ("copy", "bitcast", "convert"):
            update = self.defined.get(update.operands[0])
        if update is None:
            return 1
        add, operands = self._unfused(update)
        if add.opcode != "add":
            return None
        steps = [s for s in map(self._constant, operands) if s is not None]
        return steps[0] if len(steps) == 1 and steps[0] > 0 else None

    def _unfused(self, instruction: Instruction) -> tuple[Instruction, list]:
        """(the op, its operand instructions), looking through a fusion of that single op (as
        CPU programs wrap a loop's compare and add) to the fusion's own operands."""
        operands = [self.defined.get(o) for o in instruction.operands]
        callees = self.callees(instruction) if instruction.opcode == "fusion" else []
        inner = self.computations.get(callees[0]) if callees else None
        if inner is None or inner.root is None:
            return instruction, operands
        params = {i.name: int(i.arguments) for i in inner.instructions
                  if i.opcode == "parameter" and i.arguments.strip().isdigit()}
        mapped = [operands[params[o]] if o in params and params[o] < len(operands)
                  else self.defined.get(o) for o in inner.root.operands]
        return inner.root, mapped

    def _constant(self, instruction: Instruction | None) -> int | None:
        if instruction is None:
            return None
        if instruction.opcode == "constant":
            value = instruction.arguments.strip()
            return int(value) if re.fullmatch(r"-?\d+", value) else None
        if instruction.opcode in ("copy", "bitcast", "convert") and instruction.operands:
            return self._constant(self.defined.get(instruction.operands[0]))
        return None

    def _tuple_index(self, instruction: Instruction | None) -> int | None:
        while instruction is not None and instruction.opcode in ("copy", "bitcast", "convert"):
            instruction = self.defined.get(instruction.operands[0])
        if instruction is None or instruction.opcode != "get-tuple-element":
            return None
        match = re.search(r"index=(\d+)", instruction.attributes)
        return int(match.group(1)) if match else None

    def loops(self) -> list[Loop]:
        found = []

        def visit(name, outer, seen):
            for instruction in self.computations[name].instructions:
                for callee in self.callees(instruction):
                    if callee not in self.computations or callee in seen:
                        continue
                    if instruction.opcode == "while" and callee == self._body(instruction):
                        trips = self.trip_count(instruction)
                        where = re.search(r'op_name="([^"]*)"', instruction.attributes)
                        found.append(Loop(callee, trips, outer, where.group(1) if where else ""))
                        visit(callee, outer * (trips or 1), seen | {callee})
                    elif instruction.opcode != "while":
                        visit(callee, outer, seen | {callee})

        visit(self.entry, 1, {self.entry})
        return found

    @staticmethod
    def _body(loop: Instruction) -> str | None:
        return dict(m.groups() for m in _CALLEE.finditer(loop.attributes)).get("body")

    # ------------------------------------------------------------------------- FLOPs

    def submodule_text(self, root: str) -> str:
        """`root` and everything it calls, as a module of its own with `root` as ENTRY."""
        reachable, stack = [], [root]
        while stack:
            name = stack.pop()
            if name in reachable or name not in self.computations:
                continue
            reachable.append(name)
            for instruction in self.computations[name].instructions:
                stack.extend(self.callees(instruction))
        parts = ["HloModule sub"]
        for name in self.computations:      # callees first, as printed
            if name in reachable and name != root:
                comp = self.computations[name]
                parts.append("\n".join([comp.header.replace("ENTRY ", "", 1), *comp.lines, "}"]))
        comp = self.computations[root]
        header = comp.header if comp.header.startswith("ENTRY ") else "ENTRY " + comp.header
        parts.append("\n".join([header, *comp.lines, "}"]))
        # stack_frame_id points into a table the sub-module does not carry
        return re.sub(r",? ?stack_frame_id=\d+", "", "\n\n".join(parts))

    def flops(self, cost_of) -> tuple[float, float]:
        """-> (FLOPs with loop bodies counted per trip, FLOPs with each body counted once).
        `cost_of(module_text)` runs XLA's cost analysis on a module's text."""
        cache = {}

        def cost(name):
            if name not in cache:
                cache[name] = float(cost_of(self.submodule_text(name)).get("flops", 0.0))
            return cache[name]

        def corrected(name):
            total = cost(name)
            for loop in self._direct_loops(name):
                body = self._body(loop)
                total += (self.trip_count(loop) or 1) * corrected(body) - cost(body)
            return total

        return corrected(self.entry), cost(self.entry)

    def _direct_loops(self, name: str) -> list[Instruction]:
        """While loops reachable from `name` without entering another loop's body."""
        found, stack, seen = [], [name], set()
        while stack:
            comp = self.computations.get(stack.pop())
            if comp is None or comp.name in seen:
                continue
            seen.add(comp.name)
            for instruction in comp.instructions:
                if instruction.opcode == "while":
                    found.append(instruction)
                else:
                    stack.extend(self.callees(instruction))
        return found

    # ------------------------------------------------------------------------- collectives

    def collectives(self) -> dict[str, dict[str, float]]:
        """Per kind: how many run in one step and the bytes of the whole tensor each device
        takes part with (the gathered result of an all-gather, the unreduced input of a
        reduce-scatter), loop trips counted; a conditional counts its costliest branch."""
        memo = {}

        def visit(name) -> dict:
            if name in memo:
                return memo[name]
            memo[name] = {}
            totals = defaultdict(lambda: [0.0, 0.0])
            comp = self.computations[name]
            for instruction in comp.instructions:
                kind = self._collective_kind(instruction, comp.name)
                if kind:
                    operands = sum(shape_bytes(self.shapes.get(o, "")) for o in
                                   instruction.operands)
                    result = self._result_bytes(instruction)
                    totals[kind][0] += 1
                    totals[kind][1] += max(operands, result)
                callees = [c for c in self.callees(instruction) if c in self.computations]
                if instruction.opcode == "while":
                    body = self._body(instruction)
                    trips = self.trip_count(instruction) or 1
                    for kind, (count, size) in visit(body).items():
                        totals[kind][0] += trips * count
                        totals[kind][1] += trips * size
                elif instruction.opcode == "conditional":
                    worst = defaultdict(lambda: [0.0, 0.0])
                    for branch in callees:
                        for kind, (count, size) in visit(branch).items():
                            worst[kind] = [max(worst[kind][0], count), max(worst[kind][1], size)]
                    for kind, (count, size) in worst.items():
                        totals[kind][0] += count
                        totals[kind][1] += size
                else:
                    for callee in callees:
                        for kind, (count, size) in visit(callee).items():
                            totals[kind][0] += count
                            totals[kind][1] += size
            memo[name] = {k: tuple(v) for k, v in totals.items()}
            return memo[name]

        return {kind: {"count": int(count), "bytes": int(size)}
                for kind, (count, size) in sorted(visit(self.entry).items())}

    @staticmethod
    def _collective_kind(instruction: Instruction, computation: str) -> str | None:
        opcode = instruction.opcode
        if opcode.endswith("-done"):
            return None
        base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if base not in COLLECTIVES:
            return None
        # TPU writes a reduce-scatter as an all-reduce and a slice, fused under this name.
        if base == "all-reduce" and computation.startswith("all-reduce-scatter"):
            return "reduce-scatter"
        return base

    def _result_bytes(self, instruction: Instruction) -> int:
        if instruction.opcode.endswith("-start") and instruction.shape.startswith("("):
            # an async start returns (operands, results, ...): the results are what moved
            elements = _tuple_elements(instruction.shape)
            if len(elements) >= 2:
                return shape_bytes(elements[1])
        return shape_bytes(instruction.shape)


def xla_cost_analysis(module_text: str) -> dict:
    """XLA's own cost analysis of an HLO module given as text (on the host's CPU client: the
    FLOP counts do not depend on the backend)."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    from jaxlib import _hlo
    module = _hlo.hlo_module_from_text(module_text)
    return _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
