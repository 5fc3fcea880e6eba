"""Two layers defined outside ntc, the way docs/adding_a_layer.md shows: a nonlinearity with a
closed-form kernel (`ShiftedRelu`) and a spatial layer (`Flip`), each registered with the public
decorators of `ntc.layers` and given a builder with `ntc.stax.layer`.

Importing this module registers them (once: import it as `tests.user_layers` only)."""

from __future__ import annotations

from typing import ClassVar, Literal

import jax.numpy as jnp

from ntc import Net, stax
from ntc.layers import Kernel, Op, TensorType, finite_rule, kernel_rule, mask_rule, register_op

# ----------------------------------------------------------------------------- ShiftedRelu


@register_op
class ShiftedRelu(Op):
    """φ(x) = max(x, 0) + shift."""

    op: Literal['ShiftedRelu'] = 'ShiftedRelu'
    shift: float = 0.0

    needs_gaussian: ClassVar[bool] = True   # the kernel rule is a Gaussian expectation
    flops_per_entry: ClassVar[float] = 20.0  # an arctan2 and a few square roots per entry

    def marginal_need(self, out, in_type):
        """Reads the input variance at every position, whatever its consumers need."""
        if not in_type.spatial_axes:
            return 'NONE'
        return 'FULL' if out == 'FULL' else 'DIAG'


def shifted_relu_moments(xp, shift, c12, q1, q2):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for (u, v) centred Gaussian with variances q1, q2 and
    covariance c12.  With √D = √(q1 q2 - c12²) and θ = atan2(√D, c12) (the angle between u and
    v), the first-order arc-cosine kernel (Cho & Saul 2009) gives
    E[max(u, 0) max(v, 0)] = (√D + c12 (π - θ)) / 2π and E[1{u > 0} 1{v > 0}] = (π - θ) / 2π;
    the half-normal mean E[max(u, 0)] = √(q1 / 2π) adds the shift's terms."""
    qq = q1 * q2
    root = xp.safe_sqrt(xp.drop_roundoff(qq - c12 * c12, qq))
    theta = xp.arctan2(root, c12)
    kdot = (xp.pi - theta) / (2 * xp.pi)
    relu = root / (2 * xp.pi) + c12 * kdot
    shift = xp.const(shift)
    means = xp.safe_sqrt(q1 / (2 * xp.pi)) + xp.safe_sqrt(q2 / (2 * xp.pi))
    return relu + shift * means + shift * shift, kdot


@kernel_rule(ShiftedRelu)
def shifted_relu_kernel(ctx, node, k: Kernel) -> Kernel:
    """K' = E[φ(u)φ(v)], Θ' = E[φ'(u)φ'(v)]·Θ; each marginal maps like K with its own
    variances."""
    xp, shift = ctx.xp, node.op.shift
    q1, q2 = k.cross_vars()
    nngp, kdot = shifted_relu_moments(xp, shift, k.nngp, q1, q2)
    ntk = None if (k.ntk is None or not ctx.want_ntk) else k.ntk * kdot

    def marginal(cov):
        if cov is None:
            return None
        qa, qb = k.marginal_vars(cov)
        return shifted_relu_moments(xp, shift, cov, qa, qb)[0]

    return k.replace(nngp=nngp, ntk=ntk, cov1=marginal(k.cov1), cov2=marginal(k.cov2))


@finite_rule(ShiftedRelu)
def shifted_relu_apply(op, params, inputs, ctx):
    return jnp.maximum(inputs[0], 0) + op.shift


def ShiftedReluLayer(shift: float = 0.0) -> Net:
    """The builder: unpacks as (init_fn, apply_fn, kernel_fn) like every stax layer."""
    return stax.layer(ShiftedRelu, shift=shift)


# ----------------------------------------------------------------------------- Flip


@register_op
class Flip(Op):
    """Reverses every spatial axis: y[s] = x[flip(s)], a fixed linear map."""

    op: Literal['Flip'] = 'Flip'

    def infer(self, ins: list[TensorType], path: str) -> TensorType:
        """Same shape and axes; a permutation of a Gaussian field is Gaussian (and fresh if the
        input is)."""
        return ins[0]

    # spatial_need / marginal_need: the defaults.  K'[s, s'] = K[flip(s), flip(s')], so the
    # diagonal (DIAG) of the output is the flipped diagonal of the input: whatever layout the
    # consumers need of the output, the same layout of the input suffices.


def _flip_stored(x, lead: int):
    """Reverse every axis of a stored covariance after its `lead` batch axes: those are the
    spatial axes (both of each FULL pair, the one of a DIAG axis), in any storage order."""
    return None if x is None else jnp.flip(x, axis=tuple(range(lead, x.ndim)))


@kernel_rule(Flip)
def flip_kernel(ctx, node, k: Kernel) -> Kernel:
    """K'[s, s'] = K[flip(s), flip(s')] for the cross kernels and the marginals."""
    return k.replace(nngp=_flip_stored(k.nngp, 2), ntk=_flip_stored(k.ntk, 2),
                     cov1=_flip_stored(k.cov1, 1), cov2=_flip_stored(k.cov2, 1))


@finite_rule(Flip)
def flip_apply(op, params, inputs, ctx):
    return jnp.flip(inputs[0], axis=ctx.in_types[0].spatial_axes)


@mask_rule(Flip)
def flip_mask(op, masks, in_types, out_type):
    """The position mask (N, *spatial) is flipped like the positions."""
    (m,) = masks
    return jnp.flip(m, axis=tuple(range(1, m.ndim)))


def FlipLayer() -> Net:
    """The builder."""
    return stax.layer(Flip)
