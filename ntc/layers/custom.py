"""Custom layers written for neural_tangents: an opaque op around the user's own
``(init_fn, apply_fn, kernel_fn)``.

neural_tangents lets a user write a layer as a function returning the triple, decorated with
`stax.layer`; `stax.requires(...)` on the kernel function says what covariances it needs
(`diagonal_batch=False`: the marginals over every pair of examples; `diagonal_spatial=False` or
`Diagonal(input=Bool.NO)`: every pair of positions), and `stax.supports_masking` says its
`apply_fn` takes a `mask=` and how it moves masks.  Here such a layer is one `NTLayer` node:

- its shape rule runs the user's `init_fn` abstractly (`jax.eval_shape`);
- its layout needs come from the requirements: a FULL spatial input unless diagonal inputs are
  allowed, the joint (batch FULL) layout of the whole graph when it needs `diagonal_batch=False`
  (`needs_joint_batch`), and always the per-example marginals (NT's kernels carry them);
- its kernel rule hands the user's `kernel_fn` an `NTKernel` (NT's field names and storage:
  spatial axes in tensor order, cov1 (N1, ...) or (N1, N1, ...)) and reads the result back;
- its finite rules call `init_fn` and `apply_fn`.

In the joint layout the view is the kernel of the concatenated batch with itself
(``x1_is_x2=True``), so the rule's `nngp` is directly the joint Gram matrix.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from ..covariance import masking
from ..covariance.kernel import Kernel, batch_diag, diag_to
from ..errors import ShapeError
from ..ir.op import Op
from ..ir.registry import finite_rule, kernel_rule, mask_rule, register_op
from ..ir.types import CovType, TensorType

# ----------------------------------------------------------------------------- requirements


class Bool(enum.IntEnum):
    """Three-valued logic of NT's `Diagonal` requirement: NO < MAYBE < YES; `&` is the minimum."""

    NO = 0
    MAYBE = 1
    YES = 2

    def __and__(self, other: Bool) -> Bool:
        return Bool(min(self, other))

    __rand__ = __and__


@dataclass(frozen=True)
class Diagonal:
    """Whether a layer's kernel may hold only the diagonal entries (NT's `Diagonal`).

    `input`: whether the layer accepts a diagonal-only input kernel (MAYBE: when off-diagonal
    entries are zero); `output`: whether the kernels from this layer to the network output may
    be diagonal-only.  `a >> b` is the requirement of `b` applied after `a` (`b << a` the same),
    `a & b` of `a` and `b` in parallel; `bool(d)` says whether a diagonal kernel results."""

    input: Bool = Bool.YES
    output: Bool = Bool.NO

    def __rshift__(self, other: Diagonal) -> Diagonal:
        if self.output == Bool.YES:  # everything after `self` may be diagonal: `other` is moot
            return self
        if self.output == Bool.NO:
            accepted = Bool.NO if other.input != Bool.YES else self.input
        elif other.input == Bool.NO:
            accepted = Bool.NO
        else:
            accepted = self.input
        return Diagonal(input=accepted, output=other.output)

    def __lshift__(self, other: Diagonal) -> Diagonal:
        return other >> self

    def __and__(self, other: Diagonal) -> Diagonal:
        return Diagonal(input=self.input & other.input, output=self.output & other.output)

    __rand__ = __and__

    def __bool__(self) -> bool:
        return self.input == Bool.YES and self.output != Bool.NO


REQUIREMENTS_ATTR = '_ntc_requirements'


def requirements_of(kernel_fn: Callable) -> dict:
    """The requirements `stax.requires` attached to `kernel_fn` ({} when none)."""
    return dict(getattr(kernel_fn, REQUIREMENTS_ATTR, {}))


def accepts_diagonal(value) -> bool:
    """Whether a `diagonal_batch` / `diagonal_spatial` requirement accepts a diagonal input
    (None, True and Diagonal(input=YES or MAYBE) do)."""
    if value is None:
        return True
    if isinstance(value, Diagonal):
        return value.input != Bool.NO
    return bool(value)


# ----------------------------------------------------------------------------- the op


@register_op
class NTLayer(Op):
    """A layer given as neural_tangents functions ``(init_fn, apply_fn, kernel_fn)``."""

    op: Literal['NTLayer'] = 'NTLayer'
    name: str
    init_fn: Callable
    apply_fn: Callable
    kernel_fn: Callable
    diagonal_batch: bool = True  # the kernel_fn accepts per-example marginals cov1 (N1, ...)
    diagonal_spatial: bool = True  # it accepts a spatially diagonal input kernel
    batch_axis: int | None = None
    channel_axis: int | None = None
    masking: bool = False  # `apply_fn` takes `mask=` (stax.supports_masking)
    mask_fn: Callable | None = None  # `mask_fn(mask, input_shape) -> mask`
    in_specs: ClassVar[bool] = False

    def label(self) -> str:
        return self.name

    def infer(self, ins: list[TensorType], path: str) -> TensorType:
        """The output shape `init_fn` returns for the input shape (run abstractly)."""
        t = ins[0]
        shape = output_shape(self.init_fn, t)
        if len(shape) < 2:
            raise ShapeError(f'{self.name} returns outputs of shape {shape}', path=path,
                             hint='a layer keeps a batch axis and a channel axis')
        b = t.batch if t.batch < len(shape) else 0
        c = t.channel if len(shape) == t.ndim else len(shape) - 1
        if b == c:
            b, c = 0, len(shape) - 1
        shape = tuple(None if i == b else (None if d is None or d < 0 else int(d))
                      for i, d in enumerate(shape))
        return TensorType(shape=shape, batch_axis=b, channel_axis=c)

    def input_axes(self, ndim: int) -> tuple[int, int] | None:
        if self.batch_axis is None and self.channel_axis is None:
            return None
        b = 0 if self.batch_axis is None else self.batch_axis
        c = -1 if self.channel_axis is None else self.channel_axis
        return b % ndim, c % ndim

    def spatial_need(self, out, in_type):
        if not in_type.spatial_axes:
            return 'NONE'
        return out if self.diagonal_spatial and out == 'DIAG' else 'FULL'

    def marginal_need(self, out, in_type):
        return 'FULL' if in_type.spatial_axes else 'NONE'

    def out_order(self, in_order, in_type, out_type):
        return tuple(range(len(out_type.spatial_axes)))

    def needs_joint_batch(self) -> bool:
        return not self.diagonal_batch


def nt_shape(t: TensorType, batch: int = -1) -> tuple[int, ...]:
    """`t`'s shape as NT writes it, the batch entry `batch`."""
    return tuple(batch if i == t.batch else d for i, d in enumerate(t.shape))


def output_shape(init_fn: Callable, t: TensorType) -> tuple[int, ...]:
    """The output shape `init_fn(key, input_shape)` returns, without computing parameters."""
    found = []

    def shape_only(key):
        out_shape, params = init_fn(key, nt_shape(t))
        found.append(tuple(out_shape))
        return params

    jax.eval_shape(shape_only, jax.random.PRNGKey(0))
    return found[0]


# ----------------------------------------------------------------------------- NT's Kernel view


@dataclass(frozen=True)
class NTKernel:
    """What a neural_tangents `kernel_fn` receives and returns: NT's `Kernel` fields, arrays
    stored as NT stores them (spatial axes in tensor order; FULL spatial as (N1, N2, a, a', b,
    b', ...), diagonal as (N1, N2, a, b, ...); cov1 (N1, ...) when `diagonal_batch`, otherwise
    (N1, N1, ...))."""

    nngp: Any
    ntk: Any
    cov1: Any
    cov2: Any
    x1_is_x2: bool
    is_gaussian: bool
    is_reversed: bool
    is_input: bool
    diagonal_batch: bool
    diagonal_spatial: bool
    shape1: tuple
    shape2: tuple
    batch_axis: int
    channel_axis: int
    mask1: Any = None
    mask2: Any = None
    extra: dict = field(default_factory=dict)

    def replace(self, **kw) -> NTKernel:
        return replace(self, **kw)


def tensor_order(x, order: tuple[int, ...], spatial: str, lead: int):
    """A covariance stored with its spatial axes in `order` moved to tensor order."""
    if spatial == 'NONE' or list(order) == sorted(order):
        return x
    per_axis = 2 if spatial == 'FULL' else 1
    perm = list(range(lead))
    for axis in range(len(order)):
        start = lead + per_axis * order.index(axis)
        perm += list(range(start, start + per_axis))
    return jnp.transpose(x, perm)


def to_nt(k: Kernel, t: TensorType, op: NTLayer, is_input: bool) -> NTKernel:
    """The NT view of the input kernel `k` of a value of type `t`."""
    lay, ns = k.layout, len(k.layout.axis_order)

    def natural(x, lead):
        return None if x is None else tensor_order(x, lay.axis_order, lay.spatial, lead)

    nngp, ntk = natural(k.nngp, 2), natural(k.ntk, 2)
    if k.joint:  # the concatenated batch with itself
        cov1 = nngp if not op.diagonal_batch else batch_diag(nngp, ns)
        cov2, same = None, True
    else:
        def marginal(c):
            return natural(diag_to(c, ns, lay.marginal, lay.spatial, 1), 1)
        cov1 = marginal(k.cov1)
        cov2 = None if k.cov2 is None else marginal(k.cov2)
        same = k.cov2 is None
    n1, n2 = nngp.shape[0], nngp.shape[1]
    return NTKernel(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, x1_is_x2=same,
                    is_gaussian=t.is_gaussian, is_reversed=False, is_input=is_input,
                    diagonal_batch=op.diagonal_batch,
                    diagonal_spatial=lay.spatial == 'DIAG', shape1=nt_shape(t, n1),
                    shape2=nt_shape(t, n2), batch_axis=t.batch, channel_axis=t.channel)


def from_nt(view: NTKernel, k: Kernel, out: TensorType) -> Kernel:
    """ntc's kernel of the layer's output from the NT view the user's kernel_fn returned (in
    the input's batch layout, spatial axes in tensor order)."""
    ns = len(out.spatial_axes)
    spatial = 'NONE' if ns == 0 else ('DIAG' if view.diagonal_spatial else 'FULL')
    order = tuple(range(ns))
    if k.joint:
        lay = CovType(batch='FULL', spatial=spatial, axis_order=order)
        return k.replace(nngp=view.nngp, ntk=view.ntk, cov1=None, cov2=None, layout=lay)
    lay = CovType(batch='DIAG', spatial=spatial,
                  marginal=None if view.cov1 is None else spatial, axis_order=order)
    return k.replace(nngp=view.nngp, ntk=view.ntk, cov1=view.cov1,
                     cov2=None if view.x1_is_x2 else view.cov2, layout=lay)


@kernel_rule(NTLayer)
def _nt_layer_kernel(ctx, node, k):
    """The user's kernel_fn on the NT view of the input kernel."""
    src = ctx.graph.node(ctx.graph.inputs(node.id)[0])
    view = to_nt(k, ctx.in_type(node), node.op, is_input=src.op.arity == 0)
    if not ctx.want_ntk:
        view = view.replace(ntk=None)
    return from_nt(node.op.kernel_fn(view), k, node.ttype)


# ----------------------------------------------------------------------------- finite network


def _init(key, op: NTLayer, in_types):
    return op.init_fn(key, nt_shape(in_types[0]))[1]


@finite_rule(NTLayer, init=_init)
def _nt_layer_apply(op: NTLayer, params, inputs, ctx):
    kwargs = dict(ctx.kwargs)
    if op.masking:
        x, t = inputs[0], ctx.in_types[0]
        kwargs['mask'] = None if ctx.mask is None else masking.to_tensor(ctx.mask, t, x.shape)
    return op.apply_fn(params, inputs[0], rng=ctx.rng, **kwargs)


@mask_rule(NTLayer)
def _nt_layer_mask(op: NTLayer, masks, in_types, out_type):
    """The user's `mask_fn` on NT's entry masks (position masks broadcast over channels), read
    back as position masks; without one, a shape-preserving layer keeps the mask."""
    (m,), (t,) = masks, in_types
    if op.mask_fn is None:
        if t.spatial_shape != out_type.spatial_shape:
            raise ShapeError(f'{op.name} changes the spatial shape but has no mask_fn, so masked '
                             'inputs (mask_constant=...) cannot pass through it',
                             hint='return a fourth function mask_fn(mask, input_shape) from the '
                                  'layer under stax.supports_masking')
        return m
    shape = nt_shape(t, m.shape[0])
    out = jnp.asarray(op.mask_fn(masking.to_tensor(m, t, shape), shape), bool)
    out = jnp.broadcast_to(out, nt_shape(out_type, m.shape[0]))
    pos = jnp.all(out, axis=out_type.channel)
    b = out_type.batch if out_type.batch < out_type.channel else out_type.batch - 1
    return jnp.moveaxis(pos, b, 0)
