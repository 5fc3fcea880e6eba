"""Kernel and finite-network rules of pooling, Flatten, spatial concatenation and Transpose.

Pooling is linear, so each covariance pair of axes (a, a') is pooled on both sides:
    K'[o, o'] = Σ_δ Σ_δ' K[o·s + δ - p, o'·s + δ' - p] / (n_o · n_o'),
a box window, applied separably (first a, then a').  Global pooling averages (or sums) over
every pair of positions; Flatten averages the variances of all positions (the diagonal).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from ..ir.ops import same_pads
from . import masking
from .registry import finite_rule, kernel_rule
from .stencil import edge_counts, pad_axes, window_sum


def _pool_axis_params(op, n, k, s):
    if op.padding == 'VALID':
        return 0, 0
    return same_pads(n, k, s)


def pool_full(op, x, order, lead: int, in_type):
    """Pool a FULL covariance (pairs adjacent, stored in `order`) on both sides of each pair."""
    circular = op.padding == 'CIRCULAR'
    for i, (n, k, s) in enumerate(zip(in_type.spatial_shape, op.window_shape,
                                      op.stride_tuple())):
        lo, hi = _pool_axis_params(op, n, k, s)
        ax = lead + 2 * order.index(i)
        x = window_sum(x, ax, k, s, lo, hi, circular)
        x = window_sum(x, ax + 1, k, s, lo, hi, circular)
        if op.kind == 'AvgPool':
            if op.normalize_edges and op.padding == 'SAME':
                cnt = edge_counts(n, k, s, lo, hi, x.dtype)
                norm = cnt[:, None] * cnt[None, :]
                x = x / norm.reshape(norm.shape + (1,) * (x.ndim - ax - 2))
            else:
                x = x / (k * k)
    return x


@kernel_rule('AvgPool', 'SumPool')
def pool_kernel(ctx, node, k):
    op, t = node.op, ctx.in_type(node)
    order = k.layout.axis_order

    def pool(x, lead):
        return None if x is None else pool_full(op, x, order, lead, t)

    return k.replace(nngp=pool(k.nngp, 2), ntk=pool(k.ntk, 2), cov1=pool(k.cov1, 1),
                     cov2=pool(k.cov2, 1))


def _reduce_spatial(k, fn):
    lay = k.layout.model_copy(update=dict(spatial='NONE', axis_order=(),
                                          marginal=None if k.layout.marginal is None else 'NONE'))

    def red(x, lead):
        return None if x is None else fn(x, axis=tuple(range(lead, x.ndim)))

    return k.replace(nngp=red(k.nngp, 2), ntk=red(k.ntk, 2), cov1=red(k.cov1, 1),
                     cov2=red(k.cov2, 1), layout=lay)


@kernel_rule('GlobalAvgPool')
def global_avg_pool_kernel(ctx, node, k):
    """K' = mean over all pairs of positions (needs FULL input); with masked inputs, the mean
    over pairs of unmasked positions."""
    m1, m2 = masking.input_masks(ctx, node)
    if m1 is None and m2 is None:
        return _reduce_spatial(k, jnp.mean)
    out = _reduce_spatial(k, jnp.sum)
    ma, mb = masking.side_masks(k, m1, m2)
    na, nb = masking.unmasked_counts(ma), masking.unmasked_counts(mb)
    cross = (na[:, None] * nb[None, :]).astype(out.nngp.dtype)

    def marg(x, m):
        return None if x is None else x / masking.unmasked_counts(m).astype(x.dtype) ** 2

    return out.replace(nngp=out.nngp / cross,
                       ntk=None if out.ntk is None else out.ntk / cross,
                       cov1=marg(out.cov1, m1), cov2=marg(out.cov2, m2))


@kernel_rule('GlobalSumPool')
def global_sum_pool_kernel(ctx, node, k):
    """K' = sum over all pairs of positions (needs FULL input)."""
    return _reduce_spatial(k, jnp.sum)


@kernel_rule('Flatten')
def flatten_kernel(ctx, node, k):
    """K' = mean over positions of the diagonal K[s, s] (needs DIAG input)."""
    return _reduce_spatial(k, jnp.mean)


@kernel_rule('Transpose')
def transpose_kernel(ctx, node, k):
    """Permute the stored spatial axes to `order` (pairs move together when FULL)."""
    new = node.op.order
    old = k.layout.axis_order
    src = [old.index(i) for i in new]

    def perm(x, lead, spatial):
        if x is None:
            return None
        width = 2 if spatial == 'FULL' else 1
        axes = list(range(lead))
        for p in src:
            axes += [lead + width * p + w for w in range(width)]
        return jnp.transpose(x, axes)

    sp, mg = k.layout.spatial, k.layout.marginal
    return k.replace(nngp=perm(k.nngp, 2, sp), ntk=perm(k.ntk, 2, sp),
                     cov1=perm(k.cov1, 1, mg), cov2=perm(k.cov2, 1, mg),
                     layout=k.layout.model_copy(update=dict(axis_order=new)))


def concat_spatial_kernel(ctx, node, *ks):
    """Concatenation along a spatial axis of uncorrelated branches: DIAG covariances simply
    concatenate; FULL ones become block-diagonal along the concatenated pair of axes."""
    types = ctx.in_types(node)
    t0 = types[0]
    axis = node.op.axis % t0.ndim
    i = t0.spatial_axes.index(axis)
    lay = ks[0].layout
    p = lay.axis_order.index(i)
    sizes = [t.shape[axis] for t in types]
    total = sum(sizes)

    def cat(xs, lead, spatial):
        if any(x is None for x in xs):
            return None
        if spatial != 'FULL':
            return jnp.concatenate(xs, axis=lead + p)
        ax, out, offset = lead + 2 * p, 0, 0
        for x, n in zip(xs, sizes):
            out = out + pad_axes(x, (ax, ax + 1), offset, total - offset - n, False)
            offset += n
        return out

    ntk = None
    if any(k.ntk is not None for k in ks):  # a missing NTK is zero (no parameters yet)
        ntk = cat([jnp.zeros_like(k.nngp) if k.ntk is None else k.ntk for k in ks], 2,
                  lay.spatial)
    return ks[0].replace(nngp=cat([k.nngp for k in ks], 2, lay.spatial), ntk=ntk,
                         cov1=cat([k.cov1 for k in ks], 1, lay.marginal),
                         cov2=cat([k.cov2 for k in ks], 1, lay.marginal))


# ----------------------------------------------------------------------------- finite network


@finite_rule('AvgPool', 'SumPool')
def pool_apply(op, params, inputs, ctx):
    (x,) = inputs
    t_axes = [i for i in range(x.ndim) if i not in (op.batch_axis % x.ndim,
                                                    op.channel_axis % x.ndim)]
    window = [1] * x.ndim
    strides = [1] * x.ndim
    pads = [(0, 0)] * x.ndim
    for ax, k, s in zip(t_axes, op.window_shape, op.stride_tuple()):
        window[ax], strides[ax] = k, s
        if op.padding != 'VALID':
            pads[ax] = same_pads(x.shape[ax], k, s)
    if op.padding == 'CIRCULAR':
        for ax in t_axes:
            x = pad_axes(x, (ax,), pads[ax][0], pads[ax][1], True)
        pads = [(0, 0)] * x.ndim
    y = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
    if op.kind == 'SumPool':
        return y
    if op.normalize_edges and op.padding == 'SAME':
        ones = jnp.ones(x.shape, x.dtype)
        return y / lax.reduce_window(ones, 0.0, lax.add, window, strides, pads)
    return y / math.prod(op.window_shape)


def _spatial_positions(op, x):
    b, c = op.batch_axis % x.ndim, op.channel_axis % x.ndim
    return tuple(i for i in range(x.ndim) if i not in (b, c))


@finite_rule('GlobalAvgPool')
def global_avg_pool_apply(op, params, inputs, ctx):
    (x,) = inputs
    if getattr(ctx, 'mask', None) is None:
        y = jnp.mean(x, axis=_spatial_positions(op, x))
    else:  # mean over unmasked positions (masked ones are zero)
        y = jnp.sum(x, axis=_spatial_positions(op, x))
        y = y / masking.unmasked_counts(ctx.mask).astype(y.dtype)[:, None]
    return y if op.batch_axis % x.ndim < op.channel_axis % x.ndim else y.T


@finite_rule('GlobalSumPool')
def global_sum_pool_apply(op, params, inputs, ctx):
    (x,) = inputs
    y = jnp.sum(x, axis=_spatial_positions(op, x))
    return y if op.batch_axis % x.ndim < op.channel_axis % x.ndim else y.T


@finite_rule('Flatten')
def flatten_apply(op, params, inputs, ctx):
    (x,) = inputs
    y = jnp.moveaxis(x, op.batch_axis, 0).reshape(x.shape[op.batch_axis], -1)
    return y if op.batch_axis_out % 2 == 0 else y.T


@finite_rule('Transpose')
def transpose_apply(op, params, inputs, ctx):
    return inputs[0]
