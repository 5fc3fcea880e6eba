"""Structural layers: the input, the identity, fan-out and the fan-ins (sum, product,
concatenation), with their kernel, finite-network and mask rules.

The check pass guarantees that the branches of a sum, a product or a concatenation along space
or the batch are mutually uncorrelated (all but at most one start with their own random affine
layer), which is what makes these rules exact: the kernel of a sum is the sum of the kernels,
and the kernel of a product of independent branches is the product of their kernels.
"""

from __future__ import annotations

import functools
import operator
from typing import ClassVar, Literal

import jax.numpy as jnp

from ..covariance.stencil import pad_axes
from ..errors import NtcError, ShapeError
from ..ir.op import Op, PosInt
from ..ir.registry import finite_rule, kernel_rule, mask_rule, register_op
from ..ir.types import TensorType


@register_op
class Input(Op):
    """The network's input value (the data)."""

    op: Literal['Input'] = 'Input'
    in_specs: ClassVar[bool] = False
    arity: ClassVar[int | None] = 0


@register_op
class Identity(Op):
    op: Literal['Identity'] = 'Identity'
    flops_per_entry: ClassVar[float] = 0.0

    def is_identity(self) -> bool:
        return True

    def infer(self, ins, path):
        return ins[0]


@register_op
class FanOut(Op):
    """Copies its input `num` times (a structural op of the builder tree; in the graph a fan-out
    is simply a value with several consumers)."""

    op: Literal['FanOut'] = 'FanOut'
    num: PosInt


@register_op
class FanInSum(Op):
    """Sum of the branches.  Exact for branches whose mutual covariances vanish."""

    op: Literal['FanInSum'] = 'FanInSum'
    arity: ClassVar[int | None] = None

    def branch_need(self, out):
        return 'uncorrelated'  # K of a sum = Σ K_i + the cross terms, which must vanish

    def infer(self, ins, path):
        _same_shapes(ins, path, 'FanInSum')
        return ins[0].model_copy(update=dict(
            is_gaussian=all(t.is_gaussian for t in ins),
            is_fresh=all(t.is_fresh for t in ins)))


@register_op
class FanInProd(Op):
    """Elementwise product of the branches (kernel = product of the branch kernels)."""

    op: Literal['FanInProd'] = 'FanInProd'
    arity: ClassVar[int | None] = None

    def branch_need(self, out):
        return 'independent'  # E[Π a_i a_i'] = Π E[a_i a_i'] needs independent branches

    def infer(self, ins, path):
        _same_shapes(ins, path, 'FanInProd')
        return ins[0].model_copy(update=dict(is_gaussian=False, is_fresh=False))


@register_op
class FanInConcat(Op):
    """Concatenation of the branches along `axis`: the channel axis, a spatial axis, or the
    batch axis (the output's examples are branch 0's, then branch 1's, ...)."""

    op: Literal['FanInConcat'] = 'FanInConcat'
    arity: ClassVar[int | None] = None
    axis: int = -1

    def branch_need(self, out):
        # along channels the kernel is the channel-weighted mean, whatever the correlations;
        # along space or the batch the cross blocks between branches are taken to be zero
        return None if self.axis % out.ndim == out.channel else 'uncorrelated'

    def batch_size(self, in_types, sizes):
        return sum(sizes) if self.axis % in_types[0].ndim == in_types[0].batch else sizes[0]

    def moves_examples(self, in_types):
        return self.axis % in_types[0].ndim == in_types[0].batch

    def infer(self, ins, path):
        t0 = ins[0]
        if not -t0.ndim <= self.axis < t0.ndim:
            raise ShapeError(f'axis={self.axis} is out of range for branches of rank {t0.ndim} '
                             f'{t0.describe()}', path=path,
                             hint=f'choose an axis in [{-t0.ndim}, {t0.ndim - 1}] other than '
                             f'the batch axis ({t0.batch})')
        axis = self.axis % t0.ndim
        for i, t in enumerate(ins[1:], 1):
            if t.ndim != t0.ndim or any(a != b for j, (a, b) in enumerate(zip(t.shape, t0.shape))
                                        if j not in (axis, t0.batch)):
                raise ShapeError(f'branch {i} has shape {t.describe()}, incompatible with branch 0 '
                                 f'{t0.describe()} for concatenation along axis {self.axis}',
                                 path=path)
        shape = list(t0.shape)
        sizes = [t.shape[axis] for t in ins]
        shape[axis] = None if None in sizes else sum(sizes)  # the batch: any size
        return t0.model_copy(update=dict(
            shape=tuple(shape), is_gaussian=all(t.is_gaussian for t in ins),
            is_fresh=all(t.is_fresh for t in ins)))


def _same_shapes(ins: list[TensorType], path: str, what: str) -> None:
    for i, t in enumerate(ins[1:], 1):
        if t.shape != ins[0].shape:
            raise ShapeError(f'{what} needs branches of one shape; branch {i} is {t.describe()}, '
                             f'branch 0 is {ins[0].describe()}', path=path)


# ----------------------------------------------------------------------------- rules


def _sum(xs):
    return functools.reduce(operator.add, xs)


def _prod(xs):
    return functools.reduce(operator.mul, xs)


def _field(ks, name):
    vals = [getattr(k, name) for k in ks]
    return None if any(v is None for v in vals) else vals


def _ntk_terms(ks, weights=None):
    """Weighted NTKs of the branches; a missing NTK is zero (a branch with no parameters)."""
    weights = weights or [1.0] * len(ks)
    terms = [w * k.ntk for w, k in zip(weights, ks) if k.ntk is not None]
    return _sum(terms) if terms else None


def _combine(ks, fn, ntk):
    out = ks[0]
    fields = {}
    for name in ('nngp', 'cov1', 'cov2'):
        vals = _field(ks, name)
        fields[name] = None if vals is None else fn(vals)
    return out.replace(**fields, ntk=ntk)


@kernel_rule(FanInSum)
def fan_in_sum_kernel(ctx, node, *ks):
    return _combine(ks, _sum, _ntk_terms(ks))


@kernel_rule(FanInProd)
def fan_in_prod_kernel(ctx, node, *ks):
    # Θ of a product: Σ_i Θ_i Π_{j≠i} K_j (product rule on the parameter gradients)
    others = [_prod([q.nngp for j, q in enumerate(ks) if j != i]) for i in range(len(ks))]
    return _combine(ks, _prod, _ntk_terms(ks, others))


@kernel_rule(FanInConcat)
def fan_in_concat_kernel(ctx, node, *ks):
    types = ctx.in_types(node)
    axis = node.op.axis % types[0].ndim
    if axis == types[0].batch:
        return concat_batch_kernel(ctx, node, *ks)
    if axis != types[0].channel:
        return concat_spatial_kernel(ctx, node, *ks)
    # channels of independent branches: the kernel is the channel-weighted mean
    weights = [t.channels / sum(t.channels for t in types) for t in types]

    def mean(vals):
        return _sum(w * v for w, v in zip(weights, vals))

    return _combine(ks, mean, _ntk_terms(ks, weights))


@finite_rule(FanInSum)
def fan_in_sum_apply(op, params, inputs, ctx):
    return _sum(inputs)


@finite_rule(FanInProd)
def fan_in_prod_apply(op, params, inputs, ctx):
    return _prod(inputs)


@finite_rule(FanInConcat)
def fan_in_concat_apply(op, params, inputs, ctx):
    return jnp.concatenate(inputs, axis=op.axis)


@kernel_rule(Identity)
def identity_kernel(ctx, node, k):
    return k


@finite_rule(Identity)
def identity_apply(op, params, inputs, ctx):
    return inputs[0]


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


def _block_diagonal(xs, rows, cols):
    """The array whose (rows[i], cols[i]) block (index arrays along its two leading axes) is
    xs[i], zero elsewhere."""
    n, m = sum(len(r) for r in rows), sum(len(c) for c in cols)
    out = jnp.zeros((n, m) + xs[0].shape[2:], xs[0].dtype)
    for x, r, c in zip(xs, rows, cols):
        out = out.at[r[:, None], c[None, :]].set(x)
    return out


def _positions(sizes, start=0):
    """Index arrays of consecutive runs of `sizes` entries, from `start`."""
    out, offset = [], start
    for n in sizes:
        out.append(jnp.arange(offset, offset + n))
        offset += n
    return out


def concat_batch_kernel(ctx, node, *ks):
    """Concatenation along the batch axis of uncorrelated branches: the examples of x1 become
    branch 0's outputs on x1, then branch 1's, ... (x2 alike), so the kernel is block-diagonal,
    K[(i, n), (j, m)] = δ_ij K_i[n, m]: the cross blocks are E[a_i(x) a_j(x')] = 0 (the check
    pass has proved the branches uncorrelated).  The marginals concatenate.  In the joint
    layout the batch [x1; x2] becomes [a_0(x1); a_1(x1); ...; a_0(x2); a_1(x2); ...]."""
    k0 = ks[0]
    ntks = None
    if any(k.ntk is not None for k in ks):  # a missing NTK is zero (no parameters yet)
        ntks = [jnp.zeros_like(k.nngp) if k.ntk is None else k.ntk for k in ks]
    if k0.joint:
        n1s = [k.nngp.shape[0] if k.x1_is_x2 else k.n1 for k in ks]
        n2s = [0 if k.x1_is_x2 else k.nngp.shape[0] - k.n1 for k in ks]
        sides = zip(_positions(n1s), _positions(n2s, sum(n1s)))
        rows = [jnp.concatenate([a, b]) for a, b in sides]
        ntk = None if ntks is None else _block_diagonal(ntks, rows, rows)
        return k0.replace(nngp=_block_diagonal([k.nngp for k in ks], rows, rows), ntk=ntk,
                          n1=sum(n1s))
    rows = _positions([k.nngp.shape[0] for k in ks])
    cols = _positions([k.nngp.shape[1] for k in ks])
    fields = _field(ks, 'cov1'), _field(ks, 'cov2')
    cov1, cov2 = (None if v is None else jnp.concatenate(v) for v in fields)
    return k0.replace(nngp=_block_diagonal([k.nngp for k in ks], rows, cols),
                      ntk=None if ntks is None else _block_diagonal(ntks, rows, cols),
                      cov1=cov1, cov2=cov2)


# ----------------------------------------------------------------------------- masks


def _and(masks):
    present = [m for m in masks if m is not None]
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


@mask_rule(FanInSum, FanInProd)
def _fan_in_mask(op, masks, in_types, out_type):
    return _and(masks)


@mask_rule(FanInConcat)
def _concat_mask(op, masks, in_types, out_type):
    t0 = in_types[0]
    axis = op.axis % t0.ndim
    if axis == t0.channel:
        return _and(masks)
    if axis == t0.batch:
        if any(m is None for m in masks):
            raise NtcError('a concatenation along the batch axis got masked and unmasked '
                           'branches',
                           hint='mask every input of the network (mask_constant applies to all)')
        return jnp.concatenate(masks)
    full = [jnp.zeros((m_ref.shape[0],) + t.spatial_shape, bool) if m is None else m
            for m, t in zip(masks, in_types)
            for m_ref in [next(x for x in masks if x is not None)]]
    return jnp.concatenate(full, axis=1 + t0.spatial_axes.index(axis))
