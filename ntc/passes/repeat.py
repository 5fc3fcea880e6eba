"""The body of `repeat(layer, n)`: its typed graph, the layout of its loop carry, and its plan.

`repeat` is compiled as a loop (`lax.scan`), so its body is compiled once, whatever `n`: the
kernel that flows around the loop (the *carry*) must have one layout in every iteration.  The
carry layout is the least fixed point of the body's backward requirement analysis (the same
`Op.spatial_need` / `Op.marginal_need` rules `choose_layouts` uses), started from what the
Repeat's consumers need: L = max(L, need_at_body_input(L)) until stable (at most three steps,
since layouts only grow NONE < DIAG < FULL).  The body plan is then laid out with its input and
output both in L, and keeps the carry's axis order (a body that moves spatial axes is
rejected).
"""

from __future__ import annotations

import functools

from ..errors import NtcError, ShapeError
from ..ir.graph import Graph
from ..ir.op import Op, max_spatial
from ..ir.types import CovType, TensorType
from .canonicalize import canonicalize
from .check import check_structure
from .choose_layouts import propagate_needs
from .infer_types import infer_types
from .options import Options


def _prefixed(e: NtcError, path: str) -> NtcError:
    inner = e.path
    msg = str(e)
    if inner and msg.startswith(f'{inner}: '):
        msg = msg[len(inner) + 2:]
    if e.hint and msg.endswith(f' ({e.hint})'):
        msg = msg[:-len(e.hint) - 3]
    return type(e)(msg, path=f'{path}.{inner}' if inner else path, hint=e.hint)


@functools.lru_cache(maxsize=256)
def typed_body(op: Op, t: TensorType, path: str = 'repeat') -> Graph:
    """The body's graph typed for input `t`, its structure checked (`check_structure`: the
    pipeline's `check` pass reads the body's kernels through `Repeat.no_kernel`), with Identity
    and dead nodes dropped."""
    g = op.layer.graph().copy()
    g.replace(g.input_nodes()[0], ttype=t)
    try:
        g = check_structure(infer_types(g, Options()))
    except NtcError as e:
        raise _prefixed(e, path) from None
    return canonicalize(g, Options(reference=True))  # no folding: node paths stay the layers'


def carry_types(op: Op, t: TensorType, path: str) -> list[TensorType]:
    """Input types of the iterations until they stop changing (shape-preserving body)."""
    types = [t]
    for _ in range(min(op.n, 3)):
        g = typed_body(op, types[-1], path)
        out = g.node(g.output).ttype
        if (out.shape, out.batch, out.channel) != (t.shape, t.batch, t.channel):
            raise ShapeError(f'repeat needs a layer that keeps the input shape, but it maps '
                             f'{t.describe()} to {out.describe()}', path=path,
                             hint=f'use serial(*[layer] * {op.n}) for a layer that changes '
                             'the shape')
        if out == types[-1]:
            break
        types.append(out)
    return types


def carry_layout(op: Op, t: TensorType, out_x: str, out_m: str | None,
                 path: str = 'repeat') -> tuple[str, str | None]:
    """(spatial, marginal) layout of the loop carry: the least fixed point described above."""
    if not t.spatial_axes:
        out_x = 'NONE'
    lx, lm = out_x, out_m
    for ct in carry_types(op, t, path)[-1:]:
        g = typed_body(op, ct, path)
        inp = g.input_nodes()[0]
        for _ in range(4):
            need_x, need_m = propagate_needs(g, lx, lm)
            nx, nm = max_spatial(lx, need_x[inp]), max_spatial(lm, need_m.get(inp))
            if (nx, nm) == (lx, lm):
                break
            lx, lm = nx, nm
    return lx, lm


def body_plan(op: Op, t: TensorType, carry: CovType, opts: Options,
              path: str = 'repeat') -> Graph:
    """The body laid out for a carry of layout `carry` (from `carry_layout`) in iteration
    steady state: every value gets the layout the analysis requires, the input and output the
    carry's own, every spatial axis order the carry's."""
    g = typed_body(op, carry_types(op, t, path)[-1], path).copy()
    need_x, need_m = propagate_needs(g, carry.spatial, carry.marginal)
    inp = g.input_nodes()[0]
    for node in list(g.nodes()):
        if node.id in (inp, g.output):
            cov = carry
        else:
            sp = need_x[node.id] if node.ttype.spatial_axes else 'NONE'
            mg = need_m.get(node.id)
            if mg is not None and not node.ttype.spatial_axes:
                mg = 'NONE'
            cov = CovType(batch=carry.batch, spatial=sp,
                          marginal=None if carry.batch == 'FULL' else mg,
                          axis_order=carry.axis_order)
        ins = g.inputs(node.id)
        if ins:
            src = g.node(ins[0])
            if node.op.out_order(carry.axis_order, src.ttype, node.ttype) != carry.axis_order:
                raise NtcError(f'{node.op.kind} inside repeat moves spatial axes, so the loop '
                               'carry would change layout between iterations',
                               path=f'{path}.{node.path}',
                               hint='repeat a layer that keeps the axis order, or unroll it '
                               'with serial(*[layer] * n)')
        g.replace(node.id, cov=cov)
    return g
