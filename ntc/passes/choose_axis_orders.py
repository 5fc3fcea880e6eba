"""choose_axis_orders: choose the storage order of every covariance's spatial axes so that as
few bytes as possible are ever transposed.

Each op says which order its output has given its input's (`Op.out_order`): most keep it,
convolutions whose dimension_numbers move spatial axes relabel it, and every stencil reads its
axes by name, so it accepts any order.  The order of the input covariance is free (it is built by
an einsum in whatever order we like).  The pass therefore:

1. tries every storage order of the input's spatial axes (at most d! for d spatial axes; with
   several inputs, every combination of their orders);
2. propagates orders forward; where a fan-in receives different orders, the smaller inputs get
   an explicit Transpose to the order of the largest; if the output's order is not the tensor's
   own, one final Transpose is needed (per output);
3. keeps the choice that moves the fewest bytes (ties: the identity order), inserts the
   Transpose nodes, and cancels adjacent pairs.

This is NT's `is_reversed` trick made general: NT alternates one fixed order; here any op may
relabel axes and the plan shows every transpose that is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations, product

from ..ir.graph import Graph
from ..layers.linear import Transpose
from .cost import node_bytes
from .options import Options

_PROBE = (100, 100)  # batch sizes N1, N2 at which transposed bytes are compared


@dataclass
class _Assignment:
    orders: dict[int, tuple[int, ...]] = field(default_factory=dict)
    fixes: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)  # src, dst, order
    output_fixes: dict[int, tuple[int, ...]] = field(default_factory=dict)  # output -> order
    cost: float = 0.0


def _bytes(g: Graph, nid: int, opts: Options) -> float:
    return node_bytes(g.node(nid), opts, 1).at(*_PROBE)


def _propagate(g: Graph, opts: Options, starts: dict[int, tuple[int, ...]]) -> _Assignment:
    """The orders that follow from storing each input `i` in order `starts[i]`."""
    a = _Assignment()
    for node in g.nodes():
        srcs = g.inputs(node.id)
        if not srcs:
            a.orders[node.id] = starts[node.id]
            continue
        in_orders = [a.orders[s] for s in srcs]
        target = in_orders[0]
        if len(set(in_orders)) > 1:
            target = a.orders[max(srcs, key=lambda s: _bytes(g, s, opts))]
            for s in srcs:
                if a.orders[s] != target:
                    a.fixes.append((s, node.id, target))
                    a.cost += _bytes(g, s, opts)
        src_type = g.node(srcs[0]).ttype
        a.orders[node.id] = node.op.out_order(target, src_type, node.ttype)
    for out in dict.fromkeys(g.outputs):
        final = a.orders[out]
        if list(final) != sorted(final):
            a.output_fixes[out] = tuple(sorted(final))
            a.cost += _bytes(g, out, opts)
    return a


def choose_axis_orders(graph: Graph, opts: Options) -> Graph:
    g = graph.copy()
    inputs = g.input_nodes()
    choices = [permutations(range(len(g.node(i).ttype.spatial_axes))) for i in inputs]
    best = None
    for start in product(*choices):  # the identity orders come first and win ties
        a = _propagate(g, opts, dict(zip(inputs, start)))
        if best is None or a.cost < best.cost:
            best = a
    for nid, order in best.orders.items():
        g.replace(nid, cov=g.node(nid).cov.model_copy(update=dict(axis_order=order)))
    inserted: dict[tuple[int, tuple[int, ...]], int] = {}
    for src, dst, order in best.fixes:
        _transpose_edge(g, src, dst, order, inserted)
    for out_id, order in best.output_fixes.items():
        out = g.node(out_id)
        tid = g.insert_after(out.id, Transpose(order=order), f'{out.path}.Transpose')
        g.replace(tid, ttype=out.ttype, cov=out.cov.model_copy(update=dict(axis_order=order)))
    return cancel_transposes(g)


def _transpose_edge(g: Graph, src: int, dst: int, order, inserted: dict) -> None:
    key = (src, order)
    if key in inserted:  # one Transpose serves every consumer wanting that order
        tid = inserted[key]
        g.reconnect(src, dst, tid)
        return
    node = g.node(src)
    tid = g.insert_on_edge(src, dst, Transpose(order=order), f'{node.path}.Transpose')
    g.replace(tid, ttype=node.ttype, cov=node.cov.model_copy(update=dict(axis_order=order)))
    inserted[key] = tid


def cancel_transposes(graph: Graph) -> Graph:
    """Fuse chains of Transposes into one, and drop those that restore their input's order."""
    g = graph
    changed = True
    while changed:
        changed = False
        for node in list(g.nodes()):
            if not isinstance(node.op, Transpose):
                continue
            (src,) = g.inputs(node.id)
            prev = g.node(src)
            if node.cov.axis_order == prev.cov.axis_order:
                g.bypass(node.id)
                changed = True
            elif isinstance(prev.op, Transpose) and len(g.consumers(src)) == 1:
                g.bypass(src)
                changed = True
    return g
