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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

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

    model_config = ConfigDict(frozen=True, extra='forbid', arbitrary_types_allowed=True)

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

    def infer(self, ins, path):
        _same_shapes(ins, path, 'FanInSum')
        return ins[0].model_copy(update=dict(
            is_gaussian=all(t.is_gaussian for t in ins),
            is_fresh=all(t.is_fresh for t in ins)))


class FanInProd(Op):
    """Elementwise product of the branches (kernel = product of the branch kernels)."""

    op: Literal['FanInProd'] = 'FanInProd'
    arity: ClassVar[int | None] = None

    def infer(self, ins, path):
        _same_shapes(ins, path, 'FanInProd')
        return ins[0].model_copy(update=dict(is_gaussian=False, is_fresh=False))


class FanInConcat(Op):
    """Concatenation of the branches along `axis` (the channel axis, or a spatial axis)."""

    op: Literal['FanInConcat'] = 'FanInConcat'
    arity: ClassVar[int | None] = None
    axis: int = -1

    def infer(self, ins, path):
        t0 = ins[0]
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
        the un-normalised input Gram matrix, fan_in·K, and the bias adds 1.
        """
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        if self.parameterization == 'ntk':
            return w2, b2, w2, w2, b2
        has_bias = 0.0 if self.b_std is None else 1.0
        return w2, b2, w2, float(self.s[0] * in_channels), has_bias

    def infer(self, ins, path):
        t = ins[0]
        shape = list(t.shape)
        if t.ndim < 2:
            raise ShapeError(f'Dense needs an input of rank >= 2, got {t.describe()}', path=path)
        channel = self.channel_axis % t.ndim
        shape[channel] = self.out_dim
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


class _ConvBase(_WindowBase, _AffineBase):
    """A convolution: out_chan filters of `filter_shape` over the spatial axes."""

    out_chan: PosInt
    filter_shape: tuple[PosInt, ...]
    dimension_numbers: tuple[str, str, str] | None = None
    creates_fresh: ClassVar[bool] = True

    def window(self):
        return self.filter_shape

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
        shape[out.index('C')] = self.out_chan
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
        return w2, b2, w2, float(self.s[0] * self.fan_in(in_channels)), has_bias

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


# ----------------------------------------------------------------------------- the union

OP_CLASSES: tuple[type[Op], ...] = (
    Input, Identity, FanOut, FanInSum, FanInProd, FanInConcat, Dense, Affine,
    Conv, ConvTranspose, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten, Transpose,
    ABRelu, Relu, LeakyRelu, Abs, Erf, Sigmoid_like, Gelu, Sin, Cos, Exp, ExpNormalized,
    Gaussian, Rbf, Sign, Gabor, Monomial, RectifiedMonomial, Polynomial, Hermite, Elementwise,
    ElementwiseNumerical, LayerNorm, Dropout,
)
OPS: dict[str, type[Op]] = {cls.model_fields['op'].default: cls for cls in OP_CLASSES}
AnyOp = Annotated[Union[tuple(OP_CLASSES)], Field(discriminator='op')]  # noqa: UP007
OP_ADAPTER: TypeAdapter = TypeAdapter(AnyOp)


def op_from_dict(data: dict) -> Op:
    """Parse one op from its dict form (validated; raises pydantic.ValidationError)."""
    return OP_ADAPTER.validate_python(data)


SIGMOID_LIKE_SCALE = 2.4020563531719796
SQRT2 = math.sqrt(2.0)
