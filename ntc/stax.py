"""`ntc.stax`: a drop-in for `neural_tangents.stax`.

Same names, same arguments, same defaults.  Every builder returns a `Net` (an IR fragment) that
also unpacks as ``init_fn, apply_fn, kernel_fn``::

    from ntc import stax
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pydantic

from .errors import ValidationError
from .ir import ops
from .ir.net import Net, as_net, layer

__all__ = [
    'serial', 'parallel', 'FanOut', 'FanInSum', 'FanInProd', 'FanInConcat', 'Identity',
    'Dense', 'Relu', 'LeakyRelu', 'ABRelu', 'Abs', 'Erf', 'Sigmoid_like', 'Gelu', 'Sin', 'Cos',
    'Exp', 'ExpNormalized', 'Gaussian', 'Rbf', 'Sign', 'Gabor', 'Monomial', 'RectifiedMonomial',
    'Polynomial', 'Hermite', 'Elementwise', 'ElementwiseNumerical', 'LayerNorm', 'Dropout',
    'Conv', 'ConvTranspose', 'AvgPool', 'SumPool', 'GlobalAvgPool', 'GlobalSumPool', 'Flatten',
]


def _make(cls: type[ops.Op], **kwargs) -> Net:
    """Validate the arguments into an op model; errors name the layer and the field."""
    try:
        return layer(cls(**kwargs))
    except pydantic.ValidationError as e:
        kind = cls.model_fields['op'].default
        msgs = []
        for err in e.errors():
            loc = '.'.join(str(p) for p in err['loc'])
            msgs.append(f'{kind}.{loc}: {err["msg"]} (got {err.get("input")!r})')
        raise ValidationError('; '.join(msgs)) from None


def _tuple(x):
    return None if x is None else tuple(x)


# ----------------------------------------------------------------------------- combinators


def serial(*layers: Net) -> Net:
    """Layers applied one after another."""
    return Net('serial', children=tuple(as_net(x, 'serial') for x in layers))


def parallel(*layers: Net) -> Net:
    """Layers applied to the matching values of a fan-out, one each."""
    return Net('parallel', children=tuple(as_net(x, 'parallel') for x in layers))


def FanOut(num: int) -> Net:
    """Copies the input into `num` values (for `parallel`)."""
    return _make(ops.FanOut, num=num)


def FanInSum() -> Net:
    """Sums the values of a fan-out."""
    return _make(ops.FanInSum)


def FanInProd() -> Net:
    """Multiplies the values of a fan-out elementwise."""
    return _make(ops.FanInProd)


def FanInConcat(axis: int = -1) -> Net:
    """Concatenates the values of a fan-out along `axis`."""
    return _make(ops.FanInConcat, axis=axis)


def Identity() -> Net:
    """The identity layer."""
    return _make(ops.Identity)


# ----------------------------------------------------------------------------- affine


def Dense(out_dim: int, W_std: float = 1., b_std: float | None = None, batch_axis: int = 0,
          channel_axis: int = -1, parameterization: str = 'ntk',
          s: tuple[int, int] = (1, 1)) -> Net:
    """Fully connected layer: K -> W_std² K + b_std² (NTK parameterization, Jacot et al. 2018;
    standard parameterization after Sohl-Dickstein et al. 2020)."""
    return _make(ops.Dense, out_dim=out_dim, W_std=W_std, b_std=b_std, batch_axis=batch_axis,
                 channel_axis=channel_axis, parameterization=parameterization, s=_tuple(s))


def Conv(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
         padding: str = 'VALID', W_std: float = 1.0, b_std: float | None = None,
         dimension_numbers: tuple[str, str, str] | None = None, parameterization: str = 'ntk',
         s: tuple[int, int] = (1, 1)) -> Net:
    """Convolution over 1, 2 or 3 (or more) spatial axes: the covariance of every pair of
    positions becomes the W_std²-scaled mean over the filter window of the shifted pairs, plus
    b_std² (Novak et al. 2019, Garriga-Alonso et al. 2019)."""
    return _make(ops.Conv, out_chan=out_chan, filter_shape=_tuple(filter_shape),
                 strides=_tuple(strides), padding=padding, W_std=W_std, b_std=b_std,
                 dimension_numbers=_tuple(dimension_numbers), parameterization=parameterization,
                 s=_tuple(s))


def ConvTranspose(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
                  padding: str = 'VALID', W_std: float = 1.0, b_std: float | None = None,
                  dimension_numbers: tuple[str, str, str] | None = None,
                  parameterization: str = 'ntk', s: tuple[int, int] = (1, 1)) -> Net:
    """Transposed convolution: the window mean of the stride-dilated covariance."""
    return _make(ops.ConvTranspose, out_chan=out_chan, filter_shape=_tuple(filter_shape),
                 strides=_tuple(strides), padding=padding, W_std=W_std, b_std=b_std,
                 dimension_numbers=_tuple(dimension_numbers), parameterization=parameterization,
                 s=_tuple(s))


# ----------------------------------------------------------------------------- pooling


def AvgPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str = 'VALID', normalize_edges: bool = False, batch_axis: int = 0,
            channel_axis: int = -1) -> Net:
    """Average pooling: the covariance is averaged over both windows of each pair."""
    return _make(ops.AvgPool, window_shape=_tuple(window_shape), strides=_tuple(strides),
                 padding=padding, normalize_edges=normalize_edges, batch_axis=batch_axis,
                 channel_axis=channel_axis)


def SumPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str = 'VALID', batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """Sum pooling: the covariance is summed over both windows of each pair."""
    return _make(ops.SumPool, window_shape=_tuple(window_shape), strides=_tuple(strides),
                 padding=padding, batch_axis=batch_axis, channel_axis=channel_axis)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """Mean over all spatial positions: K' = mean over (s, s') of K[s, s']."""
    return _make(ops.GlobalAvgPool, batch_axis=batch_axis, channel_axis=channel_axis)


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """Sum over all spatial positions: K' = sum over (s, s') of K[s, s']."""
    return _make(ops.GlobalSumPool, batch_axis=batch_axis, channel_axis=channel_axis)


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0) -> Net:
    """Flattens all but the batch axis: K' = mean over positions s of K[s, s]."""
    return _make(ops.Flatten, batch_axis=batch_axis, batch_axis_out=batch_axis_out)


# ----------------------------------------------------------------------------- nonlinearities


def Relu(do_stabilize: bool = False) -> Net:
    """max(x, 0); arc-cosine kernel of order 1 (Cho & Saul 2009)."""
    return _make(ops.Relu, do_stabilize=do_stabilize)


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> Net:
    """x for x > 0, alpha·x otherwise."""
    return _make(ops.LeakyRelu, alpha=alpha, do_stabilize=do_stabilize)


def ABRelu(a: float, b: float, do_stabilize: bool = False) -> Net:
    """a·min(x, 0) + b·max(x, 0)."""
    return _make(ops.ABRelu, a=a, b=b, do_stabilize=do_stabilize)


def Abs(do_stabilize: bool = False) -> Net:
    """|x|."""
    return _make(ops.Abs, do_stabilize=do_stabilize)


def Erf(a: float = 1., b: float = 1., c: float = 0.) -> Net:
    """a·erf(b·x) + c; arcsine kernel (Williams 1997)."""
    return _make(ops.Erf, a=a, b=b, c=c)


def Sigmoid_like() -> Net:
    """erf(x / 2.4020563531719796) / 2 + 1/2."""
    return _make(ops.Sigmoid_like)


def Gelu(approximate: bool = False) -> Net:
    """x·Φ(x) (Hendrycks & Gimpel 2016); `approximate` affects the finite network only."""
    return _make(ops.Gelu, approximate=approximate)


def Sin(a: float = 1., b: float = 1., c: float = 0.) -> Net:
    """a·sin(b·x + c)."""
    return _make(ops.Sin, a=a, b=b, c=c)


def Cos(a: float = 1., b: float = 1., c: float = 0.) -> Net:
    """a·cos(b·x + c)."""
    return _make(ops.Cos, a=a, b=b, c=c)


def Exp(a: float = 1, b: float = 1) -> Net:
    """a·exp(b·x)."""
    return _make(ops.Exp, a=a, b=b)


def ExpNormalized(gamma: float = 1, shift: float = -1, do_clip: bool = False) -> Net:
    """The Gaussian normalised kernel of Shankar et al. 2020 (kernel only)."""
    return _make(ops.ExpNormalized, gamma=gamma, shift=shift, do_clip=do_clip)


def Gaussian(a: float = 1, b: float = -1) -> Net:
    """a·exp(b·x²)."""
    return _make(ops.Gaussian, a=a, b=b)


def Rbf(gamma: float = 1.0) -> Net:
    """sqrt(2)·sin(sqrt(2γ)·x + π/4), the dual of the RBF kernel exp(-γ‖x - x'‖²/d)."""
    return _make(ops.Rbf, gamma=gamma)


def Sign() -> Net:
    """sign(x)."""
    return _make(ops.Sign)


def Gabor() -> Net:
    """exp(-x²)·sin(x)."""
    return _make(ops.Gabor)


def Monomial(degree: int) -> Net:
    """x**degree."""
    return _make(ops.Monomial, degree=degree)


def RectifiedMonomial(degree: int) -> Net:
    """max(x, 0)**degree; arc-cosine kernel of order `degree` (Cho & Saul 2009)."""
    return _make(ops.RectifiedMonomial, degree=degree)


def Polynomial(coef: Sequence[float]) -> Net:
    """coef[0] + coef[1]·x + ... + coef[n]·x**n."""
    return _make(ops.Polynomial, coef=_tuple(coef))


def Hermite(degree: int) -> Net:
    """The probabilists' Hermite polynomial He_degree, normalised to unit Gaussian norm."""
    return _make(ops.Hermite, degree=degree)


def Elementwise(fn: Callable | None = None, nngp_fn: Callable | None = None,
                d_nngp_fn: Callable | None = None) -> Net:
    """A custom nonlinearity `fn` with its kernel `nngp_fn(cov12, var1, var2)`; the NTK uses
    `d_nngp_fn`, or ∂nngp_fn/∂cov12 by autodiff when it is None."""
    return _make(ops.Elementwise, fn=fn, nngp_fn=nngp_fn, d_nngp_fn=d_nngp_fn)


def ElementwiseNumerical(fn: Callable, deg: int, df: Callable | None = None) -> Net:
    """A custom nonlinearity whose kernel comes from deg×deg Gauss-Hermite quadrature."""
    return _make(ops.ElementwiseNumerical, fn=fn, deg=deg, df=df)


# ----------------------------------------------------------------------------- normalisation


def LayerNorm(axis: int | Sequence[int] = -1, eps: float = 1e-12, batch_axis: int = 0,
              channel_axis: int = -1) -> Net:
    """Per-example normalisation over `axis` (infinite-width: K12 / sqrt(q1 q2))."""
    axis = axis if isinstance(axis, int) else tuple(axis)
    return _make(ops.LayerNorm, axis=axis, eps=eps, batch_axis=batch_axis,
                 channel_axis=channel_axis)


def Dropout(rate: float, mode: str = 'train') -> Net:
    """Dropout keeping each unit with probability `rate`."""
    return _make(ops.Dropout, rate=rate, mode=mode)
