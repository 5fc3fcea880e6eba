"""infer_types: give every node its TensorType (shape, axes, Gaussianity) from its op's shape
rule, in topological order.  The Input node must already carry the input's type.

It also refuses a `repeat(layer, n)` whose layer changes the shape: as soon as an iteration's
exit is typed, its shape and axes must equal those entering the repeat (the graph records each
repeat's entry and exits, `Graph.repeats`)."""

from __future__ import annotations

import pydantic

from ..errors import NtcError, ShapeError
from ..ir.graph import Graph, RepeatRecord
from .options import Options


def infer_types(graph: Graph, opts: Options) -> Graph:
    g = graph.copy()
    exits: dict[int, list[tuple[RepeatRecord, int]]] = {}
    for rep in g.repeats:
        for it in rep.exits:
            for slot, nid in enumerate(it):
                exits.setdefault(nid, []).append((rep, slot))
    for node in g.nodes():
        if node.op.arity == 0:  # the network input: its type is given
            if node.ttype is None:
                raise ShapeError('the input has no type', path=node.path)
            continue
        ins = [g.node(i).ttype for i in g.inputs(node.id)]
        try:
            out = node.op.infer(ins, node.path)
        except NtcError:
            raise
        except (pydantic.ValidationError, ValueError, IndexError, ZeroDivisionError) as e:
            raise ShapeError(f'{node.op.kind} cannot take input(s) of shape '
                             f'{", ".join(t.describe() for t in ins)}: {e}', path=node.path) from e
        g.replace(node.id, ttype=out)
        for rep, slot in exits.get(node.id, ()):
            _check_keeps_shape(g, rep, slot, out)
    return g


def _check_keeps_shape(g: Graph, rep: RepeatRecord, slot: int, out) -> None:
    """A repeat's iteration must leave value `slot` with the shape and axes it entered with."""
    entry = g.node(rep.entry[slot]).ttype
    if (out.shape, out.batch, out.channel) != (entry.shape, entry.batch, entry.channel):
        raise ShapeError(f'repeat needs a layer that keeps the input shape, but it maps '
                         f'{entry.describe()} to {out.describe()}', path=rep.path,
                         hint=f'use serial(*[layer] * {rep.n}) for a layer that changes the '
                         'shape')
