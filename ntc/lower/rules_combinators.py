"""Kernel and finite-network rules of the fan-in combinators.

The check pass guarantees that the branches of a sum, a product or a spatial concatenation are
mutually uncorrelated (all but at most one start with their own random affine layer), which is
what makes these rules exact: the kernel of a sum is the sum of the kernels, and the kernel of a
product of independent branches is the product of their kernels.
"""

from __future__ import annotations

import functools
import operator

import jax.numpy as jnp

from .registry import finite_rule, kernel_rule


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


@kernel_rule('FanInSum')
def fan_in_sum_kernel(ctx, node, *ks):
    return _combine(ks, _sum, _ntk_terms(ks))


@kernel_rule('FanInProd')
def fan_in_prod_kernel(ctx, node, *ks):
    # Θ of a product: Σ_i Θ_i Π_{j≠i} K_j (product rule on the parameter gradients)
    others = [_prod([q.nngp for j, q in enumerate(ks) if j != i]) for i in range(len(ks))]
    return _combine(ks, _prod, _ntk_terms(ks, others))


@kernel_rule('FanInConcat')
def fan_in_concat_kernel(ctx, node, *ks):
    types = ctx.in_types(node)
    axis = node.op.axis % types[0].ndim
    if axis != types[0].channel:
        from .rules_pool import concat_spatial_kernel
        return concat_spatial_kernel(ctx, node, *ks)
    # channels of independent branches: the kernel is the channel-weighted mean
    weights = [t.channels / sum(t.channels for t in types) for t in types]

    def mean(vals):
        return _sum(w * v for w, v in zip(weights, vals))

    return _combine(ks, mean, _ntk_terms(ks, weights))


@finite_rule('FanInSum')
def fan_in_sum_apply(op, params, inputs, ctx):
    return _sum(inputs)


@finite_rule('FanInProd')
def fan_in_prod_apply(op, params, inputs, ctx):
    return _prod(inputs)


@finite_rule('FanInConcat')
def fan_in_concat_apply(op, params, inputs, ctx):
    return jnp.concatenate(inputs, axis=op.axis)
