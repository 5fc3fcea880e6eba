"""Lowering to the finite network: `init_fn` and `apply_fn` from the same IR graph, through the
finite-network rule table.  Monte-Carlo estimates therefore come from the very declaration the
analytic kernel is compiled from."""

from __future__ import annotations

from dataclasses import dataclass

import jax

from ..covariance import masking
from ..errors import NtcError
from ..ir.graph import Graph
from ..ir.registry import get_finite_rule


@dataclass(frozen=True)
class ApplyCtx:
    """What a finite rule may read: the node's path, a random key, and apply_fn kwargs."""

    path: str
    rng: jax.Array | None
    kwargs: dict
    mask: jax.Array | None = None  # position mask (N, *spatial) of input 0 (`covariance.masking`)
    in_types: tuple = ()  # the inputs' TensorTypes


def init_params(graph: Graph, key) -> dict:
    """Parameters of every node that has some, keyed by the node's path."""
    params = {}
    nodes = [n for n in graph.nodes() if n.op.arity != 0]
    keys = jax.random.split(key, max(len(nodes), 1))
    for node, k in zip(nodes, keys):
        rule = get_finite_rule(node)
        in_types = [graph.node(i).ttype for i in graph.inputs(node.id)]
        p = rule.init(k, node.op, in_types)
        if p != ():
            params[node.path] = p
    return params


def apply(graph: Graph, params: dict, x, rng=None, **kwargs):
    """Run the finite network on `x`.  With ``mask_constant=c``, entries of `x` equal to `c`
    are masked (see `ntc.covariance.masking`) and the output is a `MaskedArray` (NT's
    convention)."""
    mask_constant = kwargs.pop('mask_constant', None)
    mask = None
    if mask_constant is not None:
        x, mask = masking.mask_input(x, graph.node(graph.input_nodes()[0]).ttype, mask_constant)
    out, out_mask = run(graph, params, x, rng, mask, kwargs)
    if mask_constant is None:
        return out
    return masking.MaskedArray(out, masking.to_tensor(out_mask, graph.node(graph.output).ttype,
                                                      out.shape))


def run(graph: Graph, params: dict, x, rng, mask, kwargs: dict):
    """(output, output position mask) of the finite network on `x` with position mask `mask`
    (None: nothing masked); every layer's masked input positions are zeroed."""
    env, masks = {}, {}
    nodes = list(graph.nodes())
    rngs = (jax.random.split(rng, len(nodes)) if rng is not None else [None] * len(nodes))
    for node, r in zip(nodes, rngs):
        if node.op.arity == 0:
            env[node.id], masks[node.id] = x, mask
            continue
        rule = get_finite_rule(node)
        srcs = graph.inputs(node.id)
        types = tuple(graph.node(i).ttype for i in srcs)
        in_masks = [masks[i] for i in srcs]
        ins = [masking.zero_tensor(env[i], m, t) for i, m, t in zip(srcs, in_masks, types)]
        try:
            p = params.get(node.path, ())
        except AttributeError:
            raise NtcError('params must be the dict returned by init_fn') from None
        env[node.id] = rule.apply(node.op, p, ins, ApplyCtx(node.path, r, kwargs, in_masks[0],
                                                            types))
        masks[node.id] = masking.propagate(node, in_masks, list(types))
    return env[graph.output], masks[graph.output]
