"""`LayerNorm`: normalisation of each example over some of its axes."""

from __future__ import annotations

from typing import ClassVar, Literal

import jax.numpy as jnp

from ..covariance import masking
from ..errors import ShapeError
from ..ir.op import NonNegFloat, Op, max_spatial
from ..ir.registry import finite_rule, kernel_rule, register_op
from ..ir.types import TensorType


@register_op
class LayerNorm(Op):
    """Normalises each example over `axis` (which must include the channel axis)."""

    op: Literal['LayerNorm'] = 'LayerNorm'
    axis: int | tuple[int, ...] = -1
    eps: NonNegFloat = 1e-12
    batch_axis: int = 0
    channel_axis: int = -1
    needs_gaussian: ClassVar[bool] = True
    flops_per_entry: ClassVar[float] = 3.0

    def axes(self, t: TensorType) -> tuple[int, ...]:
        axes = (self.axis,) if isinstance(self.axis, int) else self.axis
        return tuple(sorted({a % t.ndim for a in axes}))

    def infer(self, ins, path):
        t = ins[0]
        axes = self.axes(t)
        if t.channel not in axes:
            raise ShapeError(f'LayerNorm axis={self.axis} must include the channel axis '
                             f'({t.channel_axis})', path=path,
                             hint='add the channel axis to `axis`')
        if t.batch in axes:
            raise ShapeError('LayerNorm cannot normalise over the batch axis', path=path)
        return t.model_copy(update=dict(is_fresh=False))

    def marginal_need(self, out, in_type):
        if not in_type.spatial_axes:
            return 'NONE'
        return max_spatial(out, 'DIAG')  # normalisers are means of per-position variances


# ----------------------------------------------------------------------------- rules


@kernel_rule(LayerNorm)
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


@finite_rule(LayerNorm)
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
