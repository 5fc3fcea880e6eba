"""Op attribute models: one frozen pydantic model per op kind, joined in a discriminated union.

Each model holds the layer's arguments (validated here, so a bad value is rejected with the
field's name) and declares the op's static semantics beside them:

- `arity`: how many inputs it takes (None: a fan-in of two or more);
- `infer`: its shape rule, TensorType(s) in -> TensorType out;
- `spatial_need` / `marginal_need`: the covariance layout it needs from its input, given the
  layout its consumers need from its output (read by the `choose_layouts` pass);
- `flops_per_entry`: the cost of its kernel rule per stored covariance entry (the `cost` pass).

Kernel rules (ntc/lower/rules_*.py) and finite-network rules are keyed by the `op` field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
)

from ..errors import ShapeError
from .types import SPATIAL_RANK, Spatial, TensorType

NonNegFloat = Annotated[float, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]


def max_spatial(*levels: Spatial | None) -> Spatial | None:
    """The strongest of several spatial layout requirements (None: nothing required)."""
    present = [lv for lv in levels if lv is not None]
    return max(present, key=SPATIAL_RANK.__getitem__) if present else None


class Op(BaseModel):
    """Base of every op model."""

    # every float field must be finite (W_std=inf, LeakyRelu(nan), 1e400 in a spec are refused)
    model_config = ConfigDict(frozen=True, extra='forbid', arbitrary_types_allowed=True,
                              allow_inf_nan=False)

    arity: ClassVar[int | None] = 1
    needs_gaussian: ClassVar[bool] = False
    creates_fresh: ClassVar[bool] = False  # a random affine map with weights of its own
    flops_per_entry: ClassVar[float] = 1.0
    serializable: ClassVar[bool] = True

    @property
    def kind(self) -> str:
        return self.op  # type: ignore[attr-defined]

    def args(self) -> dict[str, Any]:
        """The layer's arguments (everything but the discriminator)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != 'op'}

    def infer(self, ins: list[TensorType], path: str) -> TensorType:
        """Shape rule: the output TensorType.  Default: same shape, not Gaussian, not fresh."""
        return ins[0].model_copy(update=dict(is_gaussian=False, is_fresh=False))

    def spatial_need(self, out: Spatial, in_type: TensorType) -> Spatial:
        """Spatial layout needed of the input's cross kernel.  Default: spatially local."""
        return out if in_type.spatial_axes else 'NONE'

    def marginal_need(self, out: Spatial | None, in_type: TensorType) -> Spatial | None:
        """Spatial layout needed of the input's marginals (None: not needed).  Default: what
        the output's marginals need (computing them needs the input's)."""
        if out is None:
            return None
        return out if in_type.spatial_axes else 'NONE'

    def out_order(self, in_order: tuple[int, ...], in_type: TensorType,
                  out_type: TensorType) -> tuple[int, ...]:
        """Storage order of the output's spatial axes given the input's (`fuse_transposes`).
        Default: unchanged, or () when the output has no spatial axes."""
        return in_order if out_type.spatial_axes else ()

    def entry_flops(self, in_types: list[TensorType], out_type: TensorType) -> float:
        """FLOPs of the kernel rule per stored output entry (the `cost` pass)."""
        return self.flops_per_entry

    def reads_neighbours(self) -> bool:
        """True when each output entry reads several entries of the input covariance (a
        stencil), so a fused producer would be recomputed once per read."""
        return False

    def independent_of_input(self) -> bool:
        """True when, at infinite width, the output is independent of every random value its
        input depends on: a random affine map whose own weights (or bias) are random, so its
        output is a fresh Gaussian field (read by the `check` pass)."""
        return False

    def branch_need(self, out: TensorType) -> Literal['independent', 'uncorrelated'] | None:
        """What the kernel rule of a fan-in assumes of its branches (the `check` pass):
        'independent' (a product), 'uncorrelated' (a sum: zero cross second moments), or
        None (no assumption)."""
        return None

    def no_kernel(self, ins: list[TensorType]) -> tuple[str, str] | None:
        """(reason, fix) when this layer has no infinite-width kernel for inputs of types
        `ins`, None when it has one.  The `check` pass turns it into a compile-time
        NoClosedFormError; the finite network (init_fn, apply_fn) does not read it."""
        return None

    def label(self) -> str:
        """Short text for plans: kind and non-default arguments."""
        defaults = {k: f.default for k, f in type(self).model_fields.items()}
        parts = []
        for k, v in self.args().items():
            if v == defaults.get(k, object()):
                continue
            if callable(v):
                v = getattr(v, '__name__', 'fn')
            elif isinstance(v, float):
                v = f'{v:g}'
            parts.append(f'{k}={v}')
        return f'{self.kind}({", ".join(parts)})' if parts else self.kind


# ----------------------------------------------------------------------------- structure


class Input(Op):
    """The network's input value (the data)."""

    op: Literal['Input'] = 'Input'
    arity: ClassVar[int | None] = 0


class Identity(Op):
    op: Literal['Identity'] = 'Identity'
    flops_per_entry: ClassVar[float] = 0.0

    def infer(self, ins, path):
        return ins[0]


class FanOut(Op):
    """Copies its input `num` times (a structural op of the builder tree; in the graph a fan-out
    is simply a value with several consumers)."""

    op: Literal['FanOut'] = 'FanOut'
    num: PosInt


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


class FanInProd(Op):
    """Elementwise product of the branches (kernel = product of the branch kernels)."""

    op: Literal['FanInProd'] = 'FanInProd'
    arity: ClassVar[int | None] = None

    def branch_need(self, out):
        return 'independent'  # E[Π a_i a_i'] = Π E[a_i a_i'] needs independent branches

    def infer(self, ins, path):
        _same_shapes(ins, path, 'FanInProd')
        return ins[0].model_copy(update=dict(is_gaussian=False, is_fresh=False))


class FanInConcat(Op):
    """Concatenation of the branches along `axis` (the channel axis, or a spatial axis)."""

    op: Literal['FanInConcat'] = 'FanInConcat'
    arity: ClassVar[int | None] = None
    axis: int = -1

    def branch_need(self, out):
        # along channels the kernel is the channel-weighted mean, whatever the correlations;
        # along space the cross blocks between branches are taken to be zero
        return None if self.axis % out.ndim == out.channel else 'uncorrelated'

    def infer(self, ins, path):
        t0 = ins[0]
        if not -t0.ndim <= self.axis < t0.ndim:
            raise ShapeError(f'axis={self.axis} is out of range for branches of rank {t0.ndim} '
                             f'{t0.describe()}', path=path,
                             hint=f'choose an axis in [{-t0.ndim}, {t0.ndim - 1}] other than '
                             f'the batch axis ({t0.batch})')
        axis = self.axis % t0.ndim
        if axis == t0.batch:
            raise ShapeError('cannot concatenate along the batch axis', path=path,
                             hint='use a channel or spatial axis')
        for i, t in enumerate(ins[1:], 1):
            if t.ndim != t0.ndim or any(a != b for j, (a, b) in enumerate(zip(t.shape, t0.shape))
                                        if j not in (axis, t0.batch)):
                raise ShapeError(f'branch {i} has shape {t.describe()}, incompatible with branch 0 '
                                 f'{t0.describe()} for concatenation along axis {self.axis}',
                                 path=path)
        shape = list(t0.shape)
        shape[axis] = sum(t.shape[axis] for t in ins)
        return t0.model_copy(update=dict(
            shape=tuple(shape), is_gaussian=all(t.is_gaussian for t in ins),
            is_fresh=all(t.is_fresh for t in ins)))


def _same_shapes(ins: list[TensorType], path: str, what: str) -> None:
    for i, t in enumerate(ins[1:], 1):
        if t.shape != ins[0].shape:
            raise ShapeError(f'{what} needs branches of one shape; branch {i} is {t.describe()}, '
                             f'branch 0 is {ins[0].describe()}', path=path)


# ----------------------------------------------------------------------------- affine


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

    def weight_term(self, fan_in: int) -> float:
        """The NTK's weight-gradient factor d in Θ' = c Θ + d K + e under the standard
        parameterization: the base width fan_in / s[0] (Sohl-Dickstein et al. 2020)."""
        return fan_in / self.s[0]

    @field_validator('parameterization', mode='before')
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v


class Dense(_AffineBase):
    """Fully connected layer acting on the channel axis (at every spatial position)."""

    op: Literal['Dense'] = 'Dense'
    out_dim: PosInt
    batch_axis: int = 0
    channel_axis: int = -1
    flops_per_entry: ClassVar[float] = 2.0
    creates_fresh: ClassVar[bool] = True

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


class Affine(Op):
    """A folded chain of affine layers (made by `canonicalize`): K -> a K + b and
    Θ -> c Θ + d K + e, applied per position.  `folded` lists the layers it replaces."""

    op: Literal['Affine'] = 'Affine'
    a: float
    b: float
    c: float
    d: float
    e: float
    out_dim: int
    folded: tuple[str, ...] = ()
    flops_per_entry: ClassVar[float] = 2.0
    creates_fresh: ClassVar[bool] = True

    def infer(self, ins, path):
        t = ins[0]
        shape = list(t.shape)
        shape[t.channel] = self.out_dim
        return t.model_copy(update=dict(shape=tuple(shape), is_gaussian=True, is_fresh=True))


# ----------------------------------------------------------------------------- convolutions

Padding = Literal['VALID', 'SAME', 'CIRCULAR']
SPATIAL_LETTERS = 'DHW'


def default_dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
    """NHWC-style specs for `n_spatial` spatial axes (NT's default)."""
    letters = SPATIAL_LETTERS[-n_spatial:] if n_spatial <= 3 else \
        ''.join(chr(ord('A') + i) for i in range(n_spatial))
    return 'N' + letters + 'C', letters + 'IO', 'N' + letters + 'C'


def out_size(n: int, k: int, s: int, padding: str) -> int:
    """Output length of a window of size k and stride s over n positions."""
    if padding == 'VALID':
        return (n - k) // s + 1
    return -(-n // s)  # SAME and CIRCULAR: ceil(n / s)


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """(low, high) zero padding of XLA's SAME convention."""
    total = max((out_size(n, k, s, 'SAME') - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class _WindowBase(Op):
    """Fields and checks shared by convolutions and pooling."""

    strides: tuple[PosInt, ...] | None = None
    padding: Padding = 'VALID'

    @field_validator('padding', mode='before')
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v

    def window(self) -> tuple[int, ...]:
        raise NotImplementedError

    def reads_neighbours(self) -> bool:
        return any(k > 1 for k in self.window())

    def stride_tuple(self) -> tuple[int, ...]:
        return self.strides if self.strides is not None else (1,) * len(self.window())

    def check_window(self, sizes: tuple[int, ...], path: str, what: str):
        win, strides = self.window(), self.stride_tuple()
        if len(strides) != len(win):
            raise ShapeError(f'{len(strides)} strides for a {len(win)}-d window', path=path)
        for n, k in zip(sizes, win):
            if self.padding == 'VALID' and k > n:
                raise ShapeError(f'the {what} ({k}) is larger than the input ({n}) under VALID '
                                 'padding', path=path, hint="use padding='SAME' or a smaller "
                                 f'{what}')
        check_window_bound(win, sizes, self.padding, path, what)


def check_window_bound(win: tuple[int, ...], sizes: tuple[int, ...], padding: str, path: str,
                       what: str) -> None:
    """Refuse a window longer than max(2n, WINDOW_SLACK) over an axis of n positions: its outer
    taps read nothing but padding, and lowering costs time linear in the window's length."""
    for n, k in zip(sizes, win):
        if n is not None and k > max(2 * n, WINDOW_SLACK):
            raise ShapeError(f'the {what} ({k}) is far larger than the input ({n}) under '
                             f'{padding} padding: taps beyond {2 * n} read only padding',
                             path=path, hint=f'use a {what} of at most {max(2 * n, WINDOW_SLACK)}')


#: windows up to this long are accepted over any input (e.g. 3×3 filters on a 1×1 image)
WINDOW_SLACK = 32


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
        if not t.spatial_axes:
            raise ShapeError(f'{self.kind} needs an input with spatial axes, got {t.describe()}',
                             path=path, hint='give the input spatial axes (N, H, W, C), or use '
                             'Dense after Flatten')
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


class Conv(_ConvBase):
    """Convolution (NTK or standard parameterization)."""

    op: Literal['Conv'] = 'Conv'


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


class _PoolBase(_WindowBase):
    """Pooling over the spatial axes (in tensor order)."""

    window_shape: tuple[PosInt, ...]
    batch_axis: int = 0
    channel_axis: int = -1

    def window(self):
        return self.window_shape

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def infer(self, ins, path):
        t = ins[0]
        if len(self.window_shape) != len(t.spatial_axes):
            raise ShapeError(f'a {len(self.window_shape)}-d window for an input with '
                             f'{len(t.spatial_axes)} spatial axes {t.describe()}', path=path,
                             hint='give one window size per spatial axis')
        self.check_window(t.spatial_shape, path, 'window')
        shape = list(t.shape)
        for ax, k, s in zip(t.spatial_axes, self.window_shape, self.stride_tuple()):
            shape[ax] = out_size(t.shape[ax], k, s, self.padding)
        return t.model_copy(update=dict(shape=tuple(shape)))

    def spatial_need(self, out, in_type):
        return 'FULL'  # a window mixes neighbouring positions

    def marginal_need(self, out, in_type):
        return None if out is None else 'FULL'

    def entry_flops(self, in_types, out_type):
        return 4.0 * sum(self.window_shape)


class AvgPool(_PoolBase):
    """Average pooling; `normalize_edges` divides by the number of in-bounds positions."""

    op: Literal['AvgPool'] = 'AvgPool'
    normalize_edges: bool = False


class SumPool(_PoolBase):
    op: Literal['SumPool'] = 'SumPool'


class _GlobalPoolBase(Op):
    batch_axis: int = 0
    channel_axis: int = -1

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def infer(self, ins, path):
        t = ins[0]
        if not t.spatial_axes:
            raise ShapeError(f'{self.kind} needs spatial axes to pool over, got {t.describe()}',
                             path=path)
        return TensorType(shape=(None, t.channels), batch_axis=0, channel_axis=1,
                          is_gaussian=t.is_gaussian, is_fresh=t.is_fresh)

    def spatial_need(self, out, in_type):
        return 'FULL'

    def marginal_need(self, out, in_type):
        return None if out is None else 'FULL'


class GlobalAvgPool(_GlobalPoolBase):
    op: Literal['GlobalAvgPool'] = 'GlobalAvgPool'


class GlobalSumPool(_GlobalPoolBase):
    op: Literal['GlobalSumPool'] = 'GlobalSumPool'


class Flatten(Op):
    """Flattens all non-batch axes into one channel axis."""

    op: Literal['Flatten'] = 'Flatten'
    batch_axis: int = 0
    batch_axis_out: int = 0

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


class Transpose(Op):
    """Permutes the storage order of a covariance's spatial axes (inserted by
    `fuse_transposes` where two orders meet).  It does not change the finite network."""

    op: Literal['Transpose'] = 'Transpose'
    order: tuple[int, ...]

    def infer(self, ins, path):
        return ins[0]

    def out_order(self, in_order, in_type, out_type):
        return self.order


# ----------------------------------------------------------------------------- nonlinearities


class Nonlinearity(Op):
    """An elementwise nonlinearity φ.  Its kernel rule maps (K12, K11, K22) to E[φ(u)φ(v)]
    and E[φ'(u)φ'(v)] for (u, v) Gaussian with that covariance."""

    needs_gaussian: ClassVar[bool] = True
    flops_per_entry: ClassVar[float] = 20.0

    def marginal_need(self, out, in_type):
        # reads the variance at every position, whatever its consumers need
        return max_spatial(out, 'DIAG' if in_type.spatial_axes else 'NONE')


class ABRelu(Nonlinearity):
    """φ(x) = a·min(x, 0) + b·max(x, 0)."""

    op: Literal['ABRelu'] = 'ABRelu'
    a: float
    b: float
    do_stabilize: bool = False


class Relu(Nonlinearity):
    op: Literal['Relu'] = 'Relu'
    do_stabilize: bool = False


class LeakyRelu(Nonlinearity):
    op: Literal['LeakyRelu'] = 'LeakyRelu'
    alpha: float
    do_stabilize: bool = False


class Abs(Nonlinearity):
    op: Literal['Abs'] = 'Abs'
    do_stabilize: bool = False


class Erf(Nonlinearity):
    """φ(x) = a·erf(b·x) + c."""

    op: Literal['Erf'] = 'Erf'
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


class Sigmoid_like(Nonlinearity):  # noqa: N801 (NT's name)
    """φ(x) = erf(x / 2.4020563531719796) / 2 + 1/2, a sigmoid-like function with an Erf kernel."""

    op: Literal['Sigmoid_like'] = 'Sigmoid_like'


class Gelu(Nonlinearity):
    """φ(x) = x·Φ(x); `approximate` uses the tanh form in the finite network only."""

    op: Literal['Gelu'] = 'Gelu'
    approximate: bool = False


class Sin(Nonlinearity):
    """φ(x) = a·sin(b·x + c)."""

    op: Literal['Sin'] = 'Sin'
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


class Cos(Nonlinearity):
    """φ(x) = a·cos(b·x + c)."""

    op: Literal['Cos'] = 'Cos'
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


class Exp(Nonlinearity):
    """φ(x) = a·exp(b·x)."""

    op: Literal['Exp'] = 'Exp'
    a: float = 1.0
    b: float = 1.0


class ExpNormalized(Nonlinearity):
    """The "Gaussian normalised kernel" of Shankar et al. 2020 ("Neural Kernels Without
    Tangents", p. 6), applied to the covariance; it has no finite-network form."""

    op: Literal['ExpNormalized'] = 'ExpNormalized'
    gamma: float = 1.0
    shift: float = -1.0
    do_clip: bool = False


class Gaussian(Nonlinearity):
    """φ(x) = a·exp(b·x²)."""

    op: Literal['Gaussian'] = 'Gaussian'
    a: float = 1.0
    b: float = -1.0


class Rbf(Nonlinearity):
    """φ(x) = sqrt(2)·sin(sqrt(2γ)·x + π/4), whose kernel is exp(-γ‖x1 - x2‖²)."""

    op: Literal['Rbf'] = 'Rbf'
    gamma: Annotated[float, Field(gt=0)] = 1.0


class Sign(Nonlinearity):
    op: Literal['Sign'] = 'Sign'


class Gabor(Nonlinearity):
    """φ(x) = exp(-x²)·sin(x)."""

    op: Literal['Gabor'] = 'Gabor'


class Monomial(Nonlinearity):
    """φ(x) = x**degree."""

    op: Literal['Monomial'] = 'Monomial'
    degree: Annotated[int, Field(ge=0)]


class RectifiedMonomial(Nonlinearity):
    """φ(x) = max(x, 0)**degree (the arc-cosine kernel of that order)."""

    op: Literal['RectifiedMonomial'] = 'RectifiedMonomial'
    degree: Annotated[int, Field(ge=0)]


class Polynomial(Nonlinearity):
    """φ(x) = Σ_i coef[i]·x**i."""

    op: Literal['Polynomial'] = 'Polynomial'
    coef: tuple[float, ...]


class Hermite(Nonlinearity):
    """φ(x) = He_degree(x)/sqrt(degree!), the normalised probabilists' Hermite polynomial."""

    op: Literal['Hermite'] = 'Hermite'
    degree: Annotated[int, Field(ge=0)]


class Elementwise(Nonlinearity):
    """A user nonlinearity `fn` with its NNGP map `nngp_fn(cov12, var1, var2)` and, optionally,
    `d_nngp_fn` for the NTK (otherwise ∂nngp_fn/∂cov12 by autodiff, Price's theorem)."""

    op: Literal['Elementwise'] = 'Elementwise'
    fn: Callable | None = None
    nngp_fn: Callable | None = None
    d_nngp_fn: Callable | None = None
    serializable: ClassVar[bool] = False

    def no_kernel(self, ins):
        if self.nngp_fn is not None:
            return None
        return ('Elementwise was given no nngp_fn, so it has no kernel',
                'pass nngp_fn=..., use ElementwiseNumerical(fn, deg) for a numerical kernel, or '
                'estimate the kernel with ntc.monte_carlo_kernel_fn')


class ElementwiseNumerical(Nonlinearity):
    """A user nonlinearity whose kernel is computed by `deg`-point Gauss-Hermite quadrature."""

    op: Literal['ElementwiseNumerical'] = 'ElementwiseNumerical'
    fn: Callable
    deg: PosInt
    df: Callable | None = None
    serializable: ClassVar[bool] = False
    flops_per_entry: ClassVar[float] = 200.0


# ----------------------------------------------------------------------------- normalisation


class LayerNorm(Op):
    """Normalises each example over `axis` (which must include the channel axis)."""

    op: Literal['LayerNorm'] = 'LayerNorm'
    axis: int | tuple[int, ...] = -1
    eps: NonNegFloat = 1e-12
    batch_axis: int = 0
    channel_axis: int = -1
    needs_gaussian: ClassVar[bool] = True
    flops_per_entry: ClassVar[float] = 3.0

    def axes(self, t: TensorType) -> tuple[int, ...]:
        axes = (self.axis,) if isinstance(self.axis, int) else self.axis
        return tuple(sorted({a % t.ndim for a in axes}))

    def infer(self, ins, path):
        t = ins[0]
        axes = self.axes(t)
        if t.channel not in axes:
            raise ShapeError(f'LayerNorm axis={self.axis} must include the channel axis '
                             f'({t.channel_axis})', path=path,
                             hint='add the channel axis to `axis`')
        if t.batch in axes:
            raise ShapeError('LayerNorm cannot normalise over the batch axis', path=path)
        return t.model_copy(update=dict(is_fresh=False))

    def marginal_need(self, out, in_type):
        if not in_type.spatial_axes:
            return 'NONE'
        return max_spatial(out, 'DIAG')  # normalisers are means of per-position variances


class Dropout(Op):
    """Dropout with keep probability `rate` (NT's convention); identity when mode='test'."""

    op: Literal['Dropout'] = 'Dropout'
    rate: Annotated[float, Field(gt=0, le=1)]
    mode: Literal['train', 'test'] = 'train'


# ----------------------------------------------------------------------------- attention

AttentionMechanism = Literal['SOFTMAX', 'IDENTITY', 'ABS', 'RELU']
PositionalEmbedding = Literal['NONE', 'SUM', 'CONCAT']


class GlobalSelfAttention(Op):
    """Multi-head self-attention over all spatial positions (Hron et al. 2020, "Infinite
    attention").  Mixes every pair of positions, so it needs FULL spatial covariances."""

    op: Literal['GlobalSelfAttention'] = 'GlobalSelfAttention'
    n_chan_out: PosInt
    n_chan_key: PosInt
    n_chan_val: PosInt
    n_heads: PosInt
    linear_scaling: bool = True
    W_key_std: NonNegFloat = 1.0
    W_value_std: NonNegFloat = 1.0
    W_query_std: NonNegFloat = 1.0
    W_out_std: NonNegFloat = 1.0
    b_std: NonNegFloat | None = None
    attention_mechanism: AttentionMechanism = 'SOFTMAX'
    pos_emb_type: PositionalEmbedding = 'NONE'
    pos_emb_p_norm: Annotated[float, Field(gt=0, allow_inf_nan=True)] = 2  # inf: max norm
    pos_emb_decay_fn: Callable | None = None
    n_chan_pos_emb: PosInt | None = None
    W_pos_emb_std: NonNegFloat = 1.0
    val_pos_emb: bool = False
    batch_axis: int = 0
    channel_axis: int = -1
    creates_fresh: ClassVar[bool] = True

    @field_validator('attention_mechanism', 'pos_emb_type', mode='before')
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v

    @property
    def serializable(self) -> bool:  # type: ignore[override]
        return self.pos_emb_decay_fn is None

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def independent_of_input(self) -> bool:
        # the output projection W_out (or the bias) is random and its own
        return (self.W_out_std > 0 and self.W_value_std > 0) or bool(self.b_std)

    def no_kernel(self, ins):
        if self.linear_scaling or self.attention_mechanism == 'IDENTITY':
            return None
        return (f"GlobalSelfAttention(attention_mechanism='{self.attention_mechanism}', "
                f'linear_scaling=False, pos_emb_type={self.pos_emb_type!r}) has no known '
                'closed-form kernel (the softmax/abs/relu of a Gaussian logit matrix has no '
                'tractable expectation)',
                "use linear_scaling=True or attention_mechanism='IDENTITY', or estimate the "
                'kernel with ntc.monte_carlo_kernel_fn')

    def pos_emb_channels(self, in_channels: int) -> int:
        """Channels of the positional embedding (NT: the input's, unless given)."""
        return in_channels if self.n_chan_pos_emb is None else self.n_chan_pos_emb

    def infer(self, ins, path):
        t = ins[0]
        if not t.spatial_axes:
            raise ShapeError(f'GlobalSelfAttention needs an input with spatial axes (positions '
                             f'to attend over), got {t.describe()}', path=path,
                             hint='give the input a sequence or image axis, e.g. (N, L, C)')
        if self.pos_emb_type == 'SUM' and self.pos_emb_channels(t.channels) != t.channels:
            raise ShapeError(f"pos_emb_type='SUM' adds embeddings of {self.n_chan_pos_emb} "
                             f'channels to an input of {t.channels}', path=path,
                             hint="leave n_chan_pos_emb=None, or use pos_emb_type='CONCAT'")
        shape = list(t.shape)
        shape[t.channel] = self.n_chan_out
        return t.model_copy(update=dict(shape=tuple(shape), is_gaussian=True, is_fresh=True))

    def spatial_need(self, out, in_type):
        return 'FULL'  # every output position reads every pair of input positions

    def marginal_need(self, out, in_type):
        if self.linear_scaling:
            return 'FULL'  # the attention weights are functions of each example's covariance
        return None if out is None else 'FULL'

    def entry_flops(self, in_types, out_type):
        return 4.0 * math.prod(out_type.spatial_shape) + 2.0


# ----------------------------------------------------------------------------- linear maps
# Layers that apply a fixed (or per-example) linear map to the non-channel axes.  Channels stay
# independent, so the covariance transforms as K -> M K Mᵀ on every pair of positions.


def _const(v):
    """A constant array as nested tuples of floats (hashable, JSON-safe); scalars as floats."""
    if v is None:
        return None
    import numpy as np
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
        v = getattr(v, 'value', v)
        return v.upper() if isinstance(v, str) else v

    @property
    def serializable(self) -> bool:  # type: ignore[override]
        return self.to_dense is None

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


DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]


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
        import numpy as np
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
        import numpy as np
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
        if isinstance(per[t.batch], int):
            raise ShapeError('an integer index on the batch axis removes it; the kernel needs '
                             'a batch axis', path=path, hint='use a slice, e.g. Slice[3:4]')
        if isinstance(per[t.channel], int):
            raise ShapeError('an integer index on the channel axis removes it', path=path,
                             hint='index spatial axes only')
        shape = []
        for i, (d, s) in enumerate(zip(t.shape, per)):
            if isinstance(s, int):
                if not -d <= s < d:
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
        return TensorType(shape=tuple(shape), batch_axis=kept.index(t.batch),
                          channel_axis=kept.index(t.channel), is_gaussian=t.is_gaussian,
                          is_fresh=t.is_fresh)

    def no_kernel(self, ins):
        t = ins[0]
        sel = self.per_axis(t.ndim)[t.channel]
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


# ----------------------------------------------------------------------------- the union

OP_CLASSES: tuple[type[Op], ...] = (
    Input, Identity, FanOut, FanInSum, FanInProd, FanInConcat, Dense, Affine,
    Conv, ConvTranspose, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten, Transpose,
    ABRelu, Relu, LeakyRelu, Abs, Erf, Sigmoid_like, Gelu, Sin, Cos, Exp, ExpNormalized,
    Gaussian, Rbf, Sign, Gabor, Monomial, RectifiedMonomial, Polynomial, Hermite, Elementwise,
    ElementwiseNumerical, LayerNorm, Dropout, GlobalSelfAttention,
    Aggregate, DotGeneral, Index, ImageResize, ConvLocal,
)
OPS: dict[str, type[Op]] = {cls.model_fields['op'].default: cls for cls in OP_CLASSES}
AnyOp = Annotated[Union[tuple(OP_CLASSES)], Field(discriminator='op')]  # noqa: UP007
OP_ADAPTER: TypeAdapter = TypeAdapter(AnyOp)


def op_from_dict(data: dict) -> Op:
    """Parse one op from its dict form (validated; raises pydantic.ValidationError)."""
    return OP_ADAPTER.validate_python(data)


SIGMOID_LIKE_SCALE = 2.4020563531719796
SQRT2 = math.sqrt(2.0)
