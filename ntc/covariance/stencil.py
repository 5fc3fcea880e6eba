"""Window sums over covariance axes, the primitives of the conv and pooling rules.

A convolution maps a covariance pair of axes (a, a') by the *diagonal* window
    A(K)[o, o'] = (1/k) Σ_δ K[o·s + δ - p, o'·s + δ - p],
pooling by the *box* window Σ_δ Σ_δ' K[o·s + δ - p, o'·s + δ' - p], which is separable.
Both are implemented as sums of k strided slices of a (zero- or wrap-) padded array: on this
CPU that ran ~15× faster than expressing them as XLA convolutions, and it works on any axis
position, so no layout ever needs a transpose for a stencil.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
from jax import lax


def pad_axes(x, axes, lo: int, hi: int, circular: bool, interior: int = 0):
    """Pad `axes` of x by (lo, hi): zeros (with `interior` zeros between entries, i.e. input
    dilation), or periodic wrap-around when `circular`."""
    if circular:
        if interior:
            raise ValueError('circular padding with dilation')
        widths = [(0, 0)] * x.ndim
        for ax in axes:
            widths[ax] = (lo, hi)
        return jnp.pad(x, widths, mode='wrap')
    config = [(0, 0, 0)] * x.ndim
    for ax in axes:
        config[ax] = (lo, hi, interior)
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _stored(padded):
    """`padded` as the one array every tap reads.  Without the barrier XLA's simplifier turns
    the tap that covers the unpadded input exactly (the centre of a SAME window) into that
    input, so the stencil's kernel recomputes the input's producer (an arc-cosine) for that
    tap besides the kernel that writes the padded copy: one more copy of the producer's code
    to compile per array and stencil, and its arithmetic done twice."""
    return lax.optimization_barrier(padded)


def _tap(x, cuts):
    """x[.., start::stride (count entries) along each (axis, start, count, stride) of `cuts`,
    ..]: one slice of every axis at once (one traced equation instead of one per axis)."""
    starts, limits, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
    for axis, start, count, stride in cuts:
        starts[axis], limits[axis] = start, start + (count - 1) * stride + 1
        strides[axis] = stride
    return lax.slice(x, starts, limits, strides)


def window_sum(x, axis: int, k: int, stride: int, lo: int, hi: int, circular: bool,
               interior: int = 0):
    """Σ_{δ<k} x[o·stride + δ - lo] along one axis (padded as `pad_axes`)."""
    return _grouped_window_sum(x, [((axis,), k, stride, lo, hi, interior)], circular, False)


def window_sum_nd(x, windows, circular: bool, stored: bool = False):
    """Σ over every tap (δ_1, ..., δ_m) of x[.., o_1·s_1 + δ_1 - lo_1, ..] for the axes
    `windows` = [(axis, k, stride, lo, hi, interior), ...]: `window_sum` over all of them at
    once, one pad and Π k taps (one XLA loop fusion instead of one per axis; a conv's map of
    per-position variances).  `stored`: every tap reads the padded copy (`_stored`)."""
    return _grouped_window_sum(x, [((w[0],),) + tuple(w[1:]) for w in windows], circular, stored)


def diagonal_window_sum(x, axis: int, k: int, stride: int, lo: int, hi: int, circular: bool,
                        interior: int = 0):
    """Σ_{δ<k} x[o·s + δ - lo, o'·s + δ - lo] over the adjacent pair (axis, axis + 1)."""
    return _grouped_window_sum(x, [((axis, axis + 1), k, stride, lo, hi, interior)], circular,
                               False)


def diagonal_window_sum_nd(x, pairs, circular: bool, stored: bool = False):
    """Σ over every tap (δ_1, ..., δ_m) of x[.., o_1·s_1 + δ_1 - lo_1, o_1'·s_1 + δ_1 - lo_1, ..]
    for the adjacent axis pairs `pairs` = [(axis, k, stride, lo, hi, interior), ...]: the
    diagonal window sums of `diagonal_window_sum` over all pairs at once.  One pass over x
    (Π k taps) instead of one pass per pair: the sum is a single XLA loop fusion that also
    takes in the consumer's elementwise math (a conv followed by a nonlinearity).  `stored`:
    every tap reads the padded copy (`_stored`)."""
    return _grouped_window_sum(x, [((p[0], p[0] + 1),) + tuple(p[1:]) for p in pairs],
                               circular, stored)


def _grouped_window_sum(x, groups, circular: bool, stored: bool):
    """Σ over every tap (δ_1, ..., δ_m) of x with each axis of group i read at o·s_i + δ_i - lo_i:
    `groups` = [(axes, k, stride, lo, hi, interior), ...], one pad of every axis, Π k taps."""
    if circular:
        for axes, _, _, lo, hi, interior in groups:
            x = pad_axes(x, axes, lo, hi, True, interior)
    else:  # one pad of every axis (two pads in a row are stored twice by XLA)
        config = [(0, 0, 0)] * x.ndim
        for axes, _, _, lo, hi, interior in groups:
            for a in axes:
                config[a] = (lo, hi, interior)
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
    if stored:
        x = _stored(x)
    sizes = [(x.shape[axes[0]] - k) // stride + 1 for axes, k, stride, _, _, _ in groups]
    out = None
    for taps in itertools.product(*(range(k) for _, k, _, _, _, _ in groups)):
        tap = _tap(x, [(a, d, m, stride) for (axes, _, stride, _, _, _), m, d
                       in zip(groups, sizes, taps) for a in axes])
        out = tap if out is None else lax.add(out, tap)  # a primitive: jnp.add traces ~5× slower
    return out


def fold_circular(x, axis: int, n: int, offset: int):
    """Wrap axis of length F onto n positions: out[o] = Σ_{i ≡ o + offset (mod n)} x[i].

    A circular transposed convolution is the VALID one with its overhang wrapped around
    (offset = (F - n) // 2, as NT's finite network does it)."""
    f = x.shape[axis]
    front = (-offset) % n
    chunks = -(-(front + f) // n)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (front, chunks * n - front - f)
    x = jnp.pad(x, widths)
    x = x.reshape(x.shape[:axis] + (chunks, n) + x.shape[axis + 1:])
    return x.sum(axis)


def edge_counts(n: int, k: int, stride: int, lo: int, hi: int, dtype):
    """How many in-bounds positions each output window covers (for normalize_edges)."""
    return window_sum(jnp.ones((n,), dtype), 0, k, stride, lo, hi, False)
