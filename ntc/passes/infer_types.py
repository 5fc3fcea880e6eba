"""infer_types: give every node its TensorType (shape, axes, Gaussianity) from its op's shape
rule, in topological order.  The Input node must already carry the input's type."""

from __future__ import annotations

import pydantic

from ..errors import NtcError, ShapeError
from ..ir.graph import Graph
from .options import Options


def infer_types(graph: Graph, opts: Options) -> Graph:
    g = graph.copy()
    for node in g.nodes():
        if node.op.kind == 'Input':
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
    return g
