"""Kernel and finite-network rules of LayerNorm and Dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import InputError
from . import masking
from .registry import finite_rule, kernel_rule


@kernel_rule('LayerNorm')
def layer_norm_kernel(ctx, node, k):
    """Infinite width: each example's normaliser, the mean of its variance over the normalised
    axes, is deterministic, so K12 -> K12 / sqrt(q1 q2) and Θ12 -> Θ12 / sqrt(q1 q2).  The
    channel mean of a zero-mean Gaussian layer vanishes, so centring changes nothing."""
    t = ctx.in_type(node)
    axes = node.op.axes(t)
    order = k.layout.axis_order
    # storage positions (after the batch axis) of the spatial axes being normalised over
    red = tuple(1 + order.index(i) for i, ax in enumerate(t.spatial_axes) if ax in axes)
    xp, eps = ctx.xp, node.op.eps
    m1, m2 = masking.side_masks(k, *masking.input_masks(ctx, node))

    def norm(v, m):
        if red:  # masked positions are left out of the mean
            v = masking.masked_mean(v, m, order, red)
        return 1.0 / xp.sqrt(v + eps)

    v1, v2 = k.vars()
    r1, r2 = norm(v1, m1), norm(v2, m2)
    c1, c2 = k.expand_cross(r1, r2)
    scale = c1 * c2

    def marginal(cov, r):
        if cov is None:
            return None
        a, b = k.expand_marginal(r)
        return cov * a * b

    return k.replace(nngp=k.nngp * scale, ntk=None if k.ntk is None else k.ntk * scale,
                     cov1=marginal(k.cov1, r1),
                     cov2=marginal(k.cov2, r2 if k.cov2 is not None else r1))


@finite_rule('LayerNorm')
def layer_norm_apply(op, params, inputs, ctx):
    (x,) = inputs
    axes = tuple(a % x.ndim for a in ((op.axis,) if isinstance(op.axis, int) else op.axis))
    if getattr(ctx, 'mask', None) is None:
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.var(x, axis=axes, keepdims=True)
    else:  # statistics over unmasked positions only
        keep = jnp.broadcast_to(~masking.to_tensor(ctx.mask, ctx.in_types[0]), x.shape)
        count = jnp.maximum(jnp.sum(keep, axis=axes, keepdims=True), 1).astype(x.dtype)
        mean = jnp.sum(jnp.where(keep, x, 0.0), axis=axes, keepdims=True) / count
        var = jnp.sum(jnp.where(keep, (x - mean) ** 2, 0.0), axis=axes, keepdims=True) / count
    return (x - mean) / jnp.sqrt(var + op.eps)


def _self_pair_mask(x, lead: int, spatial: str):
    """1 on the entries of covariance `x` that pair an example with itself at one position."""
    mask = jnp.eye(x.shape[0]) if lead == 2 else jnp.ones(x.shape[:1])
    if spatial == 'FULL':
        for size in x.shape[lead::2]:
            mask = mask[..., None, None] * jnp.eye(size)
    else:
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - lead))
    return mask.astype(x.dtype)


@kernel_rule('Dropout')
def dropout_kernel(ctx, node, k):
    """Train mode: a unit is kept with probability `rate` and scaled by 1/rate, so the second
    moment of an example with itself (same position) grows by 1/rate; other entries keep theirs.
    The cross kernel pairs an example with itself only when x2 is x1."""
    op = node.op
    if op.mode == 'test' or op.rate == 1.0:
        return k
    grow = 1.0 / op.rate - 1.0

    def scaled(x, lead, spatial):
        if x is None:
            return None
        if lead == 1 and spatial != 'FULL':  # every marginal entry pairs an example with itself
            return x * (1.0 + grow)
        return x * (1.0 + grow * _self_pair_mask(x, lead, spatial))

    sp, mg = k.layout.spatial, k.layout.marginal
    if not (k.joint or k.x1_is_x2):  # x1 and x2 are different examples: no self pairs
        return k.replace(cov1=scaled(k.cov1, 1, mg), cov2=scaled(k.cov2, 1, mg))
    return k.replace(nngp=scaled(k.nngp, 2, sp), ntk=scaled(k.ntk, 2, sp),
                     cov1=scaled(k.cov1, 1, mg), cov2=scaled(k.cov2, 1, mg))


@finite_rule('Dropout')
def dropout_apply(op, params, inputs, ctx):
    (x,) = inputs
    if op.mode == 'test' or op.rate == 1.0:
        return x
    rng = ctx.rng
    if rng is None:
        raise InputError('Dropout in train mode needs a random key', path=ctx.path,
                         hint="pass apply_fn(params, x, rng=key), or build it with mode='test'")
    keep = jax.random.bernoulli(rng, op.rate, x.shape)
    return jnp.where(keep, x / op.rate, 0.0)
