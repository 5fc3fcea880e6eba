"""Fully connected layers: `Dense` and the folded `Affine` chain `canonicalize` makes."""

from __future__ import annotations

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from pydantic import field_validator

from ..covariance.kernel import Kernel
from ..errors import ShapeError
from ..ir.op import NonNegFloat, Op, PosInt
from ..ir.registry import finite_rule, kernel_rule, register_op
from ..ir.types import TensorType

Parameterization = Literal['ntk', 'standard']


class _AffineBase(Op):
    """Fields and checks shared by Dense and the convolutions."""

    W_std: NonNegFloat = 1.0
    b_std: NonNegFloat | None = None
    parameterization: Parameterization = 'ntk'
    s: tuple[PosInt, PosInt] = (1, 1)

    def width(self, n: int) -> int:
        """Actual output channels for a nominal width n: standard parameterization scales the
        layer's width by s[1] (Sohl-Dickstein et al. 2020; NT's `s`), NTK ignores `s`."""
        return n * self.s[1] if self.parameterization == 'standard' else n

    def independent_of_input(self) -> bool:
        return self.W_std > 0 or bool(self.b_std)  # W = b = 0 outputs zeros: inherit

    def standard_init_std(self, fan_in: int) -> float:
        """Std of the weights under the standard parameterization: W_std / sqrt(fan_in / s[0]),
        the base width's (NT's convention; `apply` then divides by sqrt(s[0]), so the forward
        pass has variance W_std² / fan_in and the gradients give the NTK's `weight_term`)."""
        return self.W_std * (self.s[0] / fan_in) ** 0.5

    def standard_apply_scale(self) -> float:
        """The factor 1/sqrt(s[0]) on the weights' term under the standard parameterization."""
        return self.s[0] ** -0.5

    def weight_term(self, fan_in: int) -> float:
        """The NTK's weight-gradient factor d in Θ' = c Θ + d K + e under the standard
        parameterization: the base width fan_in / s[0] (Sohl-Dickstein et al. 2020)."""
        return fan_in / self.s[0]

    @field_validator('parameterization', mode='before')
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v


@register_op
class Dense(_AffineBase):
    """Fully connected layer acting on the channel axis (at every spatial position)."""

    op: Literal['Dense'] = 'Dense'
    out_dim: PosInt
    batch_axis: int = 0
    channel_axis: int = -1
    flops_per_entry: ClassVar[float] = 2.0
    creates_fresh: ClassVar[bool] = True
    readout: ClassVar[bool] = True

    def pointwise_affine(self, in_channels: int) -> tuple[float, ...]:
        return self.coefficients(in_channels)

    def input_axes(self, ndim: int) -> tuple[int, int]:
        """(batch, channel) axes this layer expects of its input."""
        return self.batch_axis % ndim, self.channel_axis % ndim

    def coefficients(self, in_channels: int) -> tuple[float, float, float, float, float]:
        """(a, b, c, d, e) of the kernel map K -> a K + b, Θ -> c Θ + d K + e.

        NTK parameterization (Jacot et al. 2018): K' = σw² K + σb², Θ' = K' + σw² Θ.
        Standard parameterization (Sohl-Dickstein et al. 2020): the weights' gradients add
        the input Gram matrix scaled by the base width, (fan_in/s[0])·K, and the bias adds 1.
        """
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        if self.parameterization == 'ntk':
            return w2, b2, w2, w2, b2
        has_bias = 0.0 if self.b_std is None else 1.0
        return w2, b2, w2, self.weight_term(in_channels), has_bias

    def infer(self, ins, path):
        t = ins[0]
        shape = list(t.shape)
        if t.ndim < 2:
            raise ShapeError(f'Dense needs an input of rank >= 2, got {t.describe()}', path=path)
        channel = self.channel_axis % t.ndim
        shape[channel] = self.width(self.out_dim)
        return TensorType(shape=tuple(shape), batch_axis=self.batch_axis % t.ndim,
                          channel_axis=channel, is_gaussian=True, is_fresh=True)


@register_op
class Affine(Op):
    """A folded chain of affine layers (made by `canonicalize`): K -> a K + b and
    Θ -> c Θ + d K + e, applied per position.  `folded` lists the layers it replaces."""

    op: Literal['Affine'] = 'Affine'
    in_specs: ClassVar[bool] = False
    a: float
    b: float
    c: float
    d: float
    e: float
    out_dim: int
    folded: tuple[str, ...] = ()
    flops_per_entry: ClassVar[float] = 2.0
    creates_fresh: ClassVar[bool] = True
    readout: ClassVar[bool] = True

    def pointwise_affine(self, in_channels: int) -> tuple[float, ...]:
        return (self.a, self.b, self.c, self.d, self.e)

    def infer(self, ins, path):
        t = ins[0]
        shape = list(t.shape)
        shape[t.channel] = self.out_dim
        return t.model_copy(update=dict(shape=tuple(shape), is_gaussian=True, is_fresh=True))


# ----------------------------------------------------------------------------- rules


def affine_map(ctx, k: Kernel, a, b, c, d, e) -> Kernel:
    """K -> a K + b on every covariance, and Θ -> c Θ + d K + e (with the input K)."""
    ntk = None
    if ctx.want_ntk:
        ntk = d * k.nngp + e if k.ntk is None else c * k.ntk + d * k.nngp + e
    return k.map_covariances(lambda x: a * x + b).replace(ntk=ntk)


@kernel_rule(Dense)
def dense_kernel(ctx, node, k):
    return affine_map(ctx, k, *node.op.coefficients(ctx.in_type(node).channels))


@kernel_rule(Affine)
def affine_kernel(ctx, node, k):
    op = node.op
    return affine_map(ctx, k, op.a, op.b, op.c, op.d, op.e)


def _dense_init(key, op, in_types):
    (t,) = in_types
    k1, k2 = jax.random.split(key)
    width = op.width(op.out_dim)
    w = jax.random.normal(k1, (t.channels, width))
    if op.parameterization == 'standard':
        w = w * op.standard_init_std(t.channels)
    b_shape = [1] * t.ndim  # NT's shape: the input's rank, 1 everywhere but the channel axis
    b_shape[op.channel_axis % t.ndim] = width
    b = None if op.b_std is None else jax.random.normal(k2, tuple(b_shape))
    if b is not None and op.parameterization == 'standard':
        b = b * op.b_std
    return (w, b)


@finite_rule(Dense, init=_dense_init)
def dense_apply(op, params, inputs, ctx):
    (x,) = inputs
    w, b = params
    axis = op.channel_axis % x.ndim
    y = jnp.moveaxis(jnp.tensordot(jnp.moveaxis(x, axis, -1), w, axes=1), -1, axis)
    if op.parameterization == 'ntk':
        y = y * (op.W_std / jnp.sqrt(w.shape[0]))
        if b is not None:
            y = y + op.b_std * _along(b, axis, y.ndim)
    else:
        y = y * op.standard_apply_scale()
        if b is not None:
            y = y + _along(b, axis, y.ndim)
    return y


def _along(v, axis, ndim):
    """The bias `v` (NT's shape, a vector, or a scalar) shaped to add along `axis`."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)
