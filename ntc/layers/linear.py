"""Fixed linear maps of a tensor: `Flatten`, `Transpose` (of a covariance's storage order),
`DotGeneral` with a constant operand, `Index` and `ImageResize`.

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
from typing import Any, ClassVar, Literal, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from pydantic import field_validator

from ..covariance import masking
from ..covariance.kernel import reduce_spatial
from ..errors import ShapeError
from ..ir.op import Op
from ..ir.registry import finite_rule, kernel_rule, mask_rule, register_op
from ..ir.types import TensorType


@register_op
class Flatten(Op):
    """Flattens all non-batch axes into one channel axis."""

    op: Literal['Flatten'] = 'Flatten'
    batch_axis: int = 0
    batch_axis_out: int = 0

    def input_axes(self, ndim: int) -> tuple[int, int]:
        """(batch, channel) of the input: its own batch axis, and the last other axis (Flatten
        reads no channel axis, but it ends the search for one: the layers after it see
        another tensor)."""
        b = self.batch_axis % ndim
        return b, ndim - 1 if b != ndim - 1 else ndim - 2

    def infer(self, ins, path):
        t = ins[0]
        size = math.prod(d for i, d in enumerate(t.shape) if i != t.batch)
        b = self.batch_axis_out % 2
        shape = (None, size) if b == 0 else (size, None)
        return TensorType(shape=shape, batch_axis=b, channel_axis=1 - b,
                          is_gaussian=t.is_gaussian, is_fresh=t.is_fresh)

    def spatial_need(self, out, in_type):
        return 'DIAG' if in_type.spatial_axes else 'NONE'

    def marginal_need(self, out, in_type):
        if out is None:
            return None
        return 'DIAG' if in_type.spatial_axes else 'NONE'


@register_op
class Transpose(Op):
    """Permutes the storage order of a covariance's spatial axes (inserted by
    `choose_axis_orders` where two orders meet).  It does not change the finite network."""

    op: Literal['Transpose'] = 'Transpose'
    in_specs: ClassVar[bool] = False
    order: tuple[int, ...]

    def infer(self, ins, path):
        return ins[0]

    def out_order(self, in_order, in_type, out_type):
        return self.order


def _const(v):
    """A constant array as nested tuples of floats (hashable, JSON-safe); scalars as floats."""
    if v is None:
        return None
    arr = np.asarray(v, dtype=float)
    if not np.isfinite(arr).all():
        raise ValueError('the constant has NaN or Inf entries; it must be finite')
    if arr.ndim == 0:
        return float(arr)

    def tup(a):
        return tuple(tup(x) for x in a) if a.ndim > 1 else tuple(float(x) for x in a)
    return tup(arr)


def _precision_name(v):
    if v is None or isinstance(v, str):
        return v
    return getattr(v, 'name', str(v))


DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]


@register_op
class DotGeneral(Op):
    """`lax.dot_general` with a constant `lhs` or `rhs` (the other operand is the input): a
    fixed linear map of the non-channel axes, so K -> M K Mᵀ on both position indices."""

    op: Literal['DotGeneral'] = 'DotGeneral'
    lhs: Any = None
    rhs: Any = None
    dimension_numbers: DimensionNumbers = (((), ()), ((), ()))
    precision: str | None = None
    batch_axis: int = 0
    channel_axis: int = -1

    @field_validator('lhs', 'rhs', mode='before')
    @classmethod
    def _to_const(cls, v):
        return _const(v)

    @field_validator('precision', mode='before')
    @classmethod
    def _prec(cls, v):
        return _precision_name(v)

    @field_validator('dimension_numbers', mode='before')
    @classmethod
    def _dims(cls, v):
        (lc, rc), (lb, rb) = v
        return ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))

    def model_post_init(self, __context):
        if self.lhs is not None and self.rhs is not None:
            raise ValueError('at most one of lhs and rhs can be given: the other operand is '
                             'the layer input')

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    @property
    def is_lhs(self) -> bool:
        """True when the constant is the left operand (the input is the right one)."""
        return self.rhs is None and self.lhs is not None

    def constant(self):
        c = self.lhs if self.is_lhs else self.rhs
        return None if c is None else np.asarray(c, dtype=float)

    def is_local(self) -> bool:
        """A scalar constant (or none): a per-position rescaling."""
        c = self.constant()
        return c is None or c.ndim == 0

    def input_dims(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(contracting, batch) dimensions of the input operand."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        return (rc, rb) if self.is_lhs else (lc, lb)

    def axis_after(self, i: int, ndim: int) -> int | None:
        """Output position of input axis i (None: contracted away)."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        c = self.constant()
        cnd = 0 if c is None else c.ndim
        contract, batch = self.input_dims()
        if i in contract:
            return None
        if i in batch:
            return batch.index(i)
        free = [a for a in range(ndim) if a not in contract and a not in batch]
        if self.is_lhs:
            return len(batch) + (cnd - len(lc) - len(lb)) + free.index(i)
        return len(batch) + free.index(i)

    def infer(self, ins, path):
        t = ins[0]
        c = self.constant()
        if c is None:
            return t
        contract, batch = self.input_dims()
        for dims in (contract, batch):
            for a in dims:
                if not 0 <= a < t.ndim:
                    raise ShapeError(f'dimension_numbers name axis {a} of an input of rank '
                                     f'{t.ndim} {t.describe()}', path=path)
        if t.channel in contract or t.channel in batch:
            raise ShapeError('DotGeneral cannot contract or batch the channel axis: it is '
                             'infinite in the kernel limit', path=path,
                             hint='contract spatial axes only, or set channel_axis')
        if t.batch in contract or t.batch in batch:
            raise ShapeError('DotGeneral over the batch axis mixes examples; no later layer '
                             'could use the result', path=path,
                             hint='contract spatial axes only, or set batch_axis')
        import jax
        shape = tuple(1 if d is None else d for d in t.shape)
        try:
            out = jax.eval_shape(self.apply_to, jax.ShapeDtypeStruct(shape, np.float32))
        except (TypeError, ValueError) as e:
            raise ShapeError(f'DotGeneral: {e}', path=path) from None
        b, ch = self.axis_after(t.batch, t.ndim), self.axis_after(t.channel, t.ndim)
        oshape = tuple(None if i == b else d for i, d in enumerate(out.shape))
        return TensorType(shape=oshape, batch_axis=b, channel_axis=ch,
                          is_gaussian=t.is_gaussian, is_fresh=t.is_fresh)

    def apply_to(self, x, precision=None):
        """The finite map on an activation-form array x."""
        import jax.numpy as jnp
        from jax import lax
        c = self.constant()
        if c is None:
            return x
        c = jnp.asarray(c, dtype=x.dtype)
        prec = precision if precision is not None else (
            None if self.precision is None else lax.Precision[self.precision])
        args = (c, x) if self.is_lhs else (x, c)
        return lax.dot_general(*args, self.dimension_numbers, prec)

    def spatial_need(self, out, in_type):
        if self.is_local():
            return super().spatial_need(out, in_type)
        return 'FULL' if in_type.spatial_axes else 'NONE'

    def marginal_need(self, out, in_type):
        if self.is_local() or out is None:
            return super().marginal_need(out, in_type)
        return 'FULL' if in_type.spatial_axes else 'NONE'

    def out_order(self, in_order, in_type, out_type):
        if self.is_local():
            return in_order
        return tuple(range(len(out_type.spatial_axes)))

    def entry_flops(self, in_types, out_type):
        c = self.constant()
        return 1.0 if c is None or c.ndim == 0 else 4.0 * c.size

    def label(self):
        c = self.constant()
        what = 'none' if c is None else ('lhs' if self.is_lhs else 'rhs') + str(c.shape)
        return f'DotGeneral({what}, dims={self.dimension_numbers})'


# One entry of an Index: an int, '...' (Ellipsis) or a slice as (start, stop, step).
IndexItem = Union[int, Literal['...'], tuple[Union[int, None], Union[int, None], Union[int, None]]]  # noqa: UP007


@register_op
class Index(Op):
    """numpy-style basic indexing `x[idx]` (build idx with `stax.Slice[...]`).  Slicing is
    spatially local: K'[o, o'] = K[sel(o), sel(o')]; an integer drops a spatial axis, a slice
    of the batch axis selects examples."""

    op: Literal['Index'] = 'Index'
    idx: tuple[IndexItem, ...]
    batch_axis: int = 0
    channel_axis: int = -1

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def python_index(self) -> tuple:
        """The index as Python objects (slices, ints, Ellipsis)."""
        return tuple(Ellipsis if i == '...' else slice(*i) if isinstance(i, tuple) else i
                     for i in self.idx)

    def per_axis(self, ndim: int, path: str = '') -> list:
        """One int or slice per input axis (Ellipsis expanded, missing trailing axes ':')."""
        idx = list(self.python_index())
        if idx.count(Ellipsis) > 1:
            raise ShapeError('an index can have only one ellipsis (...)', path=path)
        n_real = len(idx) - idx.count(Ellipsis)
        if n_real > ndim:
            raise ShapeError(f'index {self.idx} has {n_real} entries for an input of rank '
                             f'{ndim}', path=path)
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            idx[k:k + 1] = [slice(None)] * (ndim - n_real)
        return idx + [slice(None)] * (ndim - len(idx))

    def kept(self, t: TensorType) -> list[int]:
        """Input axes that survive (not removed by an integer)."""
        return [i for i, s in enumerate(self.per_axis(t.ndim)) if not isinstance(s, int)]

    def infer(self, ins, path):
        t = ins[0]
        per = self.per_axis(t.ndim, path)
        shape = []
        for i, (d, s) in enumerate(zip(t.shape, per)):
            if isinstance(s, int):
                if d is not None and not -d <= s < d:
                    raise ShapeError(f'index {s} is out of range for axis {i} of size {d}',
                                     path=path)
                continue
            if d is None:
                shape.append(None)
                continue
            n = len(range(*s.indices(d)))
            if n == 0:
                raise ShapeError(f'the slice {s} selects nothing of axis {i} (size {d})',
                                 path=path)
            shape.append(n)
        kept = self.kept(t)
        if len(kept) < 2:
            raise ShapeError(f'index {self.label()} leaves {len(kept)} axis of the input\'s '
                             f'{t.ndim}', path=path, hint='keep a batch and a channel axis')
        # an integer on the batch or channel axis (the finite network allows it, the kernel
        # does not): the first other kept axis plays the batch, the last the channel
        batch = t.batch if t.batch in kept else next(a for a in kept if a != t.channel)
        channel = t.channel if t.channel in kept else next(a for a in reversed(kept)
                                                           if a != batch)
        return TensorType(shape=tuple(shape), batch_axis=kept.index(batch),
                          channel_axis=kept.index(channel), is_gaussian=t.is_gaussian,
                          is_fresh=t.is_fresh)

    def _batch_selection(self, in_types):
        return self.per_axis(in_types[0].ndim)[in_types[0].batch]

    def batch_size(self, in_types, sizes):
        # an integer removes the batch axis: the axis taking its place has a fixed size, which
        # the output type holds (`Graph.batch_sizes` reads it there)
        sel = self._batch_selection(in_types)
        return 1 if isinstance(sel, int) else len(range(*sel.indices(sizes[0])))

    def moves_examples(self, in_types):
        sel = self._batch_selection(in_types)
        return isinstance(sel, int) or not (sel.start in (None, 0) and sel.stop is None
                                            and sel.step in (None, 1))

    def no_kernel(self, ins):
        t = ins[0]
        per = self.per_axis(t.ndim)
        if isinstance(per[t.batch], int):
            return ('an integer index on the batch axis removes it; the kernel needs a batch '
                    'axis', 'use a slice, e.g. Slice[3:4]')
        sel = per[t.channel]
        if isinstance(sel, int):
            return (f'an integer index ({sel}) on the channel axis leaves one channel, which '
                    'has no infinite-width kernel', "index spatial or batch axes only (':' on "
                    'the channel axis), or estimate the kernel with ntc.monte_carlo_kernel_fn')
        if range(*sel.indices(t.channels)) == range(t.channels):
            return None
        return (f'indexing the channel axis ({sel}) leaves finitely many channels, which has '
                'no infinite-width kernel',
                "index spatial or batch axes only (':' on the channel axis), or estimate the "
                'kernel with ntc.monte_carlo_kernel_fn')

    def spatial_need(self, out, in_type):
        if not in_type.spatial_axes:
            return 'NONE'
        return 'DIAG' if out == 'NONE' else out  # every axis dropped: the diagonal suffices

    def marginal_need(self, out, in_type):
        if out is None:
            return None
        return self.spatial_need(out, in_type)

    def out_order(self, in_order, in_type, out_type):
        per = self.per_axis(in_type.ndim)
        keep = [j for j, a in enumerate(in_type.spatial_axes) if not isinstance(per[a], int)]
        return tuple(keep.index(i) for i in in_order if i in keep)

    def label(self):
        parts = []
        for i in self.idx:
            if i == '...':
                parts.append('...')
            elif isinstance(i, tuple):
                a, b, c = ('' if v is None else str(v) for v in i)
                parts.append(f'{a}:{b}' + (f':{c}' if c else ''))
            else:
                parts.append(str(i))
        return f'Index[{", ".join(parts)}]'


RESIZE_METHODS = {
    'nearest': 'nearest', 'linear': 'linear', 'bilinear': 'linear', 'trilinear': 'linear',
    'triangle': 'linear', 'cubic': 'cubic', 'bicubic': 'cubic', 'tricubic': 'cubic',
    'lanczos3': 'lanczos3', 'lanczos5': 'lanczos5',
}


KERNEL_RESIZE_METHODS = ('linear', 'nearest')  # the methods whose kernel ntc (and NT) computes


@register_op
class ImageResize(Op):
    """`jax.image.resize` of the spatial axes (-1 keeps an axis).  Resizing is linear, so the
    kernel is the resize applied to both position indices of K; the kernel supports the
    'linear' and 'nearest' methods, as NT does."""

    op: Literal['ImageResize'] = 'ImageResize'
    shape: tuple[int, ...]
    method: str
    antialias: bool = True
    precision: str | None = 'HIGHEST'
    batch_axis: int = 0
    channel_axis: int = -1

    @field_validator('method', mode='before')
    @classmethod
    def _method(cls, v):
        name = getattr(v, 'name', v)
        name = name.lower() if isinstance(name, str) else name
        if name not in RESIZE_METHODS:
            raise ValueError(f'unknown resize method {v!r}; choose from '
                             f'{", ".join(sorted(RESIZE_METHODS))}')
        return RESIZE_METHODS[name]

    @field_validator('precision', mode='before')
    @classmethod
    def _prec(cls, v):
        return _precision_name(v)

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def out_shape(self, shape: tuple) -> tuple:
        return tuple(d if s == -1 else s for d, s in zip(shape, self.shape))

    def resized(self, t: TensorType) -> tuple[int, ...]:
        """Spatial axes (tensor positions) whose size changes."""
        return tuple(a for a in t.spatial_axes if self.shape[a] not in (-1, t.shape[a]))

    def no_kernel(self, ins):
        t = ins[0]
        if self.shape[t.channel] not in (-1, t.channels):
            return ('ImageResize of the channel axis has no infinite-width kernel',
                    f'set shape[{t.channel}] = -1')
        if self.resized(t) and self.method not in KERNEL_RESIZE_METHODS:
            return (f"the kernel of ImageResize supports the methods 'linear' and 'nearest', "
                    f'not {self.method!r} (as in neural-tangents)',
                    "use method='linear' or 'nearest', or estimate the kernel with "
                    'ntc.monte_carlo_kernel_fn')
        return None

    def infer(self, ins, path):
        t = ins[0]
        if len(self.shape) != t.ndim:
            raise ShapeError(f'shape {self.shape} has {len(self.shape)} entries for an input '
                             f'of rank {t.ndim} {t.describe()}', path=path,
                             hint='give one entry per axis, -1 to keep an axis')
        if self.shape[t.batch] != -1:
            raise ShapeError('ImageResize cannot resize the batch axis', path=path,
                             hint=f'set shape[{t.batch}] = -1')
        if any(s == 0 or s < -1 for s in self.shape):
            raise ShapeError(f'shape {self.shape} has an entry that is neither -1 nor positive',
                             path=path)
        return t.model_copy(update=dict(shape=self.out_shape(t.shape)))

    def spatial_need(self, out, in_type):
        if self.resized(in_type):
            return 'FULL'
        return super().spatial_need(out, in_type)

    def marginal_need(self, out, in_type):
        if self.resized(in_type) and out is not None:
            return 'FULL'
        return super().marginal_need(out, in_type)

    def out_order(self, in_order, in_type, out_type):
        if self.resized(in_type):
            return tuple(range(len(out_type.spatial_axes)))
        return in_order

    def entry_flops(self, in_types, out_type):
        return 8.0 * len(self.resized(in_types[0]) or (0,))


# ----------------------------------------------------------------------------- rules


@kernel_rule(Flatten)
def flatten_kernel(ctx, node, k):
    """K' = mean over positions of the diagonal K[s, s] (needs DIAG input)."""
    return reduce_spatial(k, jnp.mean)


@kernel_rule(Transpose)
def transpose_kernel(ctx, node, k):
    """Permute the stored spatial axes to `order` (pairs move together when FULL)."""
    new = node.op.order
    old = k.layout.axis_order
    src = [old.index(i) for i in new]

    def perm(x, lead, spatial):
        if x is None:
            return None
        width = 2 if spatial == 'FULL' else 1
        axes = list(range(lead))
        for p in src:
            axes += [lead + width * p + w for w in range(width)]
        return jnp.transpose(x, axes)

    sp, mg = k.layout.spatial, k.layout.marginal
    return k.replace(nngp=perm(k.nngp, 2, sp), ntk=perm(k.ntk, 2, sp),
                     cov1=perm(k.cov1, 1, mg), cov2=perm(k.cov2, 1, mg),
                     layout=k.layout.model_copy(update=dict(axis_order=new)))


@finite_rule(Flatten)
def flatten_apply(op, params, inputs, ctx):
    (x,) = inputs
    y = jnp.moveaxis(x, op.batch_axis, 0).reshape(x.shape[op.batch_axis], -1)
    return y if op.batch_axis_out % 2 == 0 else y.T


@finite_rule(Transpose)
def transpose_apply(op, params, inputs, ctx):
    return inputs[0]


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


@kernel_rule(DotGeneral)
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


@finite_rule(DotGeneral)
def dot_general_apply(op, params, inputs, ctx):
    return op.apply_to(inputs[0])


@kernel_rule(Index)
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


@finite_rule(Index)
def index_apply(op, params, inputs, ctx):
    return inputs[0][op.python_index()]


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


@kernel_rule(ImageResize)
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


@finite_rule(ImageResize)
def image_resize_apply(op, params, inputs, ctx):
    return resize(op, inputs[0])


# ----------------------------------------------------------------------------- masks


@mask_rule(Index)
def _index_mask(op, masks, in_types, out_type):
    """The mask is indexed like the activations (the channel index is trivial)."""
    (m,), (t,) = masks, in_types
    per = op.per_axis(t.ndim)
    return m[(per[t.batch],) + tuple(per[a] for a in t.spatial_axes)]


@mask_rule(DotGeneral)
def _dot_general_mask(op, masks, in_types, out_type):
    """An output position is masked when every input entry it sums over is: the same
    dot_general of the unmasked indicator with the constant's non-zero pattern is zero there."""
    (m,), (t,) = masks, in_types
    c = op.constant()
    if c is None:
        return m
    live = masking.to_tensor(~m, t).astype(jnp.float32)  # a channel axis of size 1
    pattern = (jnp.asarray(c) != 0).astype(jnp.float32)
    args = (pattern, live) if op.is_lhs else (live, pattern)
    out = lax.dot_general(*args, op.dimension_numbers) == 0
    pos = jnp.all(out, axis=out_type.channel)
    b = out_type.batch if out_type.batch < out_type.channel else out_type.batch - 1
    return jnp.moveaxis(pos, b, 0)


@mask_rule(Flatten)
def _flatten_mask(op, masks, in_types, out_type):
    """An example is masked when all its positions are."""
    (m,) = masks
    return jnp.all(m.reshape(m.shape[0], -1), axis=1)
