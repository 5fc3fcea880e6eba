"""check: reject architectures whose kernel has no exact closed form in ntc.

- a nonlinearity or LayerNorm whose input is not Gaussian (it must follow a random affine
  layer: Dense, Conv, ...);
- a sum, product or spatial concatenation of branches that are correlated with each other.
  The rules need the branches' cross-covariances to vanish.  Branch i is uncorrelated with
  branch j when i is "fresh" (a linear function of random affine layers) and none of the affine
  layers it comes from is an ancestor of j: then j does not depend on those layers' weights.
"""

from __future__ import annotations

from itertools import combinations

from ..errors import ArchitectureError, GaussianityError
from ..ir.graph import Graph
from .options import Options


def _describe_source(g: Graph, nid: int) -> str:
    node = g.node(nid)
    if node.op.kind == 'Input':
        return 'the raw input'
    return f'{node.path} ({node.op.kind}, whose output is not Gaussian)'


def fresh_sources(g: Graph) -> dict[int, frozenset[int] | None]:
    """For each fresh value, the affine layers whose weights make it fresh; None otherwise."""
    sources: dict[int, frozenset[int] | None] = {}
    for node in g.nodes():
        if not node.ttype.is_fresh:
            sources[node.id] = None
        elif node.op.creates_fresh:
            sources[node.id] = frozenset({node.id})
        else:
            ins = [sources[i] for i in g.inputs(node.id)]
            sources[node.id] = None if None in ins else frozenset().union(*ins)
    return sources


def uncorrelated(g: Graph, sources: dict, a: int, b: int) -> bool:
    """True when the values of nodes a and b have zero cross-covariance."""
    for x, y in ((a, b), (b, a)):
        src = sources[x]
        if src is not None and not (src & (g.ancestors(y) | {y})):
            return True
    return False


def needs_uncorrelated_inputs(node) -> bool:
    if node.op.kind in ('FanInSum', 'FanInProd'):
        return True
    if node.op.kind == 'FanInConcat':
        t = node.ttype
        return node.op.axis % t.ndim != t.channel
    return False


def check(graph: Graph, opts: Options) -> Graph:
    g = graph
    sources = fresh_sources(g)
    for node in g.nodes():
        ins = g.inputs(node.id)
        types = [g.node(i).ttype for i in ins]
        if node.op.needs_gaussian and not types[0].is_gaussian:
            raise GaussianityError(
                f'{node.op.kind} needs a Gaussian input, but its input is '
                f'{_describe_source(g, ins[0])}', path=node.path,
                hint=f'insert a Dense (or Conv) layer before {node.op.kind}')
        if needs_uncorrelated_inputs(node):
            for (i, a), (j, b) in combinations(enumerate(ins), 2):
                if not uncorrelated(g, sources, a, b):
                    raise ArchitectureError(
                        f'branches {i} and {j} of {node.op.kind} are correlated (neither is a '
                        'fresh affine image independent of the other), so the kernel of their '
                        'combination needs their cross-covariance', path=node.path,
                        hint='end one of the two branches with a Dense or Conv layer')
    return g
