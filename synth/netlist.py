"""A mapped gate-level netlist (Yosys JSON + the cell library) and its zero-delay,
bit-parallel simulation with toggle counting.

Each net holds a row of ``uint64`` words: lane ``l`` is bit ``l % 64`` of word
``l // 64``, so one numpy operation evaluates a gate for 64 x W independent MAC units
at once. A cycle: drive the input ports, evaluate the combinational cells in
topological order (their Liberty functions compiled to closures over numpy operations,
no ``eval``),
count the nets whose value differs from the previous cycle's (zero-delay: at most one
transition per net per cycle, no glitches), then clock the flip-flops.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from synth.liberty import Cell, Library

__all__ = ["Netlist", "NetCell", "compile_function", "closure", "to_verilog_expr", "GateSimulator", "NetlistError"]


class NetlistError(Exception):
    """The netlist uses a cell the library does not describe, or has a loop."""


# -- Liberty Boolean functions ---------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_\[\]\.]*)|([01])|(.))")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise NetlistError(f"cannot read the Liberty function {text!r}")
        pos = match.end()
        tok = match.group(1) or match.group(2) or match.group(3)
        if tok and not tok.isspace():
            out.append(tok)
    return out


def compile_function(text: str):
    """A Liberty function (``!(A1 & A2)``, ``(A B) + C'``, ``S ? ...`` is not Liberty)
    as a tree ``("and"|"or"|"xor", l, r) | ("not", x) | ("pin", name) | ("const", 0|1)``.

    Precedence, high to low: ``!`` and postfix ``'``; ``^``; ``&``, ``*`` and
    juxtaposition; ``|`` and ``+``.
    """
    toks = _tokens(text)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom():
        tok = peek()
        if tok is None:
            raise NetlistError(f"unexpected end of the Liberty function {text!r}")
        if tok == "(":
            take()
            node = or_expr()
            if take() != ")":
                raise NetlistError(f"unbalanced parentheses in {text!r}")
        elif tok == "!":
            take()
            node = ("not", atom())
        elif tok in ("0", "1"):
            take()
            node = ("const", int(tok))
        elif re.match(r"[A-Za-z_]", tok):
            node = ("pin", take())
        else:
            raise NetlistError(f"unexpected {tok!r} in the Liberty function {text!r}")
        while peek() == "'":
            take()
            node = ("not", node)
        return node

    def xor_expr():
        node = atom()
        while peek() == "^":
            take()
            node = ("xor", node, atom())
        return node

    def and_expr():
        node = xor_expr()
        while peek() is not None and (peek() in ("&", "*", "(", "!") or re.match(r"[A-Za-z_01]", peek())):
            if peek() in ("&", "*"):
                take()
            node = ("and", node, xor_expr())
        return node

    def or_expr():
        node = and_expr()
        while peek() in ("|", "+"):
            take()
            node = ("or", node, and_expr())
        return node

    tree = or_expr()
    if pos != len(toks):
        raise NetlistError(f"cannot read the Liberty function {text!r} (stopped at {toks[pos]!r})")
    return tree


def to_verilog_expr(tree) -> str:
    kind = tree[0]
    if kind == "pin":
        return tree[1]
    if kind == "const":
        return f"1'b{tree[1]}"
    if kind == "not":
        return f"~({to_verilog_expr(tree[1])})"
    op = {"and": "&", "or": "|", "xor": "^"}[kind]
    return f"({to_verilog_expr(tree[1])} {op} {to_verilog_expr(tree[2])})"


# -- the netlist -------------------------------------------------------------------------


@dataclass
class NetCell:
    name: str
    lib: Cell
    inputs: dict[str, list]
    outputs: dict[str, list]
    functions: dict  # output pin -> compiled tree (combinational cells)


class Netlist:
    """The mapped module: ports, cells with their library data, a topological order."""

    def __init__(self, module: dict, library: Library):
        self.library = library
        self.ports = {name: (p["direction"], p["bits"]) for name, p in module["ports"].items()}
        self.input_bits = [b for d, bits in self.ports.values() if d == "input" for b in bits]
        self.output_bits = [b for d, bits in self.ports.values() if d == "output" for b in bits]
        compiled: dict[str, dict] = {}
        self.cells: list[NetCell] = []
        for name, c in module["cells"].items():
            lib = library.cells.get(c["type"])
            if lib is None:
                raise NetlistError(f"cell type {c['type']} (instance {name}) is not in library {library.name}")
            if c["type"] not in compiled:
                compiled[c["type"]] = ({"next_state": compile_function(lib.ff["next_state"])} if lib.ff else
                                       {p: compile_function(o.function) for p, o in lib.outputs.items()})
            directions = c.get("port_directions") or {p: ("output" if p in lib.outputs else "input")
                                                      for p in c["connections"]}
            ins = {p: bits for p, bits in c["connections"].items() if directions[p] == "input"}
            outs = {p: bits for p, bits in c["connections"].items() if directions[p] == "output"}
            self.cells.append(NetCell(name, lib, ins, outs, compiled[c["type"]]))
        self.flops = [c for c in self.cells if c.lib.ff]
        self.order = self._topological([c for c in self.cells if not c.lib.ff])

    @staticmethod
    def _topological(cells: list[NetCell]) -> list[NetCell]:
        driver = {b: i for i, c in enumerate(cells) for bits in c.outputs.values() for b in bits}
        waiting = [0] * len(cells)
        users = defaultdict(list)
        for i, c in enumerate(cells):
            deps = {driver[b] for bits in c.inputs.values() for b in bits if b in driver}
            waiting[i] = len(deps)
            for d in deps:
                users[d].append(i)
        ready = [i for i, w in enumerate(waiting) if w == 0]
        order = []
        while ready:
            i = ready.pop()
            order.append(cells[i])
            for u in users[i]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    ready.append(u)
        if len(order) != len(cells):
            raise NetlistError("the netlist has a combinational loop")
        return order

    def fanout_capacitance(self) -> dict:
        """Input-pin capacitance (fF) and pin count hanging on each net."""
        cap, count = defaultdict(float), defaultdict(int)
        for c in self.cells:
            for pin, bits in c.inputs.items():
                for b in bits:
                    cap[b] += c.lib.inputs.get(pin, 0.0)
                    count[b] += 1
        return cap, count


def closure(tree, pin_index: dict):
    """A compiled function tree as nested closures: ``fn(rows, ones)`` evaluates it on
    uint64 words, ``rows[pin_index[pin]]`` holding each pin, ``ones`` all-ones words."""
    kind = tree[0]
    if kind == "pin":
        i = pin_index[tree[1]]
        return lambda rows, ones: rows[i]
    if kind == "const":
        value = tree[1]
        return lambda rows, ones: ones if value else ones ^ ones
    if kind == "not":
        inner = closure(tree[1], pin_index)
        return lambda rows, ones: ~inner(rows, ones)
    left, right = closure(tree[1], pin_index), closure(tree[2], pin_index)
    if kind == "and":
        return lambda rows, ones: left(rows, ones) & right(rows, ones)
    if kind == "or":
        return lambda rows, ones: left(rows, ones) | right(rows, ones)
    return lambda rows, ones: left(rows, ones) ^ right(rows, ones)


class GateSimulator:
    """Zero-delay simulation of a :class:`Netlist` over 64 x ``words`` lanes.

    Every net is a row of one (nets, words) uint64 array, so counting the transitions of
    all nets in a cycle is one vectorized XOR-popcount against the previous cycle.
    """

    def __init__(self, netlist: Netlist, words: int):
        self.net, self.words = netlist, words
        self.ones = np.full(words, np.uint64(0xFFFFFFFFFFFFFFFF))
        self.zero = np.zeros(words, dtype=np.uint64)
        bits = set(netlist.input_bits) | {b for c in netlist.cells for bs in c.outputs.values() for b in bs}
        self.bits = sorted(b for b in bits if isinstance(b, int))
        self.row = {b: i for i, b in enumerate(self.bits)}
        n = len(self.bits)
        self.row.update({"0": n, "1": n + 1, "x": n, "z": n})  # constant rows after the nets
        self.values = np.zeros((n + 2, words), dtype=np.uint64)
        self.values[n + 1] = self.ones
        self.previous: np.ndarray | None = None
        self.counts = np.zeros(n, dtype=np.int64)
        self.inputs = {name: [self.row[b] for b in bits] for name, (d, bits) in netlist.ports.items()
                       if d == "input"}
        self.comb = []
        for c in netlist.order:
            pins = list(c.inputs)
            index = {p: i for i, p in enumerate(pins)}
            ins = [self.row[c.inputs[p][0]] for p in pins]
            for pin, bits in c.outputs.items():
                if isinstance(bits[0], int):
                    self.comb.append((closure(c.functions[pin], index), ins, self.row[bits[0]]))
        self.flops = []
        for c in netlist.flops:
            pins = [p for p in c.inputs if p != c.lib.ff["clocked_on"]]
            index = {p: i for i, p in enumerate(pins)}
            outs = [(self.row[bits[0]], c.lib.outputs[pin].function != c.lib.ff["state"][0])
                    for pin, bits in c.outputs.items() if isinstance(bits[0], int)]
            self.flops.append((closure(c.functions["next_state"], index),
                               [self.row[c.inputs[p][0]] for p in pins], outs))
        self.state = np.zeros((len(self.flops), words), dtype=np.uint64)  # reset state: 0

    @property
    def toggles(self) -> dict:
        """Transitions counted so far, per net (bit id)."""
        return dict(zip(self.bits, self.counts.tolist()))

    def step(self, inputs: dict, lane_mask: np.ndarray) -> None:
        """One clock cycle: ``inputs`` maps port name -> per-bit word rows (missing: 0)."""
        v, ones = self.values, self.ones
        for name, rows in self.inputs.items():
            words = inputs.get(name)
            for i, r in enumerate(rows):
                v[r] = self.zero if words is None else words[i]
        for i, (_, _, outs) in enumerate(self.flops):  # outputs show the state of the last edge
            for r, inverted in outs:
                v[r] = ~self.state[i] if inverted else self.state[i]
        for fn, ins, out in self.comb:
            v[out] = fn([v[r] for r in ins], ones)
        nets = v[:len(self.bits)]
        if self.previous is not None:
            self.counts += np.bitwise_count((nets ^ self.previous) & lane_mask).sum(axis=1, dtype=np.int64)
        self.previous = nets.copy()
        for i, (fn, ins, _) in enumerate(self.flops):  # the rising edge: state <= next_state
            self.state[i] = fn([v[r] for r in ins], ones)

    def read(self, port: str) -> np.ndarray:
        """(width, words) words of a port's value in the current cycle."""
        _, bits = self.net.ports[port]
        return np.stack([self.values[self.row[b]] for b in bits])


def verilog_cell_models(library: Library, *, delayed: bool = False) -> str:
    """Behavioral Verilog of every cell of ``library``, for simulating a mapped netlist
    under Icarus: combinational outputs as continuous assignments of the cell's function,
    flip-flops as a register set on the clock's rising edge (initially 0). ``delayed``:
    each module takes a parameter ``DELAY`` (time units) by which its outputs lag, inertially
    for combinational outputs (``assign #(D)``) and as a clock-to-Q delay for flip-flops
    (``<= #(D)``): the delay model of :mod:`synth.timed`."""
    models = []
    for cell in library.cells.values():
        ports = [f"input {p}" for p in cell.inputs] + [f"output {p}" for p in cell.outputs]
        body = ["  parameter DELAY = 1;"] if delayed else []
        lag = " #(DELAY)" if delayed else ""
        if cell.ff:
            state = cell.ff["state"][0]
            body += [f"  reg {state} = 0;", f"  always @(posedge {cell.ff['clocked_on']}) {state} <={lag} "
                     f"{to_verilog_expr(compile_function(cell.ff['next_state']))};"]
            for p, o in cell.outputs.items():
                body.append(f"  assign {p} = {'~' if o.function != state else ''}{state};")
        else:
            body += [f"  assign{lag} {p} = {to_verilog_expr(compile_function(o.function))};"
                     for p, o in cell.outputs.items()]
        models.append(f"module {cell.name}({', '.join(ports)});\n" + "\n".join(body) + "\nendmodule")
    return "\n".join(models) + "\n"
