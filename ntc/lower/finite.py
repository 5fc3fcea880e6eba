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
    """Run the finite network on `x` (a sequence of arrays, one per input node in order, for a
    graph with several inputs); a graph with several outputs returns a list of them.  With
    ``mask_constant=c``, entries of `x` equal to `c` are masked (see `ntc.covariance.masking`)
    and each output is a `MaskedArray` (NT's convention)."""
    mask_constant = kwargs.pop('mask_constant', None)
    inputs = graph.input_nodes()
    xs = list(x) if len(inputs) > 1 or isinstance(x, (tuple, list)) else [x]
    masks = [None] * len(xs)
    if mask_constant is not None:
        for i, nid in enumerate(inputs):
            xs[i], masks[i] = masking.mask_input(xs[i], graph.node(nid).ttype, mask_constant)
    outs, out_masks = run(graph, params, xs, rng, masks, kwargs)
    if mask_constant is not None:
        outs = [masking.MaskedArray(o, masking.to_tensor(m, graph.node(nid).ttype, o.shape))
                for o, m, nid in zip(outs, out_masks, graph.outputs)]
    return outs[0] if len(graph.outputs) == 1 else outs


def run(graph: Graph, params: dict, xs: list, rng, in_masks: list, kwargs: dict):
    """(outputs, their position masks) of the finite network on inputs `xs` (one per input
    node) with position masks `in_masks` (None: nothing masked); every layer's masked input
    positions are zeroed."""
    env, masks = {}, {}
    given = dict(zip(graph.input_nodes(), zip(xs, in_masks, strict=True), strict=True))
    nodes = list(graph.nodes())
    rngs = (jax.random.split(rng, len(nodes)) if rng is not None else [None] * len(nodes))
    for node, r in zip(nodes, rngs):
        if node.op.arity == 0:
            env[node.id], masks[node.id] = given[node.id]
            continue
        rule = get_finite_rule(node)
        srcs = graph.inputs(node.id)
        types = tuple(graph.node(i).ttype for i in srcs)
        in_masks_ = [masks[i] for i in srcs]
        ins = [masking.zero_tensor(env[i], m, t) for i, m, t in zip(srcs, in_masks_, types)]
        try:
            p = params.get(node.path, ())
        except AttributeError:
            raise NtcError('params must be the dict returned by init_fn') from None
        env[node.id] = rule.apply(node.op, p, ins, ApplyCtx(node.path, r, kwargs, in_masks_[0],
                                                            types))
        masks[node.id] = masking.propagate(node, in_masks_, list(types))
    return [env[o] for o in graph.outputs], [masks[o] for o in graph.outputs]
