"""check: reject, at compile time, architectures whose kernel ntc cannot compute exactly.

- a nonlinearity or LayerNorm whose input is not Gaussian (it must follow a random affine
  layer: Dense, Conv, ...);
- a layer with no infinite-width kernel (no registered kernel rule, or `Op.no_kernel`: e.g.
  softmax attention without linear scaling, an Elementwise layer without `nngp_fn`), so that
  the error comes from `ntc.compile`, not from the first call;
- a fan-in whose kernel rule assumes more of its branches than they give (`Op.branch_need`).

Independence of branches.  At infinite width the output of a random affine layer (its own
weights or bias random: `Op.independent_of_input`) is a Gaussian field independent of
every other such field and of the raw input, even of those it is computed from: conditioned on
its input, it is Gaussian with a covariance that concentrates on a deterministic value.  Every
value is therefore a function of the fields it reaches by walking back through its inputs and
stopping at the first independent layer on each path (`field_sources`).  Two branches whose
field sets are disjoint are independent, whatever layers follow each field on the branch alone;
a product of such branches has the product of their kernels as kernel.  A sum (or a spatial
concatenation) needs the cross moments E[a b'] = E[a] E[b'] to vanish as well, so one of each
pair must also have zero mean: a fresh affine image (a linear function of affine outputs).
"""

from __future__ import annotations

from itertools import combinations

from ..errors import ArchitectureError, GaussianityError, NoClosedFormError
from ..ir.graph import Graph
from ..ir.registry import has_kernel
from .options import Options


def _describe_source(g: Graph, nid: int) -> str:
    node = g.node(nid)
    if not g.inputs(nid):
        return 'the raw input'
    return f'{node.path} ({node.op.kind}, whose output is not Gaussian)'


def field_sources(g: Graph) -> dict[int, frozenset[int]]:
    """For each node, the nodes whose randomness its value is a function of, cut at the
    nearest independent affine layers (which are included): two values with disjoint sets
    are independent at infinite width."""
    sources: dict[int, frozenset[int]] = {}
    for node in g.nodes():
        own = frozenset({node.id})
        if node.op.independent_of_input():
            sources[node.id] = own
        else:
            sources[node.id] = own.union(*(sources[i] for i in g.inputs(node.id)))
    return sources


def _shared(g: Graph, common: frozenset[int]) -> str:
    """The latest (in execution order) of the shared sources, as text."""
    order = {nid: i for i, nid in enumerate(g.order())}
    node = g.node(max(common, key=order.__getitem__))
    return 'the raw input' if not g.inputs(node.id) else f'{node.path} ({node.op.kind})'


def _check_branches(g: Graph, node, sources: dict[int, frozenset[int]]) -> None:
    need = node.op.branch_need(node.ttype)
    if need is None:
        return
    ins = g.inputs(node.id)
    for (i, a), (j, b) in combinations(enumerate(ins), 2):
        common = sources[a] & sources[b]
        if common:
            raise ArchitectureError(
                f'branches {i} and {j} of {node.op.kind} are correlated: both are functions of '
                f'{_shared(g, common)} with no independent random affine layer in between, so '
                'the kernel of their combination needs their joint moments', path=node.path,
                hint='start each branch with its own Dense or Conv layer with W_std > 0')
        fresh = g.node(a).ttype.is_fresh or g.node(b).ttype.is_fresh
        if need == 'uncorrelated' and not fresh:
            raise ArchitectureError(
                f'branches {i} and {j} of {node.op.kind} are independent but neither has zero '
                'mean, so the kernel of their combination needs the product of their means',
                path=node.path, hint='end one of the two branches with a Dense or Conv layer')


def check_structure(graph: Graph) -> Graph:
    """Gaussian inputs where needed, and fan-in branches as their kernel rules assume."""
    g = graph
    sources = field_sources(g)
    for node in g.nodes():
        ins = g.inputs(node.id)
        types = [g.node(i).ttype for i in ins]
        if node.op.needs_gaussian and not types[0].is_gaussian:
            raise GaussianityError(
                f'{node.op.kind} needs a Gaussian input, but its input is '
                f'{_describe_source(g, ins[0])}', path=node.path,
                hint=f'insert a Dense (or Conv) layer before {node.op.kind}')
        _check_branches(g, node, sources)
    return g


def check_kernels(graph: Graph) -> Graph:
    """Every layer has an infinite-width kernel: a registered kernel rule (`has_kernel`), and
    none of the reasons its `Op.no_kernel` gives for these input types."""
    for node in graph.nodes():
        if not has_kernel(node.op):
            raise NoClosedFormError(f'{node.op.kind} has no kernel rule', path=node.path,
                                    hint='register one with ntc.layers.kernel_rule, or estimate '
                                    'the kernel with ntc.monte_carlo_kernel_fn')
        reason = node.op.no_kernel([graph.node(i).ttype for i in graph.inputs(node.id)])
        if reason is not None:
            raise NoClosedFormError(reason[0], path=node.path, hint=reason[1])
    return graph


def check(graph: Graph, opts: Options) -> Graph:
    """The check pass: the structure of the architecture, then that every layer has a kernel."""
    return check_kernels(check_structure(graph))
