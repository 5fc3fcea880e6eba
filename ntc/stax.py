"""`ntc.stax`: a drop-in for `neural_tangents.stax`.

Same names, same arguments, same defaults.  Every builder returns a `Net` (an IR fragment) that
also unpacks as ``init_fn, apply_fn, kernel_fn``::

    from ntc import stax
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import pydantic

from .covariance.masking import MaskedArray
from .errors import ArchitectureError, ValidationError
from .ir.registry import OPS, kind_of
from .layers import (
    Op,
    activations,
    attention,
    conv,
    custom,
    dense,
    dropout,
    graphs,
    linear,
    normalization,
    pooling,
    structure,
)
from .layers.attention import AttentionMechanism, PositionalEmbedding
from .layers.custom import Bool, Diagonal
from .layers.graphs import AggregateImplementation
from .layers.windows import Padding
from .net import Net, as_net, repeated

__all__ = [
    'serial', 'parallel', 'FanOut', 'FanInSum', 'FanInProd', 'FanInConcat', 'Identity',
    'Dense', 'Relu', 'LeakyRelu', 'ABRelu', 'Abs', 'Erf', 'Sigmoid_like', 'Gelu', 'Sin', 'Cos',
    'Exp', 'ExpNormalized', 'Gaussian', 'Rbf', 'Sign', 'Gabor', 'Monomial', 'RectifiedMonomial',
    'Polynomial', 'Hermite', 'Elementwise', 'ElementwiseNumerical', 'LayerNorm', 'Dropout',
    'Conv', 'ConvTranspose', 'AvgPool', 'SumPool', 'GlobalAvgPool', 'GlobalSumPool', 'Flatten',
    'GlobalSelfAttention', 'repeat', 'layer',
    # NT's custom layers: the decorators and the requirement values
    'requires', 'supports_masking', 'unmask_fn', 'Bool', 'Diagonal',
    # NT's public enums (each accepted wherever its member's name is) and apply_fn's masked output
    'Padding', 'PositionalEmbedding', 'AttentionMechanism', 'AggregateImplementation',
    'MaskedArray',
]


def layer(cls, **kwargs):
    """Two meanings, told apart by the argument:

    - an op class: a builder for any registered layer, `cls(**kwargs)` validated into an op
      model and wrapped as a `Net`.  This is how a layer defined in your own module gets its
      builder (see docs/adding_a_layer.md)::

          def MyLayer(alpha: float = 1.0) -> Net:
              return stax.layer(MyLayerOp, alpha=alpha)

      Validation errors name the layer and the field.
    - a function returning neural_tangents' ``(init_fn, apply_fn, kernel_fn)``: NT's decorator.
      The decorated function returns a `Net` holding one opaque layer (`NTLayer`) that calls
      the three functions; the kernel function gets NT's `Kernel` fields (see
      `ntc.layers.custom`), with the layouts `requires` asked for."""
    if isinstance(cls, type) and issubclass(cls, Op):
        return _op_layer(cls, **kwargs)
    if callable(cls) and not isinstance(cls, type) and not kwargs:
        return _nt_layer(cls)
    raise ArchitectureError(f'stax.layer expects an op class or a function returning '
                            f'(init_fn, apply_fn, kernel_fn), got {cls!r}',
                            hint="subclass ntc.Op with an `op: Literal['Name']` field, or "
                                 'decorate an NT-style layer function with @stax.layer')


def _op_layer(cls: type[Op], **kwargs) -> Net:
    if 'op' not in cls.model_fields:
        raise ArchitectureError(f'stax.layer expects an op class, got {cls!r}',
                                hint="subclass ntc.Op with an `op: Literal['Name']` field")
    kind = kind_of(cls)
    if OPS.get(kind) is not cls:
        raise ArchitectureError(f'{cls.__module__}.{cls.__name__} is not registered',
                                hint='decorate the class with @ntc.layers.register_op')
    try:
        return Net('layer', cls(**kwargs))
    except pydantic.ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = '.'.join(str(p) for p in err['loc'])
            msgs.append(f'{kind}.{loc}: {err["msg"]} (got {err.get("input")!r})')
        raise ValidationError('; '.join(msgs)) from None


class _MaskingLayer(tuple):
    """What a `supports_masking` layer function returns: the triple, marked as taking `mask=`,
    with its `mask_fn` (None: masks pass unchanged)."""

    mask_fn: Callable | None = None


def _nt_layer(layer_fn: Callable) -> Callable[..., Net]:
    """NT's `@stax.layer`: `layer_fn(*args, **kwargs)` returns the triple (or a `Net`)."""
    @functools.wraps(layer_fn)
    def builder(*args, **kwargs) -> Net:
        fns = layer_fn(*args, **kwargs)
        if isinstance(fns, Net):
            return fns
        init_fn, apply_fn, kernel_fn = tuple(fns)[:3]
        net = getattr(kernel_fn, 'net', None)
        if isinstance(net, Net) and not isinstance(fns, _MaskingLayer):
            return net  # ntc's own triple: keep the compiled network
        reqs = custom.requirements_of(kernel_fn)
        return _op_layer(custom.NTLayer, name=layer_fn.__name__, init_fn=init_fn,
                         apply_fn=apply_fn, kernel_fn=kernel_fn,
                         diagonal_batch=custom.accepts_diagonal(reqs.get('diagonal_batch')),
                         diagonal_spatial=custom.accepts_diagonal(reqs.get('diagonal_spatial')),
                         batch_axis=reqs.get('batch_axis'),
                         channel_axis=reqs.get('channel_axis'),
                         masking=isinstance(fns, _MaskingLayer),
                         mask_fn=getattr(fns, 'mask_fn', None))

    return builder


def requires(**reqs):
    """NT's decorator of a custom layer's `kernel_fn`: what its input kernel must hold.
    `diagonal_batch=False`: cov1/cov2 over every pair of examples; `diagonal_spatial=False` (or
    `Diagonal(input=Bool.NO)`): every pair of positions; `batch_axis`, `channel_axis`: where
    the input has them.  Other names are accepted and ignored, as in NT."""
    def decorate(kernel_fn: Callable) -> Callable:
        @functools.wraps(kernel_fn)
        def with_requirements(k, **kwargs):
            return kernel_fn(k, **kwargs)

        setattr(with_requirements, custom.REQUIREMENTS_ATTR, dict(reqs))
        return with_requirements

    return decorate


def supports_masking(remask_kernel: bool):
    """NT's decorator (under `@stax.layer`) of a layer function whose `apply_fn` takes
    `mask=` (True at masked entries) and which may return a fourth function,
    `mask_fn(mask, input_shape)`, that says how the layer moves masks.  ntc zeroes the kernel
    entries of masked positions after every layer, so `remask_kernel` changes nothing."""
    def decorate(layer_fn: Callable) -> Callable:
        @functools.wraps(layer_fn)
        def with_masking(*args, **kwargs):
            fns = tuple(layer_fn(*args, **kwargs))
            if len(fns) not in (3, 4):
                raise ArchitectureError(f'{layer_fn.__name__} returns {len(fns)} functions',
                                        hint='return (init_fn, apply_fn, kernel_fn) and '
                                             'optionally mask_fn')
            out = _MaskingLayer(fns[:3])
            out.mask_fn = fns[3] if len(fns) == 4 else None
            return out

        return with_masking

    return decorate


def unmask_fn(fn: Callable) -> Callable:
    """`fn` (an apply_fn) returning plain arrays: each `MaskedArray` in its output becomes its
    value with the masked entries set to zero (NT's `unmask_fn`)."""
    def unmask(x):
        if isinstance(x, MaskedArray):
            return jnp.where(x.mask, jnp.zeros((), x.masked_value.dtype), x.masked_value)
        return x

    @functools.wraps(fn)
    def unmasked(*args, **kwargs):
        return jax.tree_util.tree_map(unmask, fn(*args, **kwargs),
                                      is_leaf=lambda x: isinstance(x, MaskedArray))

    return unmasked


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
    return layer(structure.FanOut, num=num)


def FanInSum() -> Net:
    """Sums the values of a fan-out."""
    return layer(structure.FanInSum)


def FanInProd() -> Net:
    """Multiplies the values of a fan-out elementwise."""
    return layer(structure.FanInProd)


def FanInConcat(axis: int = -1) -> Net:
    """Concatenates the values of a fan-out along `axis`."""
    return layer(structure.FanInConcat, axis=axis)


def Identity() -> Net:
    """The identity layer."""
    return layer(structure.Identity)


# ----------------------------------------------------------------------------- affine


def Dense(out_dim: int, W_std: float = 1., b_std: float | None = None, batch_axis: int = 0,
          channel_axis: int = -1, parameterization: str = 'ntk',
          s: tuple[int, int] = (1, 1)) -> Net:
    """Fully connected layer: K -> W_std² K + b_std² (NTK parameterization, Jacot et al. 2018;
    standard parameterization after Sohl-Dickstein et al. 2020)."""
    return layer(dense.Dense, out_dim=out_dim, W_std=W_std, b_std=b_std, batch_axis=batch_axis,
                 channel_axis=channel_axis, parameterization=parameterization, s=_tuple(s))


def Conv(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
         padding: str | Padding = 'VALID', W_std: float = 1.0, b_std: float | None = None,
         dimension_numbers: tuple[str, str, str] | None = None, parameterization: str = 'ntk',
         s: tuple[int, int] = (1, 1)) -> Net:
    """Convolution over 1, 2 or 3 (or more) spatial axes: the covariance of every pair of
    positions becomes the W_std²-scaled mean over the filter window of the shifted pairs, plus
    b_std² (Novak et al. 2019, Garriga-Alonso et al. 2019)."""
    return layer(conv.Conv, out_chan=out_chan, filter_shape=_tuple(filter_shape),
                 strides=_tuple(strides), padding=padding, W_std=W_std, b_std=b_std,
                 dimension_numbers=_tuple(dimension_numbers), parameterization=parameterization,
                 s=_tuple(s))


def ConvTranspose(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
                  padding: str | Padding = 'VALID', W_std: float = 1.0, b_std: float | None = None,
                  dimension_numbers: tuple[str, str, str] | None = None,
                  parameterization: str = 'ntk', s: tuple[int, int] = (1, 1)) -> Net:
    """Transposed convolution: the window mean of the stride-dilated covariance."""
    return layer(conv.ConvTranspose, out_chan=out_chan, filter_shape=_tuple(filter_shape),
                 strides=_tuple(strides), padding=padding, W_std=W_std, b_std=b_std,
                 dimension_numbers=_tuple(dimension_numbers), parameterization=parameterization,
                 s=_tuple(s))


# ----------------------------------------------------------------------------- pooling


def AvgPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str | Padding = 'VALID', normalize_edges: bool = False, batch_axis: int = 0,
            channel_axis: int = -1) -> Net:
    """Average pooling: the covariance is averaged over both windows of each pair."""
    return layer(pooling.AvgPool, window_shape=_tuple(window_shape), strides=_tuple(strides),
                 padding=padding, normalize_edges=normalize_edges, batch_axis=batch_axis,
                 channel_axis=channel_axis)


def SumPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str | Padding = 'VALID', batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """Sum pooling: the covariance is summed over both windows of each pair."""
    return layer(pooling.SumPool, window_shape=_tuple(window_shape), strides=_tuple(strides),
                 padding=padding, batch_axis=batch_axis, channel_axis=channel_axis)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """Mean over all spatial positions: K' = mean over (s, s') of K[s, s']."""
    return layer(pooling.GlobalAvgPool, batch_axis=batch_axis, channel_axis=channel_axis)


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """Sum over all spatial positions: K' = sum over (s, s') of K[s, s']."""
    return layer(pooling.GlobalSumPool, batch_axis=batch_axis, channel_axis=channel_axis)


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0) -> Net:
    """Flattens all but the batch axis: K' = mean over positions s of K[s, s]."""
    return layer(linear.Flatten, batch_axis=batch_axis, batch_axis_out=batch_axis_out)


# ----------------------------------------------------------------------------- nonlinearities


def Relu(do_stabilize: bool = False) -> Net:
    """max(x, 0); arc-cosine kernel of order 1 (Cho & Saul 2009)."""
    return layer(activations.Relu, do_stabilize=do_stabilize)


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> Net:
    """x for x > 0, alpha·x otherwise."""
    return layer(activations.LeakyRelu, alpha=alpha, do_stabilize=do_stabilize)


def ABRelu(a: float, b: float, do_stabilize: bool = False) -> Net:
    """a·min(x, 0) + b·max(x, 0)."""
    return layer(activations.ABRelu, a=a, b=b, do_stabilize=do_stabilize)


def Abs(do_stabilize: bool = False) -> Net:
    """|x|."""
    return layer(activations.Abs, do_stabilize=do_stabilize)


def Erf(a: float = 1., b: float = 1., c: float = 0.) -> Net:
    """a·erf(b·x) + c; arcsine kernel (Williams 1997)."""
    return layer(activations.Erf, a=a, b=b, c=c)


def Sigmoid_like() -> Net:
    """erf(x / 2.4020563531719796) / 2 + 1/2."""
    return layer(activations.Sigmoid_like)


def Gelu(approximate: bool = False) -> Net:
    """x·Φ(x) (Hendrycks & Gimpel 2016); `approximate` affects the finite network only."""
    return layer(activations.Gelu, approximate=approximate)


def Sin(a: float = 1., b: float = 1., c: float = 0.) -> Net:
    """a·sin(b·x + c)."""
    return layer(activations.Sin, a=a, b=b, c=c)


def Cos(a: float = 1., b: float = 1., c: float = 0.) -> Net:
    """a·cos(b·x + c)."""
    return layer(activations.Cos, a=a, b=b, c=c)


def Exp(a: float = 1, b: float = 1) -> Net:
    """a·exp(b·x)."""
    return layer(activations.Exp, a=a, b=b)


def ExpNormalized(gamma: float = 1, shift: float = -1, do_clip: bool = False) -> Net:
    """The Gaussian normalised kernel of Shankar et al. 2020 (kernel only)."""
    return layer(activations.ExpNormalized, gamma=gamma, shift=shift, do_clip=do_clip)


def Gaussian(a: float = 1, b: float = -1) -> Net:
    """a·exp(b·x²)."""
    return layer(activations.Gaussian, a=a, b=b)


def Rbf(gamma: float = 1.0) -> Net:
    """sqrt(2)·sin(sqrt(2γ)·x + π/4), the dual of the RBF kernel exp(-γ‖x - x'‖²/d)."""
    return layer(activations.Rbf, gamma=gamma)


def Sign() -> Net:
    """sign(x)."""
    return layer(activations.Sign)


def Gabor() -> Net:
    """exp(-x²)·sin(x)."""
    return layer(activations.Gabor)


def Monomial(degree: int) -> Net:
    """x**degree."""
    return layer(activations.Monomial, degree=degree)


def RectifiedMonomial(degree: int) -> Net:
    """max(x, 0)**degree; arc-cosine kernel of order `degree` (Cho & Saul 2009)."""
    return layer(activations.RectifiedMonomial, degree=degree)


def Polynomial(coef: Sequence[float]) -> Net:
    """coef[0] + coef[1]·x + ... + coef[n]·x**n."""
    return layer(activations.Polynomial, coef=_tuple(coef))


def Hermite(degree: int) -> Net:
    """The probabilists' Hermite polynomial He_degree, normalised to unit Gaussian norm."""
    return layer(activations.Hermite, degree=degree)


def Elementwise(fn: Callable | None = None, nngp_fn: Callable | None = None,
                d_nngp_fn: Callable | None = None) -> Net:
    """A custom nonlinearity `fn` with its kernel `nngp_fn(cov12, var1, var2)`; the NTK uses
    `d_nngp_fn`, or ∂nngp_fn/∂cov12 by autodiff when it is None."""
    return layer(activations.Elementwise, fn=fn, nngp_fn=nngp_fn, d_nngp_fn=d_nngp_fn)


def ElementwiseNumerical(fn: Callable, deg: int, df: Callable | None = None) -> Net:
    """A custom nonlinearity whose kernel comes from deg×deg Gauss-Hermite quadrature."""
    return layer(activations.ElementwiseNumerical, fn=fn, deg=deg, df=df)


# ----------------------------------------------------------------------------- normalisation


def LayerNorm(axis: int | Sequence[int] = -1, eps: float = 1e-12, batch_axis: int = 0,
              channel_axis: int = -1) -> Net:
    """Per-example normalisation over `axis` (infinite-width: K12 / sqrt(q1 q2))."""
    axis = axis if isinstance(axis, int) else tuple(axis)
    return layer(normalization.LayerNorm, axis=axis, eps=eps, batch_axis=batch_axis,
                 channel_axis=channel_axis)


def Dropout(rate: float, mode: str = 'train') -> Net:
    """Dropout keeping each unit with probability `rate`."""
    return layer(dropout.Dropout, rate=rate, mode=mode)


# ----------------------------------------------------------------------------- attention


def GlobalSelfAttention(n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                        linear_scaling: bool = True, W_key_std: float = 1.0,
                        W_value_std: float = 1.0, W_query_std: float = 1.0,
                        W_out_std: float = 1.0, b_std: float | None = None,
                        attention_mechanism: str | AttentionMechanism = 'SOFTMAX',
                        pos_emb_type: str | PositionalEmbedding = 'NONE',
                        pos_emb_p_norm: float = 2, pos_emb_decay_fn: Callable | None = None,
                        n_chan_pos_emb: int | None = None, W_pos_emb_std: float = 1.0,
                        val_pos_emb: bool = False, batch_axis: int = 0,
                        channel_axis: int = -1) -> Net:
    """Multi-head self-attention over all spatial positions; kernel after Hron et al. 2020
    ("Infinite attention: NNGP and NTK for deep attention networks").  With
    `linear_scaling=True` (keys and queries tied, logits scaled by 1/n_chan_key) every
    `attention_mechanism` has a closed form; with `linear_scaling=False` only 'IDENTITY' does."""
    return layer(attention.GlobalSelfAttention, n_chan_out=n_chan_out, n_chan_key=n_chan_key,
                 n_chan_val=n_chan_val, n_heads=n_heads, linear_scaling=linear_scaling,
                 W_key_std=W_key_std, W_value_std=W_value_std, W_query_std=W_query_std,
                 W_out_std=W_out_std, b_std=b_std, attention_mechanism=attention_mechanism,
                 pos_emb_type=pos_emb_type, pos_emb_p_norm=pos_emb_p_norm,
                 pos_emb_decay_fn=pos_emb_decay_fn, n_chan_pos_emb=n_chan_pos_emb,
                 W_pos_emb_std=W_pos_emb_std, val_pos_emb=val_pos_emb, batch_axis=batch_axis,
                 channel_axis=channel_axis)


# ----------------------------------------------------------------------------- linear maps


def Aggregate(aggregate_axis: int | Sequence[int] | None = None, batch_axis: int = 0,
              channel_axis: int = -1, to_dense: Callable | None = None,
              implementation: str | AggregateImplementation = 'DENSE') -> Net:
    """Graph aggregation: each vertex becomes the weighted sum of its predecessors under the
    per-example adjacency `pattern` (apply_fn(..., pattern=A), kernel_fn(..., pattern=(A1, A2)));
    K' = A1ᵀ K A2 per pair of examples (Du et al. 2019).  `implementation='DENSE'` takes
    `(N, *V, *V)` weighted adjacency tensors (through `to_dense` if given); 'SPARSE' takes
    integer edge lists `(N, n_edges, K, 2)` of (sender, receiver) vertices, negative entries
    being padding."""
    axis = aggregate_axis if aggregate_axis is None or isinstance(aggregate_axis, int) \
        else tuple(aggregate_axis)
    return layer(graphs.Aggregate, aggregate_axis=axis, batch_axis=batch_axis,
                 channel_axis=channel_axis, to_dense=to_dense, implementation=implementation)


def DotGeneral(*, lhs=None, rhs=None, dimension_numbers=(((), ()), ((), ())), precision=None,
               batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """`lax.dot_general` of the input with a constant `lhs` or `rhs` (not trained): a fixed
    linear map M of the non-channel axes, whose kernel is M K Mᵀ on the position indices."""
    return layer(linear.DotGeneral, lhs=lhs, rhs=rhs, dimension_numbers=dimension_numbers,
                 precision=precision, batch_axis=batch_axis, channel_axis=channel_axis)


class _Slice:
    """`Slice[1:10, :, ::-1]` returns its index, to pass as `Index(idx=...)`."""

    def __getitem__(self, idx):
        return idx

    def __repr__(self) -> str:
        return 'Slice'


Slice = _Slice()


def _index_item(i):
    if i is Ellipsis or i == '...':
        return '...'
    if isinstance(i, slice):
        return (i.start, i.stop, i.step)
    if isinstance(i, tuple) and len(i) == 3:
        return i
    if i is None:
        raise ValidationError('Index: None (numpy newaxis) is not supported',
                              hint='index with ints, slices and ... only')
    try:
        return int(i.__index__())
    except (AttributeError, TypeError):
        raise ValidationError(f'Index: cannot index with {i!r}', hint='index with ints, '
                              'slices and ... (use stax.Slice[...])') from None


def Index(idx, batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """numpy basic indexing `x[idx]` (`idx=stax.Slice[...]`): K'[o, o'] = K[sel(o), sel(o')].
    Slices of the batch axis select examples; an int drops a spatial axis; the channel axis
    can only be indexed trivially (`:` or `...`) in the kernel."""
    items = idx if isinstance(idx, tuple) else (idx,)
    return layer(linear.Index, idx=tuple(_index_item(i) for i in items), batch_axis=batch_axis,
                 channel_axis=channel_axis)


def ImageResize(shape: Sequence[int], method, antialias: bool = True, precision='HIGHEST',
                batch_axis: int = 0, channel_axis: int = -1) -> Net:
    """`jax.image.resize` of the spatial axes (entries -1 keep an axis).  The kernel applies
    the same (linear) resize to both position indices of K; it supports the 'linear' and
    'nearest' methods (the others work in apply_fn only)."""
    return layer(linear.ImageResize, shape=tuple(shape), method=method, antialias=antialias,
                 precision=precision, batch_axis=batch_axis, channel_axis=channel_axis)


def ConvLocal(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
              padding: str | Padding = 'VALID', W_std: float = 1.0, b_std: float | None = None,
              dimension_numbers: tuple[str, str, str] | None = None,
              parameterization: str = 'ntk', s: tuple[int, int] = (1, 1)) -> Net:
    """Unshared (locally connected) convolution: independent weights and biases at every
    output position, so the output kernel is spatially diagonal, K'[o, o] = W_std²·A(K)[o, o] +
    b_std² with A the conv window mean (Novak et al. 2019, sec. 5.1)."""
    return layer(conv.ConvLocal, out_chan=out_chan, filter_shape=_tuple(filter_shape),
                 strides=_tuple(strides), padding=padding, W_std=W_std, b_std=b_std,
                 dimension_numbers=_tuple(dimension_numbers), parameterization=parameterization,
                 s=_tuple(s))


__all__ += ['Aggregate', 'DotGeneral', 'Index', 'Slice', 'ImageResize', 'ConvLocal']


# ----------------------------------------------------------------------------- loops


def repeat(layer: Net, n: int) -> Net:
    """`layer` applied `n` times (each time with its own weights): ``serial(*[layer] * n)``,
    whose copies the `roll_loops` pass compiles as one `lax.scan` loop, so compile time and
    program size do not grow with `n`.  `layer` must keep the shape of its input; n = 0 is the
    identity (as in neural_tangents)."""
    return repeated(as_net(layer, 'repeat'), n)
