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
entry), and the value entering the run has the type and layout of the first iteration's exit, so
the loop carry keeps one layout.  Layouts compare without their marginals: the last layers of a
stack need none (nothing after them reads them), and those iterations are rolled too, carrying
the first iteration's marginals (a few cheap per-position variance maps more, where each
unrolled iteration would cost XLA another set of kernels to compile; `explain()` shows the
marginals kept).  Marginals are needed backward from their readers, so along a run they can
only stop, and the first iteration always carries the most.  Likewise an iteration takes the
first one's materialisation (the last Relu of a stack feeds no stencil, but a loop carry is
stored anyway).  Scanning from the input, the run covering the most nodes
starting at each segment is taken (ties: the shortest period).  Inside a segment no run
covers (a residual block unlike its neighbours), the chains of one-input nodes (a branch's
(Relu, Conv) pairs) are searched the same way, each node a segment of its own: a WideResNet's
blocks differ, but their branches repeat, and XLA then compiles each branch's pair once.
Layers are compared by `Op.kernel_key` (strides None and all ones are the same Conv).

Nothing moves in the graph: each node of a run gets `loop = (loop id, iteration)` (and its
first iteration's layout), so
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
    enters from `entry`; the run's last node is `exit`; `members` are all its nodes, in
    execution order."""

    id: int
    entry: int
    body: tuple[int, ...]
    n: int
    exit: int
    members: tuple[int, ...]


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


def _signature(g: Graph, entry: int, nodes, marginals: bool = True) -> tuple | None:
    """What must agree between two iterations: each node's op, types, layout and wiring, with
    inputs named by position relative to the iteration's entry (None if a node is an Input or
    reads from outside the iteration).  Without `marginals`, layouts compare without their
    marginals and materialisation is ignored (a rolled iteration takes both from the first)."""
    local = {entry: 0, **{nid: i + 1 for i, nid in enumerate(nodes)}}
    sig = []
    for nid in nodes:
        n = g.node(nid)
        ins = g.inputs(nid)
        if any(i not in local for i in ins) or n.op.arity == 0:
            return None
        cov, mat = n.cov, n.materialize
        if not marginals:
            cov, mat = cov.model_copy(update=dict(marginal=None)), None
        sig.append((n.op.kernel_key(), n.ttype, cov, mat, tuple(local[i] for i in ins)))
    return tuple(sig)


def _carries(g: Graph, entry: int, exit_: int) -> bool:
    a, b = g.node(entry), g.node(exit_)
    return a.ttype == b.ttype and a.cov == b.cov


def _segment_ids(g: Graph, segs) -> list[int]:
    """An id per segment, equal for segments whose `_signature`s are equal (segments that
    would be equal iterations); segments holding an Input node get ids of their own."""
    table: dict = {}
    unhashable: list = []
    out = []
    for k, (entry, nodes) in enumerate(segs):
        sig = _signature(g, entry, nodes, marginals=False)
        if sig is None:
            out.append(-1 - k)
            continue
        try:
            out.append(table.setdefault(sig, len(table) + len(unhashable)))
        except TypeError:  # an op holding unhashable values: compare by equality
            for d, i in unhashable:
                if d == sig:
                    out.append(i)
                    break
            else:
                unhashable.append((sig, len(table) + len(unhashable)))
                out.append(unhashable[-1][1])
    return out


def _prefix_sizes(segs) -> list[int]:
    """ends[k] = number of nodes in segments 0..k-1."""
    ends = [0]
    for _, nodes in segs:
        ends.append(ends[-1] + len(nodes))
    return ends


def _candidates(g: Graph, segs, ends: list[int]) -> dict[int, dict[int, int]]:
    """{period p: {start segment i: iterations}} for every loop body of p segments that starts
    at i, repeats at least twice and keeps the carry's type and layout.  Tandem repeats of the
    segment ids: L[i] counts the consecutive j ≥ i with id[j] = id[j + p]."""
    ids = _segment_ids(g, segs)
    m = len(segs)
    kinds: dict = {}  # (type, layout) -> a small int, so that carries compare by int
    value = {nid: kinds.setdefault((g.node(nid).ttype, g.node(nid).cov), len(kinds))
             for entry, nodes in segs for nid in (entry, nodes[-1])}
    out: dict[int, dict[int, int]] = {}
    for p in range(1, min(m // 2, MAX_BODY_NODES) + 1):
        same = [0] * (m + 1)
        for i in reversed(range(m - p)):
            same[i] = same[i + 1] + 1 if ids[i] == ids[i + p] else 0
        found = {}
        for i in range(m - p):
            count = 1 + same[i] // p
            if count < 2:
                continue
            fits = ends[i + p] - ends[i] <= MAX_BODY_NODES
            if fits and value[segs[i][0]] == value[segs[i + p - 1][1][-1]]:  # `_carries`
                found[i] = count
        if found:
            out[p] = found
    return out


def find_runs(g: Graph) -> list[tuple[int, list[int], int, int]]:
    """(entry, nodes of the run, period in nodes, iterations) of every run to roll, in
    execution order: the runs of segments (`_runs`), then, inside every segment no run covers,
    the runs of its chains (`_chains`: a residual block's branch of (Relu, Conv) pairs)."""
    segs = _segments(g)
    runs = _runs(g, segs)
    covered = {nid for _, nodes, _, _ in runs for nid in nodes}
    for _, nodes in segs:
        if len(nodes) > 2 and not covered.intersection(nodes):
            for chain in _chains(g, nodes[:-1]):
                runs += _runs(g, chain)
    pos = {nid: i for i, nid in enumerate(g.order())}
    return sorted(runs, key=lambda run: pos[run[1][0]])


def _chains(g: Graph, nodes: list[int]) -> list[list[tuple[int, list[int]]]]:
    """The chains among `nodes` (the inside of a segment), each as single-node segments
    (entry, [node]): maximal paths of one-input nodes where each feeds only the next.  A
    chain's first node may read a value that others read too; it is the chain's entry."""
    inside, seen, out = set(nodes), set(), []
    for nid in nodes:
        if nid in seen or len(g.inputs(nid)) != 1:
            continue
        chain = [nid]
        while True:
            nxt = g.consumers(chain[-1])
            if len(nxt) != 1 or nxt[0][0] not in inside or len(g.inputs(nxt[0][0])) != 1:
                break
            chain.append(nxt[0][0])
        seen.update(chain)
        if len(chain) >= 2:
            entries = [g.inputs(chain[0])[0]] + chain[:-1]
            out.append([(e, [n]) for e, n in zip(entries, chain)])
    return out


def _runs(g: Graph, segs) -> list[tuple[int, list[int], int, int]]:
    """The runs to roll in a sequence of single-entry single-exit segments.

    Scanning from the input, the period covering the most nodes from the current segment is
    taken (ties: the shorter period).  Of its rotations (starts within two periods), the one
    whose iterations end at their most expensive node is taken, if it loses at most one
    iteration: the loop carry is always stored, so the expensive value is computed once and read
    by the next iteration's stencils, instead of being fused into them and recomputed per
    read."""
    ends = _prefix_sizes(segs)
    cands = _candidates(g, segs, ends)
    runs, i = [], 0
    while i < len(segs):
        best = None  # ((most nodes covered, -period size), start, period, count)
        for p, found in cands.items():
            options = []  # (nodes covered, exit cost, period size, start, count)
            for start in range(i, min(i + 2 * p, len(segs))):
                count = found.get(start)
                if count is None:
                    continue
                size = ends[start + p] - ends[start]
                exit_cost = g.node(segs[start + p - 1][1][-1]).op.flops_per_entry
                options.append((count * size, exit_cost, size, start, count))
            if not options:
                continue
            most = max(o[0] for o in options)
            _, _, size, start, count = max((o for o in options if o[0] >= most - o[2]),
                                           key=lambda o: (o[1], o[0]))
            if best is None or (most, -size) > best[0]:
                best = ((most, -size), start, p, count)
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
            first = g.node(nodes[k % period])
            g.replace(nid, loop=(lid, k // period), cov=first.cov, materialize=first.materialize)
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
                        exit=ids[-1], members=tuple(ids)))
    return out


def loop_problems(g: Graph) -> list[str]:
    """Invariant violations of the loop marks: every iteration of a loop must equal its first
    (ops, types, layouts, wiring) and the carry must keep its type and layout."""
    out = []
    for lp in loops(g):
        ids = lp.members
        size = len(lp.body)
        if len(ids) != size * lp.n:
            out.append(f'loop {lp.id}: {len(ids)} nodes is not {lp.n} iterations of {size}')
            continue
        first = _signature(g, lp.entry, lp.body)
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
