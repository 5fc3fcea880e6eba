"""Kernel and finite-network rules of DotGeneral, Index and ImageResize, and `map_covariance`,
the generic kernel of a linear map of the non-channel axes.

If y = M(x) acts on the non-channel axes of x and identically on every channel (a constant
dot_general, a resize, a graph aggregation), then for channel-iid Gaussian x
    Cov(y1[o], y2[o']) = Σ_{s,s'} M1[o, s]·K[s, s']·M2[o', s'],
and the same for the NTK (these layers have no parameters).  `map_covariance` computes it by
applying the finite map itself to each side of the stored covariance in turn: the other side's
axes ride along as extra "channels".  So the kernel rule reuses the exact finite-network code,
and any layer of this kind is one finite function away from having a kernel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from ..ir.types import TensorType
from .registry import finite_rule, kernel_rule


def _act_apply(z, d_in: int, fn, tin: TensorType, tout: TensorType):
    """z: (B, S_1..S_d, *rest) in canonical form -> (B, S'_1..S'_e, *rest) by fn, which maps
    activation-form arrays of type `tin` (rest flattened into its channel axis) to `tout`."""
    rest = z.shape[1 + d_in:]
    y = z.reshape(z.shape[:1 + d_in] + (math.prod(rest),))
    y = jnp.moveaxis(y, (0, d_in + 1), (tin.batch, tin.channel))
    y = fn(y)
    y = jnp.moveaxis(y, (tout.batch, tout.channel), (0, y.ndim - 1))
    return y.reshape(y.shape[:-1] + rest)


def map_covariance(x, lead: int, spatial: str, order, tin: TensorType, tout: TensorType,
                   fn1, fn2):
    """Covariance of (fn1(u), fn2(v)) given that of (u, v): `x` is stored with `lead` batch
    axes (2: cross or joint, 1: marginal) and spatial layout FULL (pairs adjacent, in storage
    `order`) or NONE.  The result is FULL (or NONE) in tensor order."""
    if x is None:
        return None
    d, e = len(order), len(tout.spatial_axes)
    if spatial not in ('FULL', 'NONE'):
        raise AssertionError(f'map_covariance needs a FULL covariance, got {spatial}')
    left = [lead + 2 * order.index(i) for i in range(d)]
    right = [a + 1 for a in left]
    x = jnp.transpose(x, list(range(lead)) + left + right)        # (b.., L.., R..)
    if lead == 2:
        x = jnp.moveaxis(x, 1, 1 + d)                               # (b1, L, b2, R)
        x = _act_apply(x, d, fn1, tin, tout)                        # (b1, L', b2, R)
        x = jnp.transpose(x, [1 + e] + [2 + e + j for j in range(d)] + [0]
                          + [1 + j for j in range(e)])              # (b2, R, b1, L')
        x = _act_apply(x, d, fn2, tin, tout)                        # (b2, R', b1, L')
        return jnp.transpose(x, [1 + e, 0] + [a for j in range(e) for a in (2 + e + j, 1 + j)])
    x = _act_apply(x, d, fn1, tin, tout)                            # (b, L', R)
    x = jnp.transpose(x, [0] + [1 + e + j for j in range(d)] + [1 + j for j in range(e)])
    x = _act_apply(x, d, fn2, tin, tout)                            # (b, R', L')
    return jnp.transpose(x, [0] + [a for j in range(e) for a in (1 + e + j, 1 + j)])


def map_kernel(k, tin: TensorType, tout: TensorType, fns):
    """Apply a linear map to every covariance of Kernel `k` (FULL or NONE layout).  `fns` is
    `(f1, f2, f_joint)`: the map for examples of x1, of x2, and of the joint batch [x1; x2]
    (the reference layout); a map that does not depend on the example can be given thrice."""
    f1, f2, fj = fns
    lay = k.layout
    order = lay.axis_order
    sp_out = 'FULL' if tout.spatial_axes else 'NONE'

    def cov(x, lead, spatial, a, b):
        return map_covariance(x, lead, spatial, order, tin, tout, a, b)

    if k.joint:
        nngp = cov(k.nngp, 2, lay.spatial, fj, fj)
        ntk = cov(k.ntk, 2, lay.spatial, fj, fj)
        cov1 = cov2 = None
    else:
        nngp = cov(k.nngp, 2, lay.spatial, f1, f2)
        ntk = cov(k.ntk, 2, lay.spatial, f1, f2)
        cov1 = cov(k.cov1, 1, lay.marginal, f1, f1)
        cov2 = cov(k.cov2, 1, lay.marginal, f2, f2)
    marginal = None if lay.marginal is None else sp_out
    layout = lay.model_copy(update=dict(spatial=sp_out, marginal=marginal,
                                        axis_order=tuple(range(len(tout.spatial_axes)))))
    return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, layout=layout)


# ----------------------------------------------------------------------------- DotGeneral


@kernel_rule('DotGeneral')
def dot_general_kernel(ctx, node, k):
    """A scalar constant c rescales every covariance by c²; otherwise K -> M K Mᵀ."""
    op, tin = node.op, ctx.in_type(node)
    c = op.constant()
    if c is None:
        return k
    if c.ndim == 0:
        s = float(c) ** 2
        return k.replace(nngp=k.nngp * s, ntk=None if k.ntk is None else k.ntk * s,
                         cov1=None if k.cov1 is None else k.cov1 * s,
                         cov2=None if k.cov2 is None else k.cov2 * s)

    def fn(y):
        return op.apply_to(y, precision=lax.Precision.HIGHEST)

    return map_kernel(k, tin, node.ttype, (fn, fn, fn))


@finite_rule('DotGeneral')
def dot_general_apply(op, params, inputs, ctx):
    return op.apply_to(inputs[0])


# ----------------------------------------------------------------------------- Index


@kernel_rule('Index')
def index_kernel(ctx, node, k):
    """K'[n1, n2, o, o'] = K[sel(n1), sel(n2), sel(o), sel(o')], axis by axis (local, so DIAG
    layouts are indexed directly); an integer index drops the axis pair."""
    op, t = node.op, ctx.in_type(node)
    per = op.per_axis(t.ndim)
    lay = k.layout
    order = lay.axis_order

    def index(x, lead, spatial, batch_sel):
        if x is None:
            return None
        ix = [slice(None)] * x.ndim
        for b in range(lead):
            ix[b] = batch_sel[b]
        width = 2 if spatial == 'FULL' else 1
        for p, i in enumerate(order):
            sel = per[t.spatial_axes[i]]
            for w in range(width):
                ix[lead + width * p + w] = sel
        return x[tuple(ix)]

    bsel = per[t.batch]
    out_order = op.out_order(order, t, node.ttype)
    layout = lay.model_copy(update=dict(axis_order=out_order))
    if not out_order:
        layout = layout.model_copy(update=dict(
            spatial='NONE', marginal=None if lay.marginal is None else 'NONE'))
    if k.joint:
        n = k.nngp.shape[0]
        n1 = n if k.x1_is_x2 else k.n1
        rows = jnp.arange(n1)[bsel]
        if not k.x1_is_x2:
            rows = jnp.concatenate([rows, n1 + jnp.arange(n - n1)[bsel]])
        sel = (rows[:, None], rows[None, :])
        nngp = index(k.nngp, 2, lay.spatial, sel)
        ntk = index(k.ntk, 2, lay.spatial, sel)
        return k.replace(nngp=nngp, ntk=ntk, layout=layout,
                         n1=len(range(*bsel.indices(n1))))
    return k.replace(nngp=index(k.nngp, 2, lay.spatial, (bsel, bsel)),
                     ntk=index(k.ntk, 2, lay.spatial, (bsel, bsel)),
                     cov1=index(k.cov1, 1, lay.marginal, (bsel,)),
                     cov2=index(k.cov2, 1, lay.marginal, (bsel,)), layout=layout)


@finite_rule('Index')
def index_apply(op, params, inputs, ctx):
    return inputs[0][op.python_index()]


# ----------------------------------------------------------------------------- ImageResize


def resize(op, y, spatial_only: TensorType | None = None):
    """jax.image.resize of `y` to the op's shape (-1 keeps an axis).  With `spatial_only`
    (the activation type) the batch and channel axes of `y` keep their sizes whatever they
    are (the kernel rule stores other axes there)."""
    shape = list(op.out_shape(y.shape))
    if spatial_only is not None:
        for a in (spatial_only.batch, spatial_only.channel):
            shape[a] = y.shape[a]
    prec = None if op.precision is None else lax.Precision[op.precision]
    return jax.image.resize(y, tuple(shape), method=op.method, antialias=op.antialias,
                            precision=prec)


@kernel_rule('ImageResize')
def image_resize_kernel(ctx, node, k):
    """The resize R applied to both position indices: K -> R K Rᵀ (exact: resizing is
    linear and acts on every channel alike).  The check pass has rejected resizes of the
    channel axis and methods without a kernel (`ImageResize.no_kernel`)."""
    op, tin = node.op, ctx.in_type(node)
    if not op.resized(tin):
        return k

    def fn(y):
        return resize(op, y, tin)

    return map_kernel(k, tin, node.ttype, (fn, fn, fn))


@finite_rule('ImageResize')
def image_resize_apply(op, params, inputs, ctx):
    return resize(op, inputs[0])
