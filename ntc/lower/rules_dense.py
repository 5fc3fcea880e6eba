"""Kernel and finite-network rules of the input, Dense and folded Affine ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .kernel import Kernel
from .registry import finite_rule, kernel_rule


def affine_map(ctx, k: Kernel, a, b, c, d, e) -> Kernel:
    """K -> a K + b on every covariance, and Θ -> c Θ + d K + e (with the input K)."""
    ntk = None
    if ctx.want_ntk:
        ntk = d * k.nngp + e if k.ntk is None else c * k.ntk + d * k.nngp + e
    return k.map_covariances(lambda x: a * x + b).replace(ntk=ntk)


@kernel_rule('Dense')
def dense_kernel(ctx, node, k):
    return affine_map(ctx, k, *node.op.coefficients(ctx.in_type(node).channels))


@kernel_rule('Affine')
def affine_kernel(ctx, node, k):
    op = node.op
    return affine_map(ctx, k, op.a, op.b, op.c, op.d, op.e)


@kernel_rule('Identity')
def identity_kernel(ctx, node, k):
    return k


def _dense_init(key, op, in_types):
    (t,) = in_types
    k1, k2 = jax.random.split(key)
    width = op.width(op.out_dim)
    w = jax.random.normal(k1, (t.channels, width))
    if op.parameterization == 'standard':
        w = w * op.W_std / jnp.sqrt(t.channels)
    b = None if op.b_std is None else jax.random.normal(k2, (width,))
    if b is not None and op.parameterization == 'standard':
        b = b * op.b_std
    return (w, b)


@finite_rule('Dense', init=_dense_init)
def dense_apply(op, params, inputs, ctx):
    (x,) = inputs
    w, b = params
    axis = op.channel_axis % x.ndim
    y = jnp.moveaxis(jnp.tensordot(jnp.moveaxis(x, axis, -1), w, axes=1), -1, axis)
    if op.parameterization == 'ntk':
        y = y * (op.W_std / jnp.sqrt(w.shape[0]))
        if b is not None:
            y = y + op.b_std * _along(b, axis, y.ndim)
    elif b is not None:
        y = y + _along(b, axis, y.ndim)
    return y


def _along(v, axis, ndim):
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


@finite_rule('Identity')
def identity_apply(op, params, inputs, ctx):
    return inputs[0]
