"""A mapped gate-level netlist (Yosys JSON + the cell library) and its zero-delay,
bit-parallel simulation with toggle counting.

Each net holds a row of ``uint64`` words: lane ``l`` is bit ``l % 64`` of word
``l // 64``, so one numpy operation evaluates a gate for 64 x W independent MAC units
at once. A cycle: drive the input ports, evaluate the combinational cells in
topological order (their Liberty functions compiled to numpy operations, no ``eval``),
count the nets whose value differs from the previous cycle's (zero-delay: at most one
transition per net per cycle, no glitches), then clock the flip-flops.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from synth.liberty import Cell, Library

__all__ = ["Netlist", "NetCell", "compile_function", "GateSimulator", "NetlistError"]


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


def evaluate(tree, pins: dict, ones) -> np.ndarray:
    """Evaluate a compiled function on uint64 words (``ones`` = all-ones words)."""
    kind = tree[0]
    if kind == "pin":
        return pins[tree[1]]
    if kind == "const":
        return ones if tree[1] else np.zeros_like(ones)
    if kind == "not":
        return ~evaluate(tree[1], pins, ones)
    left, right = evaluate(tree[1], pins, ones), evaluate(tree[2], pins, ones)
    return left & right if kind == "and" else left | right if kind == "or" else left ^ right


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


class GateSimulator:
    """Zero-delay simulation of a :class:`Netlist` over 64 x ``words`` lanes."""

    def __init__(self, netlist: Netlist, words: int):
        self.net, self.words = netlist, words
        self.ones = np.full(words, np.uint64(0xFFFFFFFFFFFFFFFF))
        self.zero = np.zeros(words, dtype=np.uint64)
        self.values: dict = {"0": self.zero, "1": self.ones, "x": self.zero, "z": self.zero}
        bits = set(netlist.input_bits) | {b for c in netlist.cells for bs in c.outputs.values() for b in bs}
        self.bits = sorted(b for b in bits if isinstance(b, int))
        for b in self.bits:
            self.values[b] = self.zero
        self.state = {id(c): self.zero for c in netlist.flops}  # flip-flops start at 0 (reset)
        self.toggles = {b: 0 for b in self.bits}
        self.previous: dict | None = None

    def step(self, inputs: dict[str, np.ndarray], lane_mask: np.ndarray) -> None:
        """One clock cycle: ``inputs`` maps port name -> (port width, words) array."""
        v = self.values
        for name, (direction, bits) in self.net.ports.items():
            if direction == "input":
                words = inputs.get(name)
                for i, b in enumerate(bits):
                    v[b] = self.zero if words is None else words[i]
        for c in self.net.flops:  # outputs show the state captured at the last edge
            s = self.state[id(c)]
            for pin, bits in c.outputs.items():
                v[bits[0]] = s if c.lib.outputs[pin].function == c.lib.ff["state"][0] else ~s
        for c in self.net.order:
            pins = {p: v[bits[0]] for p, bits in c.inputs.items()}
            for pin, bits in c.outputs.items():
                v[bits[0]] = evaluate(c.functions[pin], pins, self.ones)
        if self.previous is not None:
            for b in self.bits:
                self.toggles[b] += int(np.bitwise_count((v[b] ^ self.previous[b]) & lane_mask).sum())
        self.previous = {b: v[b] for b in self.bits}
        for c in self.net.flops:  # the rising edge: state <= next_state(inputs)
            pins = {p: v[bits[0]] for p, bits in c.inputs.items()}
            self.state[id(c)] = evaluate(c.functions["next_state"], pins, self.ones)

    def read(self, port: str) -> np.ndarray:
        """(width, words) words of a port's current value."""
        _, bits = self.net.ports[port]
        return np.stack([self.values[b] for b in bits])
