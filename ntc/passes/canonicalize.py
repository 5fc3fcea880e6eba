"""canonicalize: drop Identity nodes and dead nodes, and fold chains of per-position affine
layers into one `Affine` kernel map.

Two affine maps (K -> a K + b, Θ -> c Θ + d K + e) compose into one:
    K  -> a2 a1 K + (a2 b1 + b2)
    Θ  -> c2 c1 Θ + (c2 d1 + d2 a1) K + (c2 e1 + d2 b1 + e2)
A chain folds when each intermediate value feeds only the next layer.
"""

from __future__ import annotations

from ..ir.graph import Graph
from ..layers.dense import Affine
from .options import Options


def _coefficients(g: Graph, nid: int) -> tuple[float, ...] | None:
    ins = g.inputs(nid)
    if len(ins) != 1:
        return None
    return g.node(nid).op.pointwise_affine(g.node(ins[0]).ttype.channels)


def compose(first: tuple[float, ...], second: tuple[float, ...]) -> tuple[float, ...]:
    """The affine kernel map `second ∘ first`."""
    a1, b1, c1, d1, e1 = first
    a2, b2, c2, d2, e2 = second
    return (a2 * a1, a2 * b1 + b2, c2 * c1, c2 * d1 + d2 * a1, c2 * e1 + d2 * b1 + e2)


def canonicalize(graph: Graph, opts: Options) -> Graph:
    g = graph.copy()
    live = set(g.outputs).union(*(g.ancestors(o) for o in g.outputs), g.input_nodes())
    for nid in [n for n in g.order() if n not in live]:
        g.remove(nid)  # dead branches never reach an output (inputs stay: they are positional)
    for node in list(g.nodes()):
        if node.op.is_identity():
            g.bypass(node.id)
    if opts.reference:
        return g
    for nid in g.order():
        if nid not in g:
            continue
        second = _coefficients(g, nid)
        if second is None:
            continue
        (src,) = g.inputs(nid)
        first = _coefficients(g, src)
        if first is None or len(g.consumers(src)) != 1 or src in g.outputs:
            continue
        a, b, c, d, e = compose(first, second)
        paths = _folded(g, src) + _folded(g, nid)
        t = g.node(nid).ttype
        g.replace(nid, op=Affine(a=a, b=b, c=c, d=d, e=e, out_dim=t.channels,
                                 folded=paths))
        g.bypass(src)
    return g


def _folded(g: Graph, nid: int) -> tuple[str, ...]:
    op = g.node(nid).op
    return op.folded if isinstance(op, Affine) else (g.node(nid).path,)
