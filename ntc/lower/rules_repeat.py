"""Kernel and finite-network rules of `Repeat`: one `lax.scan` over the compiled body.

The body is lowered once, whatever `n`: the kernel rule runs the body's plan (see
`ntc.passes.repeat`) as the scan's step on a carry `Kernel` whose layout is the same in every
iteration, so the traced program, compile time and memory do not grow with depth.  The finite
network stacks the `n` iterations' parameters along a leading axis and scans over them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..passes.options import Options
from ..passes.repeat import body_plan
from . import finite, masking
from .kernel import adapt
from .registry import finite_rule, kernel_rule


def run_body(body, ctx, k):
    """The body's output Kernel for carry `k` (the walk of `lower.evaluate`, on a Kernel)."""
    from .lower import apply_node
    env = {body.input_nodes()[0]: k}
    for node in body.nodes():
        if body.inputs(node.id):
            env[node.id] = apply_node(ctx, body, node, env)
    return env[body.output]


@kernel_rule('Repeat')
def repeat_kernel(ctx, node, k):
    """n iterations of the body's kernel map, as `lax.scan` over a fixed-layout carry."""
    op = node.op
    t = ctx.in_type(node)
    body = body_plan(op, t, k.layout, Options(), node.path)
    if ctx.want_ntk and k.ntk is None:
        k = k.replace(ntk=jnp.zeros_like(k.nngp))  # the carry's structure must not change
    masks = None
    if ctx.masks is not None:
        masks = {body.input_nodes()[0]: masking.input_masks(ctx, node)}
        for b in body.nodes():
            if body.inputs(b.id):
                masks[b.id] = masking.output_masks(body, b, masks)
    bctx = dataclasses.replace(ctx, graph=body, masks=masks)

    def step(carry, _):
        return adapt(run_body(body, bctx, carry), carry.layout), None

    out, _ = jax.lax.scan(step, k, None, length=op.n)
    return out


def _repeat_init(key, op, in_types):
    body = op._body(in_types[0])
    return jax.vmap(lambda kk: finite.init_params(body, kk))(jax.random.split(key, op.n))


@finite_rule('Repeat', init=_repeat_init)
def repeat_apply(op, params, inputs, ctx):
    """x -> body(x) n times, iteration i with the i-th slice of the stacked parameters."""
    (x,) = inputs
    body = op._body(ctx.in_types[0])
    rngs = None if ctx.rng is None else jax.random.split(ctx.rng, op.n)

    def step(h, xs):
        p, r = xs
        out, _ = finite.run(body, p, h, r, ctx.mask, ctx.kwargs)
        return masking.zero_tensor(out, ctx.mask, ctx.in_types[0]), None

    y, _ = jax.lax.scan(step, x, (params, rngs))
    return y
