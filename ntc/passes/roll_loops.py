"""roll_loops: find runs of identical layers and mark them to run as one loop.

Deep networks repeat themselves: 21 × (Conv, Relu), 10 × (Dense, Relu), a stack of identical
residual blocks.  Unrolled into one XLA program, every copy is compiled again, and XLA fuses
cheap work across layer boundaries, recomputing earlier layers inside later ones (on this CPU
the optimised program of a (Conv, Relu) stack grew with the square of its depth: 1.2k
instructions at depth 2, 64k at depth 16).  A run of n identical iterations instead becomes one
`lax.scan` whose body is compiled once: compile time stops growing with depth and no fusion
crosses an iteration.

The pass cuts the graph at its *articulation points*, the nodes every path from the input to
the output goes through (no edge jumps over them), into single-entry single-exit segments.  A
block of p consecutive segments is an iteration; a run is n ≥ 2 consecutive equal iterations,
where equal means the same ops, tensor types, layouts and wiring (relative to the iteration's
entry), and the value entering the run has the type and layout of every iteration's exit, so
the loop carry keeps one layout.  Scanning from the input, the run covering the most nodes
starting at each segment is taken (ties: the shortest period).

Nothing moves in the graph: each node of a run gets `loop = (loop id, iteration)`, so
`explain()` still lists every layer with its own layout and cost, and lowering runs iteration
0's nodes as the scan body (`loops` reconstructs the runs).  The reference plan is never rolled.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .options import Options

MAX_BODY_NODES = 64


@dataclass(frozen=True)
class Loop:
    """A rolled run: `body` (iteration 0's node ids, in order) runs `n` times on the carry that
    enters from `entry`; the run's last node is `exit`; `members` are all its nodes."""

    id: int
    entry: int
    body: tuple[int, ...]
    n: int
    exit: int
    members: frozenset[int]


def _segments(g: Graph) -> list[tuple[int, list[int]]]:
    """(entry, nodes) of each single-entry single-exit segment, in order; a segment's last
    node is the next articulation point."""
    order = g.order()
    pos = {nid: i for i, nid in enumerate(order)}
    cuts, reach = [], -1
    for i, nid in enumerate(order):
        if reach <= i:
            cuts.append(i)
        reach = max([reach] + [pos[c] for c, _ in g.consumers(nid)])
    out = []
    for a, b in zip(cuts, cuts[1:]):
        out.append((order[a], order[a + 1:b + 1]))
    return out


def _signature(g: Graph, entry: int, nodes: list[int]):
    """What must agree between two iterations: each node's op, types, layout and wiring, with
    inputs named by position relative to the iteration's entry."""
    local = {entry: 0, **{nid: i + 1 for i, nid in enumerate(nodes)}}
    sig = []
    for nid in nodes:
        n = g.node(nid)
        ins = g.inputs(nid)
        if any(i not in local for i in ins) or n.op.kind == 'Input':
            return None
        sig.append((n.op, n.ttype, n.cov, n.materialize, tuple(local[i] for i in ins)))
    return sig


def _carries(g: Graph, entry: int, exit_: int) -> bool:
    a, b = g.node(entry), g.node(exit_)
    return a.ttype == b.ttype and a.cov == b.cov


def _run_at(g: Graph, segs, i: int, p: int) -> int:
    """How many equal iterations of p segments start at segment i (0 if the first one cannot
    be a loop body: too large, not self-contained, or not keeping the carry's layout)."""
    entry = segs[i][0]
    block = [nid for _, ns in segs[i:i + p] for nid in ns]
    if len(block) > MAX_BODY_NODES:
        return 0
    sig = _signature(g, entry, block)
    if sig is None or not _carries(g, entry, block[-1]):
        return 0
    count = 1
    while i + (count + 1) * p <= len(segs):
        nxt = segs[i + count * p: i + (count + 1) * p]
        if _signature(g, nxt[0][0], [nid for _, ns in nxt for nid in ns]) != sig:
            break
        count += 1
    return count


def find_runs(g: Graph) -> list[tuple[int, list[int], int, int]]:
    """(entry, nodes of the run, period in nodes, iterations) of every run to roll.

    Of the rotations of a run, the one whose iterations end at their most expensive node is
    taken (it may lose an iteration to the unrolled edges): the loop carry is always stored,
    so the expensive value is computed once and read by the next iteration's stencils, instead
    of being fused into them and recomputed per read."""
    segs = _segments(g)
    runs, i = [], 0
    while i < len(segs):
        best = None  # ((most nodes covered, -period size), start, period, count)
        for p in range(1, (len(segs) - i) // 2 + 1):
            found = []  # (nodes covered, exit cost, period size, start, count) per rotation
            for r in range(2 * p):
                count = _run_at(g, segs, i + r, p) if i + r + 2 * p <= len(segs) else 0
                if count >= 2:
                    size = sum(len(ns) for _, ns in segs[i + r:i + r + p])
                    exit_cost = g.node(segs[i + r + p - 1][1][-1]).op.flops_per_entry
                    found.append((count * size, exit_cost, size, i + r, count))
            if not found:
                continue
            most = max(f[0] for f in found)
            covered, _, size, start, count = max(
                (f for f in found if f[0] >= most - f[2]), key=lambda f: (f[1], f[0]))
            if best is None or (most, -size) > best[0]:
                best = ((most, -size), start, p, count)
            if most >= 2 * MAX_BODY_NODES:
                break
        if best is None:
            i += 1
            continue
        _, start, p, count = best
        nodes = [nid for _, ns in segs[start:start + p * count] for nid in ns]
        runs.append((segs[start][0], nodes, len(nodes) // count, count))
        i = start + p * count
    return runs


def roll_loops(g: Graph, opts: Options) -> Graph:
    """Mark every run of identical iterations as a loop (see the module docstring)."""
    g = g.copy()
    for nid in g.order():
        if g.node(nid).loop is not None:
            g.replace(nid, loop=None)
    if opts.reference or not opts.roll_loops:
        return g
    for lid, (_, nodes, period, _count) in enumerate(find_runs(g)):
        for k, nid in enumerate(nodes):
            g.replace(nid, loop=(lid, k // period))
    return g


def loops(g: Graph) -> list[Loop]:
    """The rolled loops marked in `g`, in execution order."""
    members: dict[int, list[int]] = {}
    for nid in g.order():
        mark = g.node(nid).loop
        if mark is not None:
            members.setdefault(mark[0], []).append(nid)
    out = []
    for lid, ids in members.items():
        body = tuple(nid for nid in ids if g.node(nid).loop[1] == 0)
        (entry,) = {s for nid in body for s in g.inputs(nid) if s not in body}
        out.append(Loop(id=lid, entry=entry, body=body, n=1 + max(g.node(i).loop[1] for i in ids),
                        exit=ids[-1], members=frozenset(ids)))
    return out


def loop_problems(g: Graph) -> list[str]:
    """Invariant violations of the loop marks: every iteration of a loop must equal its first
    (ops, types, layouts, wiring) and the carry must keep its type and layout."""
    out = []
    for lp in loops(g):
        ids = sorted(lp.members, key=g.order().index)
        size = len(lp.body)
        if len(ids) != size * lp.n:
            out.append(f'loop {lp.id}: {len(ids)} nodes is not {lp.n} iterations of {size}')
            continue
        first = _signature(g, lp.entry, list(lp.body))
        if first is None or not _carries(g, lp.entry, lp.body[-1]):
            out.append(f'loop {lp.id}: its body is not self-contained or changes the carry')
            continue
        for k in range(1, lp.n):
            block = ids[k * size:(k + 1) * size]
            if _signature(g, ids[k * size - 1], block) != first:
                out.append(f'loop {lp.id}: iteration {k} differs from iteration 0 '
                           f'({g.node(block[0]).path})')
                break
    return out
