"""Convolutions: `Conv`, `ConvTranspose` and the unshared `ConvLocal`, with their kernel,
finite-network and mask rules.

With A the window mean over every filter axis (the diagonal stencil of `ntc.covariance.stencil`), a
convolution maps (Novak et al. 2019; Garriga-Alonso et al. 2019)
    K -> a·A(K) + b,    Θ -> A(c·Θ + d·K) + e,
with (a, b, c, d, e) from `coefficients` (NTK or standard parameterization).  A transposed
convolution is the same window mean over the stride-dilated covariance.

Every output position has its own weights and bias, so two different output positions are
independent: the output covariance is spatially diagonal (Novak et al. 2019, "Bayesian deep
convolutional networks with many channels are Gaussian processes", sec. 5.1):
    K'[o, o] = a·A(K)[o, o] + b,   Θ'[o, o] = A(c·Θ + d·K)[o, o] + e,   zero for o ≠ o',
where A is the conv window mean over the input's *diagonal* (the DIAG stencil of Conv) and
(a, b, c, d, e) are Conv's coefficients.  The rule therefore reads only the DIAG input and, when
a consumer needs FULL (e.g. a nonlinearity followed by pooling), embeds the diagonal.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from jax import lax
from pydantic import field_validator

from ..covariance.stencil import (
    diagonal_window_sum,
    diagonal_window_sum_nd,
    fold_circular,
    pad_axes,
    window_sum,
    window_sum_nd,
)
from ..errors import ShapeError
from ..ir.op import PosInt
from ..ir.registry import finite_rule, kernel_rule, mask_rule, register_op
from ..ir.types import Spatial, TensorType
from .dense import _AffineBase
from .windows import (
    _lo_pad,
    _WindowBase,
    check_window_bound,
    default_dimension_numbers,
    out_size,
    same_pads,
    window_mask,
)


class _ConvBase(_WindowBase, _AffineBase):
    """A convolution: out_chan filters of `filter_shape` over the spatial axes."""

    out_chan: PosInt
    filter_shape: tuple[PosInt, ...]
    dimension_numbers: tuple[str, str, str] | None = None
    creates_fresh: ClassVar[bool] = True

    def window(self):
        return self.filter_shape

    @field_validator('dimension_numbers')
    @classmethod
    def _valid_specs(cls, v, info):
        """(lhs, rhs, out) as lax.conv_general_dilated reads them: lhs and out hold N, C and
        the spatial letters, rhs holds O, I and the same spatial letters, one per filter
        dimension, each letter once."""
        if v is None:
            return v
        lhs, rhs, out = v
        n = len(info.data['filter_shape']) if 'filter_shape' in info.data else None
        spatial = sorted(set(lhs) - set('NC'))
        problem = None
        for name, spec, fixed in (('lhs', lhs, 'NC'), ('rhs', rhs, 'OI'), ('out', out, 'NC')):
            if len(set(spec)) != len(spec) or not set(fixed) <= set(spec):
                problem = (f'the {name} spec {spec!r} must name {fixed[0]} and {fixed[1]} and '
                           'each axis once')
                break
            if sorted(set(spec) - set(fixed)) != spatial:
                problem = (f'the {name} spec {spec!r} must have the spatial axes of the lhs '
                           f'spec {lhs!r}')
                break
        if problem is None and n is not None and len(spatial) != n:
            problem = f'{len(spatial)} spatial axes for a {n}-d filter'
        if problem:
            example = default_dimension_numbers(n if n is not None else 2)
            raise ValueError(f'{problem}, e.g. {example}')
        return v

    def specs(self) -> tuple[str, str, str]:
        return self.dimension_numbers or default_dimension_numbers(len(self.filter_shape))

    def input_specs(self) -> tuple[str, str, str]:
        return self.specs()

    def input_axes(self, ndim: int) -> tuple[int, int]:
        lhs = self.specs()[0]
        return lhs.index('N'), lhs.index('C')

    def axis_map(self, t: TensorType) -> list[tuple[int, int, int, int]]:
        """Per filter dimension (rhs-spec order): (input spatial index, output spatial index,
        filter size, stride), spatial indices counting the tensor's spatial axes in order."""
        lhs, rhs, out = self.specs()
        letters = [c for c in rhs if c not in 'IO']
        in_sp = [i for i, c in enumerate(lhs) if c not in 'NC']
        out_sp = [i for i, c in enumerate(out) if c not in 'NC']
        return [(in_sp.index(lhs.index(c)), out_sp.index(out.index(c)), k, s)
                for c, k, s in zip(letters, self.filter_shape, self.stride_tuple())]

    def out_spatial(self, n: int, k: int, s: int) -> int:
        return out_size(n, k, s, self.padding)

    def infer(self, ins, path):
        t = ins[0]
        lhs, rhs, out = self.specs()
        if not t.spatial_axes and self.filter_shape:
            raise ShapeError(f'{self.kind} needs an input with spatial axes, got {t.describe()}',
                             path=path, hint='give the input spatial axes (N, H, W, C), or use '
                             'filter_shape=() (a Dense layer over the channels) after Flatten')
        if len(lhs) != t.ndim or sorted(lhs) != sorted(out) or len(rhs) != len(lhs):
            raise ShapeError(f'dimension_numbers {self.specs()} do not fit an input of rank '
                             f'{t.ndim} {t.describe()}', path=path,
                             hint=f'use {len(self.filter_shape)} spatial axes, e.g. '
                             f'{default_dimension_numbers(len(self.filter_shape))}')
        if (lhs.index('N'), lhs.index('C')) != (t.batch, t.channel):
            raise ShapeError(f'dimension_numbers put the batch/channel axes at '
                             f'{lhs.index("N")}/{lhs.index("C")} but the input has them at '
                             f'{t.batch}/{t.channel}', path=path)
        sizes = [t.spatial_shape[i] for i, _, _, _ in self.axis_map(t)]
        self.check_window(tuple(sizes), path, 'filter')
        shape = [0] * t.ndim
        shape[out.index('N')] = None
        shape[out.index('C')] = self.width(self.out_chan)
        out_sp = [i for i, c in enumerate(out) if c not in 'NC']
        for (i, j, k, s) in self.axis_map(t):
            shape[out_sp[j]] = self.out_spatial(t.spatial_shape[i], k, s)
        return TensorType(shape=tuple(shape), batch_axis=out.index('N'),
                          channel_axis=out.index('C'), is_gaussian=True, is_fresh=True)

    def out_order(self, in_order, in_type, out_type):
        relabel = {i: j for i, j, _, _ in self.axis_map(in_type)}
        return tuple(relabel[i] for i in in_order)

    def fan_in(self, in_channels: int) -> int:
        return in_channels * math.prod(self.filter_shape)

    def coefficients(self, in_channels: int) -> tuple[float, float, float, float, float]:
        """(a, b, c, d, e): K -> a·A(K) + b, Θ -> c·A(Θ) + d·A(K) + e, A the window mean."""
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        if self.parameterization == 'ntk':
            return w2, b2, w2, w2, b2
        has_bias = 0.0 if self.b_std is None else 1.0
        return w2, b2, w2, self.weight_term(self.fan_in(in_channels)), has_bias

    def entry_flops(self, in_types, out_type):
        return 2.0 * sum(self.filter_shape) + 2.0

    def lowering_note(self, in_types, spatial, stored_input=False):
        if fused_stencil(self, spatial):
            pad = ', stored pad' if stored_input else ''
            return f'stencil 1 pass, {math.prod(self.filter_shape)} taps{pad}'
        if spatial == 'FULL':
            return f'stencil {len(self.filter_shape)} passes'
        return ''


@register_op
class Conv(_ConvBase):
    """Convolution (NTK or standard parameterization)."""

    op: Literal['Conv'] = 'Conv'


@register_op
class ConvTranspose(_ConvBase):
    """Transposed convolution (the gradient of a strided convolution)."""

    op: Literal['ConvTranspose'] = 'ConvTranspose'

    def check_window(self, sizes, path, what):
        if len(self.stride_tuple()) != len(self.window()):
            raise ShapeError(f'{len(self.stride_tuple())} strides for a {len(self.window())}-d '
                             'filter', path=path)
        if self.padding != 'VALID':  # VALID: every tap reads the input (the output grows)
            check_window_bound(self.window(), sizes, self.padding, path, what)

    def out_spatial(self, n, k, s):
        if self.padding == 'VALID':
            return n * s + max(k - s, 0)
        return n * s


@register_op
class ConvLocal(_ConvBase):
    """Unshared ("locally connected") convolution: separate weights at every output position.
    Different positions have independent weights, so the output covariance is spatially
    diagonal: K'[o, o] = a·A(K)[o, o] + b with A the conv window mean of the input's diagonal,
    and K'[o, o'] = 0 for o ≠ o' (Novak et al. 2019, sec. 5.1)."""

    op: Literal['ConvLocal'] = 'ConvLocal'
    natural_output: ClassVar[Spatial] = 'DIAG'  # as the network output: (N1, N2, H, W)

    def spatial_need(self, out, in_type):
        return 'DIAG'

    def marginal_need(self, out, in_type):
        return None if out is None else 'DIAG'


# ----------------------------------------------------------------------------- rules


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


MAX_FUSED_TAPS = 27  # Π k up to a 3×3×3 filter: one pass over all axis pairs


def fused_stencil(op, layout_spatial: str) -> bool:
    """True when the conv window mean of a FULL covariance runs as one pass over every axis
    pair at once (Π k taps, `diagonal_window_sum_nd`) rather than one pass per pair (Σ k taps
    per pass, an intermediate array per pair).  Measured on a 3×3 Conv + Relu layer at 16×16:
    one pass 6–7 ms, two passes 10–27 ms (the intermediate costs a memory round trip and
    blocks fusing the nonlinearity into the stencil).  Per-position variances (DIAG) take one
    pass too (`window_sum_nd`): one XLA kernel to compile instead of one per axis."""
    wrap = op.padding == 'CIRCULAR' and op.kind == 'ConvTranspose'
    return (layout_spatial in ('FULL', 'DIAG') and not wrap and len(op.filter_shape) > 1
            and math.prod(op.filter_shape) <= MAX_FUSED_TAPS)


def window_mean(op, x, layout_spatial: str, order, lead: int, in_type, stored: bool = False):
    """A(x): the conv window mean of covariance `x` over every filter axis; `stored`: a fused
    stencil's taps all read its stored padded copy (`LowerCtx.stores_padded_input`)."""
    circular = op.padding == 'CIRCULAR' and op.kind == 'Conv'
    wrap = op.padding == 'CIRCULAR' and op.kind == 'ConvTranspose'
    if fused_stencil(op, layout_spatial):
        full = layout_spatial == 'FULL'
        windows = []
        for i, _, k, s in op.axis_map(in_type):
            lo, hi, interior = _pads(op, in_type.spatial_shape[i], k, s)
            stride = 1 if op.kind == 'ConvTranspose' else s
            windows.append((lead + (2 if full else 1) * order.index(i), k, stride, lo, hi,
                            interior))
        summed = (diagonal_window_sum_nd if full else window_sum_nd)(x, windows, circular,
                                                                     stored)
        return summed / math.prod(op.filter_shape)
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


@kernel_rule(Conv, ConvTranspose)
def conv_kernel(ctx, node, k):
    op, t = node.op, ctx.in_type(node)
    a, b, c, d, e = op.coefficients(t.channels)
    order = k.layout.axis_order
    lead = 2
    stored = ctx.stores_padded_input(node)

    def mean(x, spatial, lead):
        return window_mean(op, x, spatial, order, lead, t, stored)

    mean_k = mean(k.nngp, k.layout.spatial, lead)
    nngp, ntk = a * mean_k + b, None
    if ctx.want_ntk:
        # A is linear: A(c·Θ + d·K) = c·A(Θ) + d·A(K), and A(K) is nngp's own stencil, so Θ's
        # stencil reads Θ alone (its padded copy is a plain pad, not a pass reading Θ and K,
        # and XLA then stores no extra copy of the loop-carried K: measured 12% faster on
        # cnn21_gap_16x16_n4); separate arrays, not a stack of both, so that no concatenated
        # copy is stored and each stencil fuses with its consumer
        ntk = (d * mean_k if k.ntk is None else c * mean(k.ntk, k.layout.spatial, lead)
               + d * mean_k) + e

    def marginal(cov):
        return None if cov is None else a * mean(cov, k.layout.marginal, 1) + b

    out_order = op.out_order(order, t, node.ttype)
    return k.replace(nngp=nngp, ntk=ntk, cov1=marginal(k.cov1), cov2=marginal(k.cov2),
                     layout=k.layout.model_copy(update=dict(axis_order=out_order)))


def _filter_shape(op, in_channels):
    lhs, rhs, out = op.specs()
    sizes = iter(op.filter_shape)
    return tuple(in_channels if c == 'I' else op.width(op.out_chan) if c == 'O' else next(sizes)
                 for c in rhs)


def _bias_shape(op) -> tuple[int, ...]:
    """NT's bias shape: the output's rank, 1 everywhere but the channel axis."""
    out = op.specs()[2]
    return tuple(op.width(op.out_chan) if c == 'C' else 1 for c in out)


def _conv_init(key, op, in_types):
    (t,) = in_types
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, _filter_shape(op, t.channels))
    if op.parameterization == 'standard':
        w = w * op.standard_init_std(op.fan_in(t.channels))
    b = None if op.b_std is None else jax.random.normal(k2, _bias_shape(op))
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


@finite_rule(Conv, ConvTranspose, init=_conv_init)
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
    else:
        y = y * op.standard_apply_scale()
    if b is not None:
        b = jnp.asarray(b, y.dtype)  # NT code may pass a scalar bias, e.g. (w, 0.)
        shape = [1] * y.ndim
        shape[channel] = b.size
        scale = (op.b_std or 0.0) if op.parameterization == 'ntk' else 1.0
        y = y + scale * (b if b.ndim == 0 else b.reshape(shape))
    return y


def embed_diag(x, ns: int, lead: int):
    """(…, a, b, …) -> (…, a, a', b, b', …) with zeros off the diagonal a ≠ a'."""
    if x is None:
        return None
    for i in range(ns):
        ax = lead + 2 * i
        n = x.shape[ax]
        eye = jnp.eye(n, dtype=x.dtype).reshape((1,) * ax + (n, n) + (1,) * (x.ndim - ax - 1))
        x = jnp.expand_dims(x, ax + 1) * eye
    return x


@kernel_rule(ConvLocal)
def conv_local_kernel(ctx, node, k):
    op, t = node.op, ctx.in_type(node)
    a, b, c, d, e = op.coefficients(t.channels)
    order = k.layout.axis_order
    want = node.cov

    shared = Conv(**op.args())  # same window (and CIRCULAR padding) as a shared conv

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
        w = w * op.standard_init_std(op.fan_in(t.channels))
    b = None if op.b_std is None else jax.random.normal(k2, b_shape)
    if b is not None and op.parameterization == 'standard':
        b = b * op.b_std
    return (w, b)


@finite_rule(ConvLocal, init=_init)
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
    else:
        y = y * op.standard_apply_scale()
    if b is not None:
        y = y + (op.b_std if op.parameterization == 'ntk' else 1.0) * b
    return y


# ----------------------------------------------------------------------------- masks


@mask_rule(Conv, ConvLocal)
def _conv_mask(op, masks, in_types, out_type):
    (m,), (t,) = masks, in_types
    return window_mask(m, t, out_type, [(i, j, k, s, _lo_pad(op, t.spatial_shape[i], k, s))
                                        for i, j, k, s in op.axis_map(t)])


@mask_rule(ConvTranspose)
def _conv_transpose_mask(op, masks, in_types, out_type):
    """An output position is masked when a masked input reaches it through the filter
    (neural_tangents' transposed-convolution mask)."""
    (m,), (t,) = masks, in_types
    for i, j, k, s in op.axis_map(t):
        n_out = out_type.spatial_shape[j]
        total = (t.spatial_shape[i] - 1) * s + k
        lo = 0 if op.padding == 'VALID' else (total - n_out) // 2
        m = m.astype(jnp.float32)
        spread = jnp.zeros(m.shape[:1 + i] + (total,) + m.shape[2 + i:], m.dtype)
        for d in range(k):
            idx = jnp.arange(t.spatial_shape[i]) * s + d
            spread = spread.at[(slice(None),) * (1 + i) + (idx,)].add(m)
        m = jax.lax.slice_in_dim(spread, lo, lo + n_out, axis=1 + i) > 0
    return m
