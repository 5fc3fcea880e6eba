"""Pooling: windowed `AvgPool`/`SumPool` and global `GlobalAvgPool`/`GlobalSumPool`.

Pooling is linear, so each covariance pair of axes (a, a') is pooled on both sides:
    K'[o, o'] = Σ_δ Σ_δ' K[o·s + δ - p, o'·s + δ' - p] / (n_o · n_o'),
a box window, applied separably (first a, then a').  Global pooling averages (or sums) over
every pair of positions (Flatten, in `linear`, averages the variances: the diagonal).
"""

from __future__ import annotations

import math
from typing import Literal

import jax.numpy as jnp
from jax import lax

from ..covariance import masking
from ..covariance.kernel import reduce_spatial
from ..covariance.stencil import edge_counts, pad_axes, window_sum
from ..errors import ShapeError
from ..ir.op import Op, PosInt
from ..ir.registry import finite_rule, kernel_rule, mask_rule, register_op
from ..ir.types import TensorType
from .windows import _lo_pad, _WindowBase, out_size, same_pads, window_mask


class _PoolBase(_WindowBase):
    """Pooling over the spatial axes (in tensor order)."""

    window_shape: tuple[PosInt, ...]
    batch_axis: int = 0
    channel_axis: int = -1

    def window(self):
        return self.window_shape

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def infer(self, ins, path):
        t = ins[0]
        if len(self.window_shape) != len(t.spatial_axes):
            raise ShapeError(f'a {len(self.window_shape)}-d window for an input with '
                             f'{len(t.spatial_axes)} spatial axes {t.describe()}', path=path,
                             hint='give one window size per spatial axis')
        self.check_window(t.spatial_shape, path, 'window')
        shape = list(t.shape)
        for ax, k, s in zip(t.spatial_axes, self.window_shape, self.stride_tuple()):
            shape[ax] = out_size(t.shape[ax], k, s, self.padding)
        return t.model_copy(update=dict(shape=tuple(shape)))

    def spatial_need(self, out, in_type):
        return 'FULL'  # a window mixes neighbouring positions

    def marginal_need(self, out, in_type):
        return None if out is None else 'FULL'

    def entry_flops(self, in_types, out_type):
        return 4.0 * sum(self.window_shape)


@register_op
class AvgPool(_PoolBase):
    """Average pooling; `normalize_edges` divides by the number of in-bounds positions."""

    op: Literal['AvgPool'] = 'AvgPool'
    normalize_edges: bool = False


@register_op
class SumPool(_PoolBase):
    op: Literal['SumPool'] = 'SumPool'


class _GlobalPoolBase(Op):
    batch_axis: int = 0
    channel_axis: int = -1

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def infer(self, ins, path):
        """(N, C); an input without spatial axes passes through, as in NT (a mean over none)."""
        t = ins[0]
        return TensorType(shape=(None, t.channels), batch_axis=0, channel_axis=1,
                          is_gaussian=t.is_gaussian, is_fresh=t.is_fresh)

    def spatial_need(self, out, in_type):
        return 'FULL' if in_type.spatial_axes else 'NONE'

    def marginal_need(self, out, in_type):
        return None if out is None else self.spatial_need(out, in_type)


@register_op
class GlobalAvgPool(_GlobalPoolBase):
    op: Literal['GlobalAvgPool'] = 'GlobalAvgPool'


@register_op
class GlobalSumPool(_GlobalPoolBase):
    op: Literal['GlobalSumPool'] = 'GlobalSumPool'


# ----------------------------------------------------------------------------- rules


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
                x = x / norm.reshape((1,) * ax + norm.shape + (1,) * (x.ndim - ax - 2))
            else:
                x = x / (k * k)
    return x


@kernel_rule(AvgPool, SumPool)
def pool_kernel(ctx, node, k):
    op, t = node.op, ctx.in_type(node)
    order = k.layout.axis_order

    def pool(x, lead):
        return None if x is None else pool_full(op, x, order, lead, t)

    return k.replace(nngp=pool(k.nngp, 2), ntk=pool(k.ntk, 2), cov1=pool(k.cov1, 1),
                     cov2=pool(k.cov2, 1))


@kernel_rule(GlobalAvgPool)
def global_avg_pool_kernel(ctx, node, k):
    """K' = mean over all pairs of positions (needs FULL input); with masked inputs, the mean
    over pairs of unmasked positions."""
    m1, m2 = masking.input_masks(ctx, node)
    if m1 is None and m2 is None:
        return reduce_spatial(k, jnp.mean)
    out = reduce_spatial(k, jnp.sum)
    ma, mb = masking.side_masks(k, m1, m2)
    na, nb = masking.unmasked_counts(ma), masking.unmasked_counts(mb)
    cross = (na[:, None] * nb[None, :]).astype(out.nngp.dtype)

    def marg(x, m):
        return None if x is None else x / masking.unmasked_counts(m).astype(x.dtype) ** 2

    return out.replace(nngp=out.nngp / cross,
                       ntk=None if out.ntk is None else out.ntk / cross,
                       cov1=marg(out.cov1, m1), cov2=marg(out.cov2, m2))


@kernel_rule(GlobalSumPool)
def global_sum_pool_kernel(ctx, node, k):
    """K' = sum over all pairs of positions (needs FULL input)."""
    return reduce_spatial(k, jnp.sum)


@finite_rule(AvgPool, SumPool)
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


@finite_rule(GlobalAvgPool)
def global_avg_pool_apply(op, params, inputs, ctx):
    (x,) = inputs
    if getattr(ctx, 'mask', None) is None:
        y = jnp.mean(x, axis=_spatial_positions(op, x))
    else:  # mean over unmasked positions (masked ones are zero)
        y = jnp.sum(x, axis=_spatial_positions(op, x))
        y = y / masking.unmasked_counts(ctx.mask).astype(y.dtype)[:, None]
    return y if op.batch_axis % x.ndim < op.channel_axis % x.ndim else y.T


@finite_rule(GlobalSumPool)
def global_sum_pool_apply(op, params, inputs, ctx):
    (x,) = inputs
    y = jnp.sum(x, axis=_spatial_positions(op, x))
    return y if op.batch_axis % x.ndim < op.channel_axis % x.ndim else y.T


# ----------------------------------------------------------------------------- masks


@mask_rule(AvgPool, SumPool)
def _pool_mask(op, masks, in_types, out_type):
    (m,), (t,) = masks, in_types
    return window_mask(m, t, out_type, [
        (i, i, k, s, _lo_pad(op, t.spatial_shape[i], k, s))
        for i, (k, s) in enumerate(zip(op.window_shape, op.stride_tuple()))])


@mask_rule(GlobalAvgPool, GlobalSumPool)
def _global_mask(op, masks, in_types, out_type):
    """An example is masked when all its positions are."""
    (m,) = masks
    return jnp.all(m.reshape(m.shape[0], -1), axis=1)
