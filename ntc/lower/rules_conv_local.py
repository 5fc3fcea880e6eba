"""Kernel and finite-network rules of ConvLocal, the unshared (locally connected) convolution.

Every output position has its own weights and bias, so two different output positions are
independent: the output covariance is spatially diagonal (Novak et al. 2019, "Bayesian deep
convolutional networks with many channels are Gaussian processes", sec. 5.1):
    K'[o, o] = a·A(K)[o, o] + b,   Θ'[o, o] = A(c·Θ + d·K)[o, o] + e,   zero for o ≠ o',
where A is the conv window mean over the input's *diagonal* (the DIAG stencil of Conv) and
(a, b, c, d, e) are Conv's coefficients.  The rule therefore reads only the DIAG input and, when
a consumer needs FULL (e.g. a nonlinearity followed by pooling), embeds the diagonal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..ir import ops
from .registry import finite_rule, kernel_rule
from .rules_conv import circular_pad, window_mean


def embed_diag(x, ns: int, lead: int):
    """(…, a, b, …) -> (…, a, a', b, b', …) with zeros off the diagonal a ≠ a'."""
    if x is None:
        return None
    for i in range(ns):
        ax = lead + 2 * i
        n = x.shape[ax]
        eye = jnp.eye(n, dtype=x.dtype).reshape((n, n) + (1,) * (x.ndim - ax - 1))
        x = jnp.expand_dims(x, ax + 1) * eye
    return x


@kernel_rule('ConvLocal')
def conv_local_kernel(ctx, node, k):
    op, t = node.op, ctx.in_type(node)
    a, b, c, d, e = op.coefficients(t.channels)
    order = k.layout.axis_order
    want = node.cov

    shared = ops.Conv(**op.args())  # same window (and CIRCULAR padding) as a shared conv

    def mean(x, lead):
        return window_mean(shared, x, 'DIAG', order, lead, t)

    nngp = a * mean(k.nngp, 2) + b
    ntk = None
    if ctx.want_ntk:
        z = d * k.nngp if k.ntk is None else c * k.ntk + d * k.nngp
        ntk = mean(z, 2) + e

    def marginal(cov):
        return None if cov is None else a * mean(cov, 1) + b

    cov1, cov2 = marginal(k.cov1), marginal(k.cov2)
    ns = len(order)
    if want.spatial == 'FULL':
        nngp, ntk = embed_diag(nngp, ns, 2), embed_diag(ntk, ns, 2)
    if want.marginal == 'FULL':
        cov1, cov2 = embed_diag(cov1, ns, 1), embed_diag(cov2, ns, 1)
    out_order = op.out_order(order, t, node.ttype)
    spatial = 'FULL' if want.spatial == 'FULL' else 'DIAG'
    marg = None if k.layout.marginal is None else (
        'FULL' if want.marginal == 'FULL' else 'DIAG')
    layout = k.layout.model_copy(update=dict(spatial=spatial, marginal=marg,
                                             axis_order=out_order))
    return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, layout=layout)


# ----------------------------------------------------------------------------- finite network


def _shapes(op, t, out_t):
    """(weight shape, bias shape) of lax.conv_general_dilated_local in the op's specs."""
    lhs, rhs, out = op.specs()
    fan_in = op.fan_in(t.channels)
    width = op.width(op.out_chan)
    w = tuple(width if ch == 'O' else fan_in if ch == 'I' else out_t.shape[out.index(ch)]
              for ch in rhs)
    bias = tuple(1 if ch == 'N' else width if ch == 'C' else out_t.shape[i]
                 for i, ch in enumerate(out))
    return w, bias


def _init(key, op, in_types):
    (t,) = in_types
    out_t = op.infer([t], '')
    w_shape, b_shape = _shapes(op, t, out_t)
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, w_shape)
    if op.parameterization == 'standard':
        w = w * op.W_std / jnp.sqrt(op.fan_in(t.channels))
    b = None if op.b_std is None else jax.random.normal(k2, b_shape)
    if b is not None and op.parameterization == 'standard':
        b = b * op.b_std
    return (w, b)


@finite_rule('ConvLocal', init=_init)
def conv_local_apply(op, params, inputs, ctx):
    (x,) = inputs
    w, b = params
    lhs, rhs, out = op.specs()
    strides = op.stride_tuple()
    x, padding = circular_pad(op, x)
    y = lax.conv_general_dilated_local(x, w, strides, padding, op.filter_shape,
                                       dimension_numbers=op.specs(),
                                       precision=lax.Precision.HIGHEST)
    if op.parameterization == 'ntk':
        y = y * (op.W_std / jnp.sqrt(op.fan_in(x.shape[lhs.index('C')])))
    if b is not None:
        y = y + (op.b_std if op.parameterization == 'ntk' else 1.0) * b
    return y
