"""The verifier run between passes: checks the IR's invariants and, on failure, names the pass
that broke them and the passes that ran before it."""

from __future__ import annotations

from ..errors import PassError
from ..ir.graph import Graph
from ..ir.types import SPATIAL_RANK
from .roll_loops import loop_problems


def problems(g: Graph, orders_fixed: bool = True) -> list[str]:
    """Every invariant violation found in `g` (empty when it is well formed).  Axis orders are
    only consistent along edges once `choose_axis_orders` has run (`orders_fixed`)."""
    if not g.is_acyclic():
        return ['the graph has a cycle']
    out = []
    if not g.outputs or any(o not in g for o in g.outputs):
        out.append('an output is not a node of the graph')
    typed = all(n.ttype is not None for n in g.nodes())
    laid_out = typed and all(n.cov is not None for n in g.nodes())
    for n in g.nodes():
        ins = [g.node(i) for i in g.inputs(n.id)]
        arity = n.op.arity
        if (arity is None and len(ins) < 2) or (arity is not None and len(ins) != arity):
            out.append(f'{n.path}: {n.op.kind} has {len(ins)} inputs')
        if not laid_out:
            continue
        if len(n.cov.axis_order) != len(n.ttype.spatial_axes):
            out.append(f'{n.path}: axis order {n.cov.axis_order} for '
                       f'{len(n.ttype.spatial_axes)} spatial axes')
        for p in ins:
            need = n.op.spatial_need(n.cov.spatial, p.ttype)
            if n.cov.batch == 'DIAG' and SPATIAL_RANK[p.cov.spatial] < SPATIAL_RANK[need]:
                out.append(f'{n.path}: needs {need} spatial input, {p.path} stores {p.cov.spatial}')
        orders = {p.cov.axis_order for p in ins}
        if not orders_fixed:
            continue
        if len(orders) > 1:
            out.append(f'{n.path}: inputs arrive in different axis orders {sorted(orders)}')
        elif ins and n.op.out_order(ins[0].cov.axis_order, ins[0].ttype, n.ttype) != \
                n.cov.axis_order:
            out.append(f'{n.path}: output order {n.cov.axis_order} does not follow from input '
                       f'order {ins[0].cov.axis_order}')
    if laid_out:
        out += loop_problems(g)
    return out


def verify(g: Graph, passes_run: list[str]) -> None:
    """Raise `PassError` if the graph breaks an invariant after the last pass in `passes_run`."""
    found = problems(g, orders_fixed='choose_axis_orders' in passes_run)
    if found:
        raise PassError(f'pass {passes_run[-1]!r} broke the IR (after '
                        f'{", ".join(passes_run[:-1]) or "nothing"}): ' + '; '.join(found[:5]))
