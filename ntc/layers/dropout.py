"""`Dropout` (keep probability `rate`; the identity in test mode)."""

from __future__ import annotations

from typing import Annotated, Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from ..errors import InputError
from ..ir.op import Op
from ..ir.registry import finite_rule, kernel_rule, register_op


@register_op
class Dropout(Op):
    """Dropout with keep probability `rate` (NT's convention); identity when mode='test'."""

    op: Literal['Dropout'] = 'Dropout'
    rate: Annotated[float, Field(gt=0, le=1)]
    mode: Literal['train', 'test'] = 'train'


# ----------------------------------------------------------------------------- rules


def _self_pair_mask(x, lead: int, spatial: str):
    """1 on the entries of covariance `x` that pair an example with itself at one position."""
    mask = jnp.eye(x.shape[0]) if lead == 2 else jnp.ones(x.shape[:1])
    if spatial == 'FULL':
        for size in x.shape[lead::2]:
            mask = mask[..., None, None] * jnp.eye(size).reshape((1,) * mask.ndim + (size, size))
    else:
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - lead))
    return mask.astype(x.dtype)


@kernel_rule(Dropout)
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


@finite_rule(Dropout)
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
