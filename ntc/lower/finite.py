"""Lowering to the finite network: `init_fn` and `apply_fn` from the same IR graph, through the
finite-network rule table.  Monte-Carlo estimates therefore come from the very declaration the
analytic kernel is compiled from."""

from __future__ import annotations

from dataclasses import dataclass

import jax

from ..errors import NtcError
from ..ir.graph import Graph
from .registry import get_finite_rule


@dataclass(frozen=True)
class ApplyCtx:
    """What a finite rule may read: the node's path, a random key, and apply_fn kwargs."""

    path: str
    rng: jax.Array | None
    kwargs: dict


def init_params(graph: Graph, key) -> dict:
    """Parameters of every node that has some, keyed by the node's path."""
    params = {}
    nodes = [n for n in graph.nodes() if n.op.kind != 'Input']
    keys = jax.random.split(key, max(len(nodes), 1))
    for node, k in zip(nodes, keys):
        rule = get_finite_rule(node)
        in_types = [graph.node(i).ttype for i in graph.inputs(node.id)]
        p = rule.init(k, node.op, in_types)
        if p != ():
            params[node.path] = p
    return params


def apply(graph: Graph, params: dict, x, rng=None, **kwargs):
    """Run the finite network on `x`."""
    env = {}
    nodes = list(graph.nodes())
    rngs = (jax.random.split(rng, len(nodes)) if rng is not None else [None] * len(nodes))
    for node, r in zip(nodes, rngs):
        if node.op.kind == 'Input':
            env[node.id] = x
            continue
        rule = get_finite_rule(node)
        ins = [env[i] for i in graph.inputs(node.id)]
        try:
            p = params.get(node.path, ())
        except AttributeError:
            raise NtcError('params must be the dict returned by init_fn') from None
        env[node.id] = rule.apply(node.op, p, ins, ApplyCtx(node.path, r, kwargs))
    return env[graph.output]
