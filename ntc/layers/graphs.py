"""`Aggregate`: message passing over a graph given as an adjacency pattern.

Aggregation replaces every vertex by the weighted sum of its predecessors, y[n, j] =
Σ_i x[n, i]·A[n, i, j], identically on every channel.  It is a per-example linear map of the
vertex axes, so (Du et al. 2019, "Graph Neural Tangent Kernel")
    K'[n1, n2, j, j'] = Σ_{i,i'} A1[n1, i, j]·K[n1, n2, i, i']·A2[n2, i', j'],
and the same for the NTK.  The kernel rule applies the finite aggregation (dense matmul or
sparse segment sum) to each side of the covariance with `map_covariance`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from pydantic import field_validator

from ..errors import InputError, ShapeError
from ..ir.op import Op, upper_name
from ..ir.registry import finite_rule, kernel_input, kernel_rule, register_op
from ..ir.types import TensorType
from .linear import map_kernel


class AggregateImplementation(enum.Enum):
    """NT's `stax.AggregateImplementation`: the form of `Aggregate`'s pattern, accepted wherever
    its name is."""
    DENSE = 'DENSE'
    SPARSE = 'SPARSE'


@register_op
class Aggregate(Op):
    """Graph aggregation (Du et al. 2019, "Graph Neural Tangent Kernel"): every vertex becomes
    the weighted sum of its predecessors, out[n, j] = Σ_i x[n, i]·A[n, i, j], with the
    per-example adjacency `pattern` given to apply_fn / kernel_fn.  Kernel:
    K'[n1, n2, j, j'] = Σ_{i,i'} A1[n1, i, j]·K[n1, n2, i, i']·A2[n2, i', j']."""

    op: Literal['Aggregate'] = 'Aggregate'
    aggregate_axis: int | tuple[int, ...] | None = None
    batch_axis: int = 0
    channel_axis: int = -1
    to_dense: Callable | None = None
    implementation: Literal['DENSE', 'SPARSE'] = 'DENSE'

    @field_validator('implementation', mode='before')
    @classmethod
    def _impl_upper(cls, v):
        return upper_name(v)

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def agg_axes(self, t: TensorType, path: str = '') -> tuple[int, ...]:
        """Tensor positions of the aggregated axes."""
        if self.aggregate_axis is None:
            return t.spatial_axes
        axes = (self.aggregate_axis,) if isinstance(self.aggregate_axis, int) \
            else self.aggregate_axis
        out = tuple(a % t.ndim for a in axes)
        for a in out:
            if a not in t.spatial_axes:
                raise ShapeError(f'aggregate_axis={self.aggregate_axis} names axis {a}, which is '
                                 f'the batch or channel axis of {t.describe()}', path=path,
                                 hint='aggregate over spatial (vertex) axes only')
        return out

    def infer(self, ins, path):
        t = ins[0]
        if not t.spatial_axes:
            raise ShapeError(f'Aggregate needs vertex (spatial) axes, got {t.describe()}',
                             path=path, hint='give the input shape (N, vertices..., channels)')
        self.agg_axes(t, path)
        return t

    def spatial_need(self, out, in_type):
        return 'FULL'  # mixes vertices

    def marginal_need(self, out, in_type):
        return None if out is None else 'FULL'

    def out_order(self, in_order, in_type, out_type):
        return tuple(range(len(out_type.spatial_axes)))

    def entry_flops(self, in_types, out_type):
        t = in_types[0]
        return 4.0 * math.prod(t.shape[a] for a in self.agg_axes(t))


# ----------------------------------------------------------------------------- rules


@kernel_input('pattern')
def pattern_input(value, x1, x2):
    """NT's `pattern=(pattern1, pattern2)`: adjacency of the examples of x1 and of x2.  With
    x2 None a single array (or `(pattern1, anything)`) is accepted and used on both sides."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and not _is_array(value):
        p1, p2 = value
    elif isinstance(value, (tuple, list)) and not _is_array(value):
        raise InputError(f'pattern must be a pair (pattern1, pattern2), got {len(value)} items')
    else:
        if x2 is not None:
            raise InputError('kernel_fn(x1, x2) needs pattern=(pattern1, pattern2), one '
                             'adjacency per input', hint='pass pattern=(pattern1, pattern2)')
        p1 = p2 = value
    if x2 is None:
        p2 = p1
    if p1 is None and p2 is None:
        return None  # NT's (None, None): no aggregation, as without `pattern`
    if p1 is None or p2 is None:
        raise InputError('pattern has one None entry; give both adjacencies (None for both '
                         'means no aggregation)', hint='pass pattern=(pattern1, pattern2)')
    return _arr(p1), _arr(p2)


def _is_array(v) -> bool:
    """A list/tuple holding numbers (an array written as nested lists), not a pair of arrays."""
    return (isinstance(v, (tuple, list)) and len(v) > 0 and v[0] is not None
            and np.ndim(v[0]) == 0)


def _arr(p):
    return jnp.asarray(p) if isinstance(p, (np.ndarray, list, tuple)) else p


def aggregate(op, x, pattern, t, precision=None):
    """The finite aggregation of activation-form `x` (type `t`, batch size = pattern's)."""
    if pattern is None:
        return x
    axes = op.agg_axes(t)
    k = len(axes)
    b, c = t.batch, t.channel
    if op.implementation == 'DENSE':
        p = pattern if op.to_dense is None else op.to_dense(pattern)
        want = (x.shape[b],) + tuple(x.shape[a] for a in axes) * 2
        if tuple(p.shape) != want:
            raise InputError(f'Aggregate: pattern has shape {tuple(p.shape)}, expected '
                             f'(batch, *V, *V) = {want}')
        dn = ((axes, tuple(range(1, k + 1))), ((b,), (0,)))
        y = lax.dot_general(x, p.astype(x.dtype), dn, precision=precision)
        # dot_general output: (batch, free axes of x in order, aggregated axes)
        free = [a for a in range(x.ndim) if a != b and a not in axes]
        src = [0] + list(range(1, 1 + len(free))) + list(range(1 + len(free), y.ndim))
        dst = [b] + free + list(axes)
        return jnp.moveaxis(y, src, dst)
    return _sparse(x, pattern, axes, b, c)


def _sparse(x, pattern, axes, b, c):
    """Segment-sum aggregation over integer edges (batch, n_edges, K, 2) (or (batch, n_edges,
    2) for K = 1); an edge with a negative vertex coordinate is padding and is dropped."""
    k = len(axes)
    pattern = jnp.asarray(pattern)
    if pattern.ndim == 3 and k == 1:
        pattern = pattern[:, :, None, :]
    if pattern.ndim != 4 or pattern.shape[2] != k or pattern.shape[3] != 2 \
            or pattern.shape[0] != x.shape[b]:
        raise InputError(f'Aggregate(SPARSE): pattern has shape {pattern.shape}, expected '
                         f'(batch={x.shape[b]}, n_edges, {k}, 2)')
    z = jnp.moveaxis(x, [b, *axes, c], list(range(k + 1)) + [x.ndim - 1])
    shape = z.shape
    v_shape = shape[1:k + 1]
    n_v = math.prod(v_shape)
    z = z.reshape((shape[0], n_v) + shape[k + 1:])
    valid = jnp.all(pattern >= 0, axis=(2, 3))
    flat = jnp.zeros(pattern.shape[:2] + (2,), dtype=jnp.int32)
    for a in range(k):
        stride = math.prod(v_shape[a + 1:])
        flat = flat + jnp.clip(pattern[:, :, a, :], 0, v_shape[a] - 1).astype(jnp.int32) * stride
    senders = jnp.where(valid, flat[..., 0], 0)
    receivers = jnp.where(valid, flat[..., 1], n_v)   # out of range: dropped

    def one(zi, s, r):
        return jax.ops.segment_sum(zi[s], r, num_segments=n_v)

    out = jax.vmap(one)(z, senders, receivers).reshape(shape)
    return jnp.moveaxis(out, list(range(k + 1)) + [x.ndim - 1], [b, *axes, c])


@kernel_rule(Aggregate)
def aggregate_kernel(ctx, node, k):
    """K' = A1ᵀ K A2 per pair of examples (on both sides of every covariance)."""
    op, t = node.op, ctx.in_type(node)
    pattern = ctx.extra('pattern')
    hi = lax.Precision.HIGHEST
    if pattern is None:
        def ident(y):
            return y
        return map_kernel(k, t, node.ttype, (ident, ident, ident))
    p1, p2 = pattern
    if op.implementation == 'DENSE' and op.to_dense is not None:
        p1, p2 = op.to_dense(p1), op.to_dense(p2)
        op = op.model_copy(update=dict(to_dense=None))
    pj = None
    if k.joint:
        pj = p1 if k.x1_is_x2 else _concat(op, jnp.asarray(p1), jnp.asarray(p2))

    def side(p):
        return lambda y: aggregate(op, y, p, t, hi)

    return map_kernel(k, t, node.ttype, (side(p1), side(p2), side(pj)))


def _concat(op, p1, p2):
    """Patterns of the joint batch [x1; x2]; sparse edge lists are padded with -1 edges."""
    if op.implementation == 'SPARSE':
        n = max(p1.shape[1], p2.shape[1])

        def pad(p):
            widths = [(0, 0)] * p.ndim
            widths[1] = (0, n - p.shape[1])
            return jnp.pad(p, widths, constant_values=-1)
        p1, p2 = pad(p1), pad(p2)
    return jnp.concatenate([p1, p2])


@finite_rule(Aggregate)
def aggregate_apply(op, params, inputs, ctx):
    """apply_fn(params, x, pattern=A): y = x aggregated by A (A None: the identity)."""
    (x,) = inputs
    pattern = ctx.kwargs.get('pattern')
    if pattern is None:
        return x
    t = TensorType(shape=x.shape, batch_axis=op.batch_axis, channel_axis=op.channel_axis)
    return aggregate(op, x, _arr(pattern), t)
