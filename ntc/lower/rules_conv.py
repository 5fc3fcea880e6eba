"""Kernel and finite-network rules of Conv and ConvTranspose.

With A the window mean over every filter axis (the diagonal stencil of `stencil.py`), a
convolution maps (Novak et al. 2019; Garriga-Alonso et al. 2019)
    K -> a·A(K) + b,    Θ -> A(c·Θ + d·K) + e,
with (a, b, c, d, e) from `coefficients` (NTK or standard parameterization).  A transposed
convolution is the same window mean over the stride-dilated covariance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..ir.ops import same_pads
from .registry import finite_rule, kernel_rule
from .stencil import diagonal_window_sum, fold_circular, pad_axes, window_sum


def _pads(op, n: int, k: int, s: int) -> tuple[int, int, int]:
    """(low, high, interior) padding of one input axis before a stride-s window of size k."""
    if op.kind == 'ConvTranspose':
        if op.padding == 'CIRCULAR':  # the full VALID output, wrapped by `_wrap` afterwards
            return k - 1, k - 1, s - 1
        if op.padding == 'SAME':
            total = k + s - 2
            lo = k - 1 if s > k - 1 else -(-total // 2)
        else:
            total = k + s - 2 + max(k - s, 0)
            lo = k - 1
        return lo, total - lo, s - 1
    if op.padding == 'VALID':
        return 0, 0, 0
    lo, hi = same_pads(n, k, s)
    return lo, hi, 0


def window_mean(op, x, layout_spatial: str, order, lead: int, in_type):
    """A(x): the conv window mean of covariance `x` over every filter axis."""
    circular = op.padding == 'CIRCULAR' and op.kind == 'Conv'
    wrap = op.padding == 'CIRCULAR' and op.kind == 'ConvTranspose'
    # process the outermost stored axis first (measured faster on CPU)
    dims = sorted(op.axis_map(in_type), key=lambda m: order.index(m[0]))
    for i, _, k, s in dims:
        n = in_type.spatial_shape[i]
        lo, hi, interior = _pads(op, n, k, s)
        stride = 1 if op.kind == 'ConvTranspose' else s
        pos = order.index(i)
        if layout_spatial == 'FULL':
            axes = (lead + 2 * pos, lead + 2 * pos + 1)
            x = diagonal_window_sum(x, axes[0], k, stride, lo, hi, circular, interior)
        else:
            axes = (lead + pos,)
            x = window_sum(x, axes[0], k, stride, lo, hi, circular, interior)
        if wrap:
            for ax in axes:
                x = _wrap(x, ax, n * s)
        x = x / k
    return x


def _wrap(x, axis: int, n_out: int):
    """Wrap a full transposed-conv axis onto the n_out positions of CIRCULAR padding."""
    return fold_circular(x, axis, n_out, (x.shape[axis] - n_out) // 2)


@kernel_rule('Conv', 'ConvTranspose')
def conv_kernel(ctx, node, k):
    op, t = node.op, ctx.in_type(node)
    a, b, c, d, e = op.coefficients(t.channels)
    order = k.layout.axis_order
    lead = 2

    def mean(x, spatial, lead):
        return window_mean(op, x, spatial, order, lead, t)

    if ctx.want_ntk:
        # one stencil pass over K and c·Θ + d·K stacked (A is linear)
        z = d * k.nngp if k.ntk is None else c * k.ntk + d * k.nngp
        both = mean(jnp.stack([k.nngp, z]), k.layout.spatial, lead + 1)
        nngp, ntk = a * both[0] + b, both[1] + e
    else:
        nngp, ntk = a * mean(k.nngp, k.layout.spatial, lead) + b, None

    def marginal(cov):
        return None if cov is None else a * mean(cov, k.layout.marginal, 1) + b

    out_order = op.out_order(order, t, node.ttype)
    return k.replace(nngp=nngp, ntk=ntk, cov1=marginal(k.cov1), cov2=marginal(k.cov2),
                     layout=k.layout.model_copy(update=dict(axis_order=out_order)))


# ----------------------------------------------------------------------------- finite network


def _filter_shape(op, in_channels):
    lhs, rhs, out = op.specs()
    sizes = iter(op.filter_shape)
    return tuple(in_channels if c == 'I' else op.width(op.out_chan) if c == 'O' else next(sizes)
                 for c in rhs)


def _conv_init(key, op, in_types):
    (t,) = in_types
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, _filter_shape(op, t.channels))
    if op.parameterization == 'standard':
        w = w * op.W_std / jnp.sqrt(op.fan_in(t.channels))
    b = None if op.b_std is None else jax.random.normal(k2, (op.width(op.out_chan),))
    if b is not None and op.parameterization == 'standard':
        b = b * op.b_std
    return (w, b)


def circular_pad(op, x):
    """(x, padding) for lax: CIRCULAR becomes an explicit wrap-around pad and VALID."""
    if op.padding != 'CIRCULAR':
        return x, op.padding
    lhs, rhs, _ = op.specs()
    letters = [c for c in rhs if c not in 'IO']
    for c, k, s in zip(letters, op.filter_shape, op.stride_tuple()):
        ax = lhs.index(c)
        lo, hi = same_pads(x.shape[ax], k, s)
        x = pad_axes(x, (ax,), lo, hi, True)
    return x, 'VALID'


@finite_rule('Conv', 'ConvTranspose', init=_conv_init)
def conv_apply(op, params, inputs, ctx):
    (x,) = inputs
    w, b = params
    lhs, rhs, out = op.specs()
    strides = op.stride_tuple()
    if op.kind == 'ConvTranspose' and op.padding == 'CIRCULAR':
        y = lax.conv_transpose(x, w, strides, 'VALID', dimension_numbers=op.specs())
        for c, s in zip([c for c in rhs if c not in 'IO'], strides):
            y = _wrap(y, out.index(c), x.shape[lhs.index(c)] * s)
    elif op.kind == 'ConvTranspose':
        y = lax.conv_transpose(x, w, strides, op.padding, dimension_numbers=op.specs())
    else:
        x, padding = circular_pad(op, x)
        y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=op.specs())
    channel = out.index('C')
    if op.parameterization == 'ntk':
        fan_in = op.fan_in(w.shape[rhs.index('I')])
        y = y * (op.W_std / jnp.sqrt(fan_in))
    if b is not None:
        shape = [1] * y.ndim
        shape[channel] = b.shape[0]
        scale = op.b_std if op.parameterization == 'ntk' else 1.0
        y = y + scale * b.reshape(shape)
    return y

