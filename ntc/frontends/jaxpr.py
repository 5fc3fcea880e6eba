"""`trace`: a JAX function of (params, x) recognised, equation by equation, as an ntc network.

`jax.make_jaxpr` turns the function into a jaxpr; a walker gives every jaxpr variable a symbolic
value (a constant, a parameter, or a value computed from one node of the network being built)
and recognises the layers:

- `dot_general(x, W)` is a Dense layer and `conv_general_dilated(x, W)` a Conv; a parameter
  added next is their bias, and constant factors on W or on the output fold into W's scale;
- chains of elementwise equations on one node are collected into one function of that node's
  value and identified by evaluating it: max(t, 0) is Relu, erf is Erf, both forms of GELU are
  Gelu, ... and any other function (tanh, sigmoid, swish) becomes an ElementwiseNumerical
  (Gauss-Hermite quadrature), which the notes record;
- the same collection holds normalisations over channel axes: a region whose evaluation equals
  (x - mean) / sqrt(var + eps) is a LayerNorm (eps read off by evaluation);
- `reduce_window_sum` is SumPool (AvgPool after dividing by the window), a sum over all spatial
  axes is GlobalSumPool (GlobalAvgPool after dividing by their size), a reshape to (N, -1) is
  Flatten, `add`/`mul` of two nodes is FanInSum/FanInProd and `concatenate` FanInConcat;
- transposes and size-1 axes only relabel axes: the network keeps the input's layout.

The nodes form a DAG, written as a `stax.serial` whose fan-outs close at their joins (the
immediate dominator of each fan-in is its FanOut).

The infinite-width limit is defined by each parameter's initial variance, which a jaxpr does not
hold: `param_std` gives the standard deviation of each parameter's initialiser (Flax and Equinox
modules read theirs: `ntc.from_flax`, `ntc.from_equinox`).  An output c·(x @ W) with W ~ N(0, σ²)
over fan_in inputs has weight variance c²σ² per input: c = 1 is the standard parameterisation
with W_std = σ·sqrt(fan_in), σ = 1 the NTK parameterisation with W_std = c·sqrt(fan_in).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import source_info_util
from jax.extend import core as jcore
from scipy import special

from .. import stax
from ..errors import NtcError
from ..layers.windows import default_dimension_numbers, same_pads
from ..net import Net


class TraceError(NtcError, ValueError):
    """A construct of the traced function that has no layer in ntc (names its equation)."""


MONTE_CARLO_HINT = ('compute its kernel by sampling: ntc.monte_carlo_kernel_fn(init_fn, '
                    'apply_fn, key, n_samples)')

ELEMENTWISE = {
    'add', 'sub', 'mul', 'div', 'max', 'min', 'neg', 'exp', 'exp2', 'log', 'log1p', 'expm1',
    'tanh', 'logistic', 'erf', 'erfc', 'erf_inv', 'sin', 'cos', 'tan', 'abs', 'sign', 'sqrt',
    'rsqrt', 'cbrt', 'integer_pow', 'pow', 'square', 'select_n', 'ge', 'gt', 'le', 'lt', 'eq',
    'ne', 'and', 'or', 'not', 'convert_element_type', 'copy', 'copy_p', 'clamp', 'atan2',
    'stop_gradient', 'reduce_precision', 'nextafter', 'sinh', 'cosh', 'asinh', 'atan',
}
CALLS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')
NTC_DIR = str(Path(__file__).resolve().parent.parent)
NUMERICAL_DEG = 32  # Gauss-Hermite points per axis for activations without a closed form


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Const:
    """A value known at trace time."""

    value: np.ndarray


@dataclass(frozen=True)
class Param:
    """A parameter leaf (index into the flattened params), times a constant `scale`."""

    leaf: int
    scale: float
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Region:
    """`fn(lead · value of node)` (fn None: the identity).  `perm[i]` is the network axis of traced
    axis i (None for an inserted size-1 axis); `base_perm`, `base_shape` describe the node's value
    as `fn` receives it; `reduced` holds the network axes `fn` reduces over.  Constant factors
    applied first stay in `lead`, so that they can fold into the layer before (c·(x @ W) is the
    NTK parameterisation, sum_pool(x) / 4 an average pool)."""

    node: int
    shape: tuple[int, ...]
    perm: tuple[int | None, ...]
    fn: Callable | None = None
    base_shape: tuple[int, ...] = ()
    base_perm: tuple[int | None, ...] = ()
    reduced: frozenset = frozenset()
    lead: float = 1.0
    origin: str = ''            # the source line where the elementwise chain began


@dataclass
class Node:
    """A layer of the network being built.  Affine layers and pools stay open (their scale and
    bias can still change) until another layer reads them."""

    kind: str                   # input, dense, conv, sumpool, globalsum, layer, sum, prod, concat
    inputs: list[int]
    ndim: int
    channel: int
    where: str
    net: Net | None = None
    attrs: dict = field(default_factory=dict)
    w_leaf: int | None = None
    w_scale: float = 1.0
    fan_in: int = 0
    b_leaf: int | None = None
    b_scale: float = 1.0
    window: int = 1
    read: bool = False
    folded: float = 1.0         # the constant factor folded into this layer


@dataclass
class Recognised:
    """The network recognised in a traced function, and notes on how (one per affine layer,
    per numerical activation)."""

    net: Net
    notes: list[str]

    def __str__(self) -> str:
        return '\n'.join([self.net.code()] + [f'  note: {n}' for n in self.notes])


# ----------------------------------------------------------------------------- entry points


def trace(apply_fn: Callable, params: Any, x_example, *, param_std: Any = 1.0,
          W_std: float | None = None, b_std: float | None = None) -> Net:
    """The ntc `Net` computing what `apply_fn(params, x)` computes, recognised from its jaxpr
    (see the module docstring).  `x_example`'s axis 0 is the batch axis.  `param_std` is the
    standard deviation of every parameter's initial distribution: one float, a pytree like
    `params`, or a function of (path, leaf); `W_std`/`b_std` override every affine layer's."""
    return recognise(apply_fn, params, x_example, param_std=param_std, W_std=W_std,
                     b_std=b_std).net


def recognise(apply_fn: Callable, params: Any, x_example, *, param_std: Any = 1.0,
              W_std: float | None = None, b_std: float | None = None) -> Recognised:
    """`trace` that also returns the notes (parameterisation inferred per layer, activations
    computed by quadrature)."""
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(params)
    stds = _leaf_stds(param_std, params, leaves_with_paths)
    x_example = jnp.asarray(x_example)
    try:
        closed = jax.make_jaxpr(apply_fn)(params, x_example)
    except jax.errors.ConcretizationTypeError as e:
        raise TraceError(f'the function branches on the value of its input: {_first_line(e)}',
                         path='trace', hint='a data-dependent branch has no kernel; '
                         + MONTE_CARLO_HINT) from None
    _refuse_data_dependent_control_flow(closed.jaxpr)
    walker = _Walker(x_example.dtype)
    n_leaves = len(leaves_with_paths)
    env = {}
    for v, c in zip(closed.jaxpr.constvars, closed.consts):
        env[v] = Const(np.asarray(c))
    invars = closed.jaxpr.invars
    if len(invars) != n_leaves + 1:
        raise TraceError(f'expected the params and one input array, got {len(invars)} inputs',
                         path='trace', hint='trace a function of (params, x) with x one array')
    for i, v in enumerate(invars[:n_leaves]):
        env[v] = Param(i, 1.0, tuple(v.aval.shape))
    env[invars[-1]] = Region(0, tuple(x_example.shape), tuple(range(x_example.ndim)))
    walker.nodes.append(Node('input', [], x_example.ndim, x_example.ndim - 1, 'input'))
    outs = walker.run(closed.jaxpr, env, None)
    if len(outs) != 1 or not isinstance(outs[0], Region):
        raise TraceError(f'the function returns {len(outs)} value(s), not one array computed '
                         'from its input', path='trace', hint='return the network output only')
    out = walker.materialise(outs[0], 'output')
    names = ['/'.join(_key_name(k) for k in path) for path, _ in leaves_with_paths]
    return walker.build(out, stds, names, W_std, b_std)


def _refuse_data_dependent_control_flow(jaxpr) -> None:
    """A TraceError at the first cond/while/scan whose operands depend on the input (the last
    argument): a branch or loop on the data has no infinite-width layer."""
    depends = {jaxpr.invars[-1]}
    for i, eqn in enumerate(jaxpr.eqns, 1):
        dependent = any(not isinstance(v, jcore.Literal) and v in depends for v in eqn.invars)
        if dependent and eqn.primitive.name in ('cond', 'switch', 'while', 'scan'):
            raise TraceError(f'equation {i} ({eqn.primitive.name}): control flow on the input '
                             '(a data-dependent branch or loop) has no layer',
                             path=_where(eqn, None), hint=MONTE_CARLO_HINT)
        if dependent:
            depends.update(eqn.outvars)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _key_name(k) -> str:
    for attr in ('key', 'name', 'idx'):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaf_stds(param_std, params, leaves_with_paths) -> list[float]:
    """One initial standard deviation per flattened parameter leaf."""
    if callable(param_std):
        return [float(param_std(path, leaf)) for path, leaf in leaves_with_paths]
    if isinstance(param_std, (int, float)):
        return [float(param_std)] * len(leaves_with_paths)
    try:
        return [float(s) for s in jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(lambda _, s: s, params, param_std))]
    except (ValueError, TypeError):
        raise TraceError('param_std must be a float, a pytree like params, or a function of '
                         '(path, leaf)', path='trace.param_std') from None


def _where(eqn, fallback: str | None) -> str:
    """The user's source line of an equation (`file:line (function)`): the innermost frame
    outside JAX, Flax, Equinox and ntc."""
    try:
        frames = list(source_info_util.user_frames(eqn.source_info.traceback))
    except Exception:
        frames = []
    for f in frames:
        name = f.file_name
        if 'site-packages' in name or 'dist-packages' in name or name.startswith(NTC_DIR):
            continue
        return f'{name}:{f.start_line} ({f.function_name})'
    return fallback or 'unknown line'


def _tidy(v: float, dtype, digits: int | None = None) -> float:
    """`v` rounded to the precision its computation carried, so that 1.5/sqrt(3)·sqrt(3) reads
    1.5: 13 significant digits (7 in float32, or `digits`), and a number of at most 4 digits
    when one lies within float32's rounding (the constants of float32 code)."""
    if v == 0 or not math.isfinite(v):
        return float(v)
    short = float(f'{v:.3e}')
    if abs(short - v) <= 3e-7 * abs(v):
        return short
    if digits is None:
        digits = 13 if np.dtype(dtype).itemsize >= 8 else 7
    return float(f'{v:.{digits - 1}e}')


# ----------------------------------------------------------------------------- the walker


class _Walker:
    def __init__(self, dtype):
        self.nodes: list[Node] = []
        self.dtype = np.dtype(dtype)
        self.notes: list[str] = []
        self.eqn_count = 0
        self.done: dict = {}

    def error(self, eqn, where: str, message: str, hint: str) -> TraceError:
        # equations are counted in order, those of inlined calls (jit, custom_jvp) included
        return TraceError(f'equation {self.eqn_count} ({eqn.primitive.name}): {message}',
                          path=where, hint=hint)

    # -- the loop --------------------------------------------------------------------------

    def run(self, jaxpr, env: dict, outer_where: str | None) -> list:
        def read(v):
            if isinstance(v, jcore.Literal):
                return Const(np.asarray(v.val))
            return env[v]

        for eqn in jaxpr.eqns:
            self.eqn_count += 1
            where = _where(eqn, outer_where)
            ins = [read(v) for v in eqn.invars]
            outs = self.equation(eqn, ins, where)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn, ins: list, where: str) -> list:
        name = eqn.primitive.name
        sub = next((eqn.params[k] for k in CALLS if k in eqn.params), None)
        if all(isinstance(v, Const) for v in ins) and sub is None:
            return self.evaluate(eqn, ins)
        if sub is not None:
            closed = sub if hasattr(sub, 'consts') else jcore.ClosedJaxpr(sub, ())
            inner = closed.jaxpr
            env = {v: Const(np.asarray(c)) for v, c in zip(inner.constvars, closed.consts)}
            n = len(inner.invars)
            env.update(zip(inner.invars, ins[len(ins) - n:]))
            return self.run(inner, env, where)
        if name in ('cond', 'switch', 'while', 'scan'):
            raise self.error(eqn, where, 'control flow on the input (a data-dependent branch '
                             'or loop) has no layer', MONTE_CARLO_HINT)
        if any(isinstance(v, Param) for v in ins) and not any(
                isinstance(v, Region) for v in ins):
            return [self.param_op(eqn, ins, where)]
        if name == 'dot_general':
            return [self.dense(eqn, ins, where)]
        if name == 'conv_general_dilated':
            return [self.conv(eqn, ins, where)]
        if name in ELEMENTWISE:
            return [self.elementwise(eqn, ins, where)]
        if name in ('reduce_sum', 'reduce_max', 'reduce_min', 'argmax', 'reduce_prod'):
            return [self.reduce(eqn, ins[0], where)]
        if name == 'reduce_window_sum':
            return [self.sum_pool(eqn, ins[0], where)]
        if name in ('reduce_window_max', 'reduce_window_min', 'reduce_window'):
            raise self.error(eqn, where, 'max (or generic) pooling has no closed-form kernel',
                             'use average pooling (flax.linen.avg_pool) for an exact kernel, '
                             'or ' + MONTE_CARLO_HINT)
        if name in ('reshape', 'broadcast_in_dim', 'squeeze', 'expand_dims', 'transpose'):
            return [self.layout(eqn, ins[0], where)]
        if name == 'concatenate':
            return [self.concat(eqn, ins, where)]
        if name in ('random_bits', 'random_wrap', 'random_unwrap', 'random_seed', 'threefry2x32'):
            raise self.error(eqn, where, 'random numbers in the forward pass (dropout in '
                             'training mode)', 'trace the deterministic mode (flax: '
                             'deterministic=True; equinox: inference=True)')
        raise self.error(eqn, where, f'the primitive {name!r} has no ntc layer',
                         'rewrite this step with supported layers (dense, conv, pooling, '
                         'activations, layer norm), or ' + MONTE_CARLO_HINT)

    # -- constants and parameters ----------------------------------------------------------

    def evaluate(self, eqn, ins: list[Const]) -> list[Const]:
        out = eqn.primitive.bind(*[c.value for c in ins], **eqn.params)
        outs = out if eqn.primitive.multiple_results else [out]
        return [Const(np.asarray(o)) for o in outs]

    def param_op(self, eqn, ins: list, where: str) -> Param:
        """Shape changes and constant factors of a parameter."""
        name = eqn.primitive.name
        (p,) = [v for v in ins if isinstance(v, Param)]
        shape = tuple(eqn.outvars[0].aval.shape)
        if name in ('reshape', 'broadcast_in_dim', 'squeeze', 'expand_dims', 'transpose',
                    'convert_element_type', 'copy'):
            return Param(p.leaf, p.scale, shape)
        consts = [v for v in ins if isinstance(v, Const)]
        if len(ins) == 2 and len(consts) == 1 and _uniform(consts[0].value) is not None:
            c = _uniform(consts[0].value)
            if name == 'mul':
                return Param(p.leaf, p.scale * c, shape)
            if name == 'div' and ins[0] is p:
                return Param(p.leaf, p.scale / c, shape)
        raise self.error(eqn, where, f'{name} of a parameter is not a scale or reshape of it',
                         'use parameters as weights and biases of dense and conv layers')

    # -- affine layers ---------------------------------------------------------------------

    def affine_input(self, eqn, r: Region, where: str) -> tuple[int, float]:
        """The node an affine layer reads, and a constant factor on its input to fold into W."""
        return self.materialise(r, where, pass_scale=True)

    def dense(self, eqn, ins: list, where: str) -> Region:
        a, b = ins
        (contract_a, contract_b), (batch_a, batch_b) = eqn.params['dimension_numbers']
        if isinstance(a, Region) and isinstance(b, Region):
            raise self.error(eqn, where, 'a product of two activations (attention or a '
                             'bilinear layer) is not recognised', MONTE_CARLO_HINT)
        act_is_lhs = isinstance(a, Region)
        r, w = (a, b) if act_is_lhs else (b, a)
        rc, wc = (contract_a, contract_b) if act_is_lhs else (contract_b, contract_a)
        if not isinstance(w, Param):
            raise self.error(eqn, where, 'a matrix product with a constant, not a parameter',
                             'make the matrix a parameter (a fixed linear map is not a layer)')
        if batch_a or batch_b or len(rc) != 1 or len(w.shape) != 2:
            raise self.error(eqn, where, 'dot_general is not x @ W over one axis of x',
                             'contract the channel axis of x with a 2-d weight')
        node, scale = self.affine_input(eqn, r, where)
        n = self.nodes[node]
        ch = r.perm[rc[0]]
        if ch is None:
            raise self.error(eqn, where, 'contracts a size-1 axis', 'contract the channels')
        self.set_channel(node, ch)
        out_dim = w.shape[1 - wc[0]]
        free = [p for i, p in enumerate(r.perm) if i != rc[0]]
        perm = tuple(free + [ch]) if act_is_lhs else tuple([ch] + free)
        attrs = dict(out_dim=out_dim, channel_axis=_axis_arg(ch, n.ndim))
        new = self.add_node(Node('dense', [node], n.ndim, ch, where, attrs=attrs,
                                 w_leaf=w.leaf, w_scale=w.scale * scale,
                                 fan_in=w.shape[wc[0]]))
        return Region(new, tuple(eqn.outvars[0].aval.shape), perm)

    def conv(self, eqn, ins: list, where: str) -> Region:
        r, w = ins
        p = eqn.params
        if not isinstance(r, Region) or not isinstance(w, Param):
            raise self.error(eqn, where, 'a convolution of a parameter by the input, or of the '
                             'input by a constant', 'convolve the input with a parameter kernel')
        if p['feature_group_count'] != 1 or p['batch_group_count'] != 1:
            raise self.error(eqn, where, 'grouped (depthwise) convolutions are not supported',
                             'use feature_group_count=1, or ' + MONTE_CARLO_HINT)
        if any(d != 1 for d in p['lhs_dilation']) or any(d != 1 for d in p['rhs_dilation']):
            raise self.error(eqn, where, 'dilated convolutions are not supported',
                             'use dilation 1')
        node, scale = self.affine_input(eqn, r, where)
        n = self.nodes[node]
        dn = p['dimension_numbers']
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        nsp = len(lhs_spec) - 2
        letters = default_dimension_numbers(nsp)[0][1:-1]
        in_perm = r.perm
        if any(in_perm[i] is None for i in lhs_spec):
            raise self.error(eqn, where, 'an axis of the convolution is an inserted size-1 axis',
                             'convolve the input as it is laid out')
        lhs = [''] * n.ndim
        lhs[in_perm[lhs_spec[0]]] = 'N'
        lhs[in_perm[lhs_spec[1]]] = 'C'
        for j, ax in enumerate(lhs_spec[2:]):
            lhs[in_perm[ax]] = letters[j]
        rhs = [''] * len(rhs_spec)
        rhs[rhs_spec[0]], rhs[rhs_spec[1]] = 'O', 'I'
        for j, ax in enumerate(rhs_spec[2:]):
            rhs[ax] = letters[j]
        out = [''] * len(out_spec)
        out[out_spec[0]], out[out_spec[1]] = 'N', 'C'
        for j, ax in enumerate(out_spec[2:]):
            out[ax] = letters[j]
        specs = (''.join(lhs), ''.join(rhs), ''.join(out))
        k = [w.shape[ax] for ax in rhs_spec[2:]]
        s = list(p['window_strides'])
        n_in = [r.shape[ax] for ax in lhs_spec[2:]]
        padding = _padding_name(p['padding'], n_in, k, s)
        if padding is None:
            raise self.error(eqn, where, f'explicit padding {tuple(p["padding"])} is neither '
                             'VALID nor SAME', 'use padding VALID or SAME')
        rhs_letters = [c for c in specs[1] if c not in 'IO']
        order = [letters.index(c) for c in rhs_letters]
        self.set_channel(node, lhs.index('C'))
        attrs = dict(out_chan=w.shape[rhs_spec[0]], filter_shape=tuple(k[j] for j in order),
                     strides=None if all(x == 1 for x in s) else tuple(s[j] for j in order),
                     padding=padding,
                     dimension_numbers=None if specs == default_dimension_numbers(nsp)
                     else specs)
        fan_in = w.shape[rhs_spec[1]] * math.prod(k)
        new = self.add_node(Node('conv', [node], len(out), out.index('C'), where, attrs=attrs,
                                 w_leaf=w.leaf, w_scale=w.scale * scale, fan_in=fan_in))
        return Region(new, tuple(eqn.outvars[0].aval.shape), tuple(range(len(out))))

    def add_bias(self, eqn, r: Region, b: Param, where: str) -> Region:
        """`r + b`: b is the bias of the open affine layer r reads."""
        n = self.nodes[r.node]
        ok = n.kind in ('dense', 'conv') and not n.read and n.b_leaf is None and not r.reduced
        if ok:
            ok = self.materialise(r, where, pass_scale=True) == (r.node, 1.0)
        if ok:  # one value per output channel, broadcast over every other axis
            out = n.attrs.get('out_dim', n.attrs.get('out_chan'))
            want = tuple(out if p == n.channel else 1 for p in r.perm)
            ok = b.shape == want
        if not ok:
            raise self.error(eqn, where, 'a parameter is added to an activation that is not the '
                             'output of a dense or conv layer (a shift such as batch norm\'s)',
                             'batch norm has no infinite-width kernel here: remove it, or '
                             + MONTE_CARLO_HINT)
        n.b_leaf, n.b_scale = b.leaf, b.scale
        return Region(r.node, r.shape, r.perm, lead=n.folded)

    # -- elementwise regions ---------------------------------------------------------------

    def elementwise(self, eqn, ins: list, where: str):
        name = eqn.primitive.name
        regions = [v for v in ins if isinstance(v, Region)]
        params = [v for v in ins if isinstance(v, Param)]
        shape = tuple(eqn.outvars[0].aval.shape)
        if params:
            if name == 'add' and len(regions) == 1 and len(params) == 1:
                return self.add_bias(eqn, regions[0], params[0], where)
            raise self.error(eqn, where, f'a parameter enters an activation through {name} (a '
                             'learnable scale or shift, e.g. batch norm or layer norm\'s '
                             'scale)', 'use LayerNorm without scale and bias (flax: '
                             'use_scale=False, use_bias=False), drop batch norm, or '
                             + MONTE_CARLO_HINT)
        if len(regions) == 1 and regions[0].reduced and regions[0].shape == regions[0].base_shape:
            node = self.try_layer_norm(regions[0], where)  # normalised, then a nonlinearity
            if node is not None:
                r = regions[0]
                ins = [Region(node, r.shape, r.perm) if v is r else v for v in ins]
                regions = [v for v in ins if isinstance(v, Region)]
        if len(regions) == 1 and regions[0].fn is None:
            r, c = regions[0], _scalar_factor(name, ins)
            if c is not None:
                return Region(r.node, shape, r.perm, lead=r.lead * c)
        sources = {(r.node, r.base_perm if r.fn is not None else r.perm) for r in regions}
        if len(sources) > 1:
            return self.fan_in(eqn, regions, where)
        if name == 'convert_element_type' and not np.issubdtype(
                eqn.params['new_dtype'], np.floating):
            raise self.error(eqn, where, 'the activations are cast to an integer type',
                             'keep activations floating point')
        r0 = regions[0]
        base_shape = r0.base_shape if r0.fn is not None else r0.shape
        base_perm = r0.base_perm if r0.fn is not None else r0.perm
        parts = [(v.fn if isinstance(v, Region) else None, v) for v in ins]
        prim, params_ = eqn.primitive, eqn.params
        leads = {r.lead for r in regions}
        lead = leads.pop() if len(leads) == 1 else 1.0  # one shared factor stays outside fn

        def fn(x, parts=parts, prim=prim, params_=params_, lead=lead):
            args = []
            for f, v in parts:
                if isinstance(v, Region):
                    c = v.lead / lead
                    y = x if c == 1.0 else x * jnp.asarray(c, x.dtype)
                    args.append(y if f is None else f(y))
                else:
                    args.append(_cast_const(v.value, x.dtype))
            if prim.name == 'convert_element_type':
                return args[0]
            if prim.name == 'select_n':
                return lax.select_n(*args)
            return prim.bind(*args, **params_)

        reduced = frozenset().union(*[r.reduced for r in regions])
        full = [r for r in regions if r.shape == shape]
        perm = full[0].perm if full else base_perm
        origin = next((r.origin for r in regions if r.origin), where)
        return Region(r0.node, shape, perm, fn, base_shape, base_perm, reduced, lead, origin)

    def fan_in(self, eqn, regions: list[Region], where: str) -> Region:
        name = eqn.primitive.name
        if name not in ('add', 'mul') or len(regions) != 2:
            raise self.error(eqn, where, f'{name} of values from two different layers',
                             'combine branches by adding, multiplying or concatenating them')
        if regions[0].shape != regions[1].shape:
            raise self.error(eqn, where, f'{name} broadcasts one branch against the other',
                             'combine branches of the same shape')
        nodes = [self.materialise(r, where) for r in regions]
        perms = {r.perm for r in regions}
        if len(perms) > 1:
            raise self.error(eqn, where, 'the branches are laid out differently',
                             'combine branches in the same axis order')
        n = self.nodes[nodes[0]]
        kind = 'sum' if name == 'add' else 'prod'
        new = self.add_node(Node(kind, nodes, n.ndim, n.channel, where))
        return Region(new, regions[0].shape, regions[0].perm)

    def concat(self, eqn, ins: list, where: str) -> Region:
        if not all(isinstance(v, Region) for v in ins):
            raise self.error(eqn, where, 'a constant or parameter is concatenated to the '
                             'activations', 'concatenate activations only')
        nodes = [self.materialise(r, where) for r in ins]
        if len({r.perm for r in ins}) > 1 or any(p is None for p in ins[0].perm):
            raise self.error(eqn, where, 'the branches are laid out differently',
                             'concatenate branches in the same axis order')
        n = self.nodes[nodes[0]]
        axis = ins[0].perm[eqn.params['dimension']]
        net = stax.FanInConcat(axis=_axis_arg(axis, n.ndim))
        new = self.add_node(Node('concat', nodes, n.ndim, n.channel, where, net=net))
        return Region(new, tuple(eqn.outvars[0].aval.shape), ins[0].perm)

    # -- reductions and pooling ------------------------------------------------------------

    def reduce(self, eqn, r, where: str) -> Region:
        name = eqn.primitive.name
        if not isinstance(r, Region):
            raise self.error(eqn, where, f'{name} of a parameter', 'use parameters as weights')
        axes = tuple(eqn.params['axes'])
        ir_axes = {r.perm[a] for a in axes} - {None}
        node = self.nodes[r.node]
        if 0 in ir_axes:
            raise self.error(eqn, where, 'a statistic over the batch axis (batch norm in '
                             'training mode)', 'batch statistics couple the examples: drop '
                             'batch norm, or ' + MONTE_CARLO_HINT)
        spatial = set(range(node.ndim)) - {0, node.channel}
        if name != 'reduce_sum':
            what = 'global max pooling' if ir_axes == spatial else f'{name} of the activations'
            raise self.error(eqn, where, f'{what} has no closed-form kernel',
                             'use a mean over the spatial axes, or ' + MONTE_CARLO_HINT)
        if ir_axes == spatial and spatial and (r.fn is None or not r.reduced):
            src = self.materialise(r, where)
            n = self.nodes[src]
            size = math.prod(r.shape[a] for a in axes)
            keep = [p for i, p in enumerate(r.perm) if i not in axes]
            order = sorted(p for p in keep if p is not None)
            perm = tuple(None if p is None else order.index(p) for p in keep)
            channel = order.index(n.channel)
            attrs = dict(channel_axis=_axis_arg(n.channel, n.ndim))
            new = self.add_node(Node('globalsum', [src], len(order), channel, where, attrs=attrs,
                                     window=size))
            return Region(new, tuple(eqn.outvars[0].aval.shape), perm)
        region = self.elementwise_like(eqn, r)
        return Region(region.node, region.shape, tuple(p for i, p in enumerate(r.perm)
                                                       if i not in axes), region.fn,
                      region.base_shape, region.base_perm, region.reduced | ir_axes,
                      region.lead)

    def elementwise_like(self, eqn, r: Region) -> Region:
        """`r` followed by the equation (any primitive of one array), inside its region."""
        base_shape = r.base_shape if r.fn is not None else r.shape
        base_perm = r.base_perm if r.fn is not None else r.perm
        f, prim, params = r.fn, eqn.primitive, eqn.params

        def fn(x, f=f, prim=prim, params=params):
            return prim.bind(x if f is None else f(x), **params)

        return Region(r.node, tuple(eqn.outvars[0].aval.shape), r.perm, fn, base_shape,
                      base_perm, r.reduced, r.lead)

    def sum_pool(self, eqn, r, where: str) -> Region:
        p = eqn.params
        if not isinstance(r, Region):
            raise self.error(eqn, where, 'pooling of a parameter', 'pool activations only')
        src = self.materialise(r, where)
        n = self.nodes[src]
        if any(d != 1 for d in p['base_dilation']) or any(d != 1 for d in p['window_dilation']):
            raise self.error(eqn, where, 'dilated pooling is not supported', 'use dilation 1')
        by_ir = {q: i for i, q in enumerate(r.perm) if q is not None}
        spatial = [a for a in range(n.ndim) if a not in (0, n.channel)]
        for a in (0, n.channel):
            if p['window_dimensions'][by_ir[a]] != 1 or p['window_strides'][by_ir[a]] != 1:
                raise self.error(eqn, where, 'pooling over the batch or channel axis',
                                 'pool over spatial axes only')
        k = [p['window_dimensions'][by_ir[a]] for a in spatial]
        s = [p['window_strides'][by_ir[a]] for a in spatial]
        n_in = [r.shape[by_ir[a]] for a in spatial]
        padding = _padding_name([p['padding'][by_ir[a]] for a in spatial], n_in, k, s)
        if padding is None:
            raise self.error(eqn, where, f'explicit padding {tuple(p["padding"])} is neither '
                             'VALID nor SAME', 'use padding VALID or SAME')
        attrs = dict(window_shape=tuple(k), strides=tuple(s), padding=padding,
                     channel_axis=_axis_arg(n.channel, n.ndim))
        new = self.add_node(Node('sumpool', [src], n.ndim, n.channel, where, attrs=attrs,
                                 window=math.prod(k)))
        return Region(new, tuple(eqn.outvars[0].aval.shape), r.perm)

    # -- layout ----------------------------------------------------------------------------

    def layout(self, eqn, r, where: str) -> Region:
        name = eqn.primitive.name
        shape = tuple(eqn.outvars[0].aval.shape)
        if r.fn is not None and r.reduced:
            out = self.elementwise_like(eqn, r)
            return Region(out.node, shape, _relabel(r.shape, r.perm, shape, name, eqn.params)
                          or tuple([None] * len(shape)), out.fn, out.base_shape, out.base_perm,
                          out.reduced, out.lead)
        if r.fn is not None:
            r = Region(self.materialise(r, where), r.shape, r.perm)
        perm = _relabel(r.shape, r.perm, shape, name, eqn.params)
        if perm is not None:
            return Region(r.node, shape, perm)
        node = self.nodes[r.node]
        if name == 'reshape' and r.perm[0] == 0 and len(shape) == 2 and shape[0] == r.shape[0]:
            self.nodes[r.node].read = True
            new = self.add_node(Node('layer', [r.node], 2, 1, where, net=stax.Flatten()))
            return Region(new, shape, (0, 1))
        raise self.error(eqn, where, f'{name} from {r.shape} to {shape} mixes axes other than '
                         f'a flatten to (batch, features) (network rank {node.ndim})',
                         'flatten with x.reshape(x.shape[0], -1)')

    # -- nodes -----------------------------------------------------------------------------

    def add_node(self, node: Node) -> int:
        for i in node.inputs:
            self.nodes[i].read = True
        self.nodes.append(node)
        return len(self.nodes) - 1

    def set_channel(self, node: int, channel: int) -> None:
        if self.nodes[node].kind == 'input':
            self.nodes[node].channel = channel

    def materialise(self, r: Region, where: str, pass_scale: bool = False):
        """The node holding `r`'s value: `r.fn` becomes an activation or LayerNorm node, or
        folds into its source (a constant factor after an affine layer or a sum pool).  With
        `pass_scale` (for an affine consumer), returns (node, constant factor left to fold)."""
        if id(r) in self.done:  # a region read twice is one layer with two consumers
            node, scale = self.done[id(r)][1], 1.0
        else:
            node, scale = self._materialise(r, where, pass_scale)
            if scale == 1.0:
                self.done[id(r)] = (r, node)
        return (node, scale) if pass_scale else node

    def _materialise(self, r: Region, where: str, pass_scale: bool) -> tuple[int, float]:
        n = self.nodes[r.node]
        where = r.origin or where
        lead = r.lead / n.folded
        if lead != 1.0 and r.fn is not None and self.can_fold(n, lead):
            self.fold(n, lead)  # c·(x @ W) or sum_pool(x) / 4 first, then the activation
            lead = 1.0
        fn = r.fn if lead == 1.0 else _after_scale(r.fn, lead)
        if r.reduced:
            return self.layer_norm(r, fn, where), 1.0
        kind, value = ('scale', lead) if r.fn is None else _classify(fn, self.dtype)
        if kind == 'identity' or (kind == 'scale' and value == 1.0):
            return r.node, 1.0
        if kind == 'scale':
            if self.can_fold(n, value):
                self.fold(n, value)
                return r.node, 1.0
            if pass_scale:
                return r.node, value
            value = _numerical(fn, f'multiplication by {value:g}')
        net, note = value if isinstance(value, tuple) else (value, None)
        if note:
            self.notes.append(f'{where}: {note}')
        return self.add_node(Node('layer', [r.node], n.ndim, n.channel, where, net=net)), 1.0

    def can_fold(self, n: Node, c: float) -> bool:
        """Whether a factor c on the output of `n` folds into it: into an open affine layer's
        weight and bias, or into a sum pool that it turns into an average pool."""
        if n.read:
            return False
        if n.kind in ('dense', 'conv'):
            return True
        return n.kind in ('sumpool', 'globalsum') and bool(np.isclose(c * n.window, 1.0,
                                                                      rtol=1e-6))

    def fold(self, n: Node, c: float) -> None:
        if n.kind in ('sumpool', 'globalsum'):
            n.kind = 'avgpool' if n.kind == 'sumpool' else 'globalavg'
        else:
            n.w_scale *= c
            n.b_scale *= c
        n.folded *= c

    def try_layer_norm(self, r: Region, where: str) -> int | None:
        """The LayerNorm node of `r` if `r` is one (see `layer_norm`), else None."""
        if r.perm != r.base_perm or any(p is None for p in r.perm):
            return None
        try:
            return self.materialise(r, where)
        except TraceError:
            return None

    def layer_norm(self, r: Region, fn: Callable, where: str) -> int:
        """A LayerNorm node if `fn` is (x - mean) / sqrt(var + eps) over the reduced axes."""
        n = self.nodes[r.node]
        if r.shape != r.base_shape or r.perm != r.base_perm:
            raise TraceError('a statistic over the channels (a mean or sum) is used as a '
                             'value, not to normalise the activations', path=where,
                             hint='only layer norm may reduce over channels; ' + MONTE_CARLO_HINT)
        axes = sorted(r.reduced)
        traced = tuple(i for i, p in enumerate(r.base_perm) if p in r.reduced)
        eps = _fit_layer_norm(fn, r.base_shape, traced, self.dtype)
        if eps is None:
            raise TraceError('a normalisation over the channels that is not (x - mean) / '
                             'sqrt(var + eps)', path=where, hint='use a plain layer norm without '
                             'scale and bias (flax: use_scale=False, use_bias=False), or '
                             + MONTE_CARLO_HINT)
        if n.channel not in axes:
            raise TraceError('a normalisation that does not include the channel axis',
                             path=where, hint='normalise over the channels')
        axis = (_axis_arg(axes[0], n.ndim) if len(axes) == 1
                else tuple(_axis_arg(a, n.ndim) for a in axes))
        net = stax.LayerNorm(axis=axis, eps=eps, channel_axis=_axis_arg(n.channel, n.ndim))
        return self.add_node(Node('layer', [r.node], n.ndim, n.channel, where, net=net))

    # -- the network -----------------------------------------------------------------------

    def build(self, out: int, stds: list[float], names: list[str], W_std, b_std) -> Recognised:
        nets = {i: self.layer_net(n, stds, names, W_std, b_std) for i, n in enumerate(self.nodes)}
        layers = _series_parallel(self.nodes, nets, out)
        return Recognised(stax.serial(*layers), self.notes)

    def layer_net(self, n: Node, stds, names, W_std, b_std) -> Net | None:
        if n.kind in ('input', 'sum', 'prod'):
            return {'input': None, 'sum': stax.FanInSum(), 'prod': stax.FanInProd()}[n.kind]
        if n.kind in ('layer', 'concat'):
            return n.net
        if n.kind == 'sumpool':
            return stax.SumPool(**n.attrs)
        if n.kind == 'avgpool':
            return stax.AvgPool(**n.attrs)
        if n.kind == 'globalsum':
            return stax.GlobalSumPool(**n.attrs)
        if n.kind == 'globalavg':
            return stax.GlobalAvgPool(**n.attrs)
        w, b, param = self.affine_stds(n, stds, names)
        w = w if W_std is None else W_std
        b = b if b_std is None or b is None else b_std
        self.notes.append(f'{n.where}: {n.kind} layer, {param} parameterisation, W_std={w:g}'
                          + ('' if b is None else f', b_std={b:g}') + ' (from the initial '
                          f'std of {names[n.w_leaf]}' + ('' if n.b_leaf is None else
                                                        f' and {names[n.b_leaf]}') + ')')
        builder = stax.Dense if n.kind == 'dense' else stax.Conv
        return builder(W_std=w, b_std=b, parameterization=param, **n.attrs)

    def affine_stds(self, n: Node, stds, names) -> tuple[float, float | None, str]:
        """(W_std, b_std, parameterisation) of an affine layer from its parameters' initial
        stds σ and constant factors c (module docstring)."""
        for leaf in (n.w_leaf, n.b_leaf):
            if leaf is not None and math.isnan(stds[leaf]):
                raise TraceError(f'the initial std of {names[leaf]} is unknown (its initialiser '
                                 'is not a variance_scaling, normal or zeros one)', path=n.where,
                                 hint='pass the stds: ntc.trace(apply_fn, params, x, '
                                 'param_std=...)')
        sigma, c = stds[n.w_leaf], abs(n.w_scale)
        if np.isclose(c, 1.0, rtol=1e-6):
            param, w = 'standard', sigma * math.sqrt(n.fan_in)
        elif np.isclose(sigma, 1.0, rtol=1e-6):
            param, w = 'ntk', c * math.sqrt(n.fan_in)
        else:
            raise TraceError(f'{names[n.w_leaf]} has initial std {sigma:g} and is scaled by '
                             f'{c:g}: neither the standard (scale 1) nor the NTK (std 1) '
                             'parameterisation', path=n.where, hint='initialise it with std 1 '
                             'and scale by W_std/sqrt(fan_in), or leave it unscaled')
        b = None
        if n.b_leaf is not None:
            sb, cb = stds[n.b_leaf], abs(n.b_scale)
            b = sb * cb
            fits = np.isclose(cb, 1.0, rtol=1e-6) if param == 'standard' else (
                np.isclose(sb, 1.0, rtol=1e-6) or np.isclose(sb * cb, cb, rtol=1e-6))
            if not fits:
                raise TraceError(f'the bias {names[n.b_leaf]} (initial std {sb:g}, scale '
                                 f'{cb:g}) does not follow the {param} parameterisation of its '
                                 'weight', path=n.where, hint='scale the bias like the weight')
        return _tidy(w, self.dtype), None if b is None else _tidy(b, self.dtype), param


# ----------------------------------------------------------------------------- helpers


def _axis_arg(axis: int, ndim: int) -> int:
    """A network axis as builders take it: -1 for the last one (their default)."""
    return -1 if axis == ndim - 1 else axis


def _uniform(value: np.ndarray):
    v = np.asarray(value)
    if v.size and np.all(v == v.flat[0]):
        return float(v.flat[0])
    return None


def _cast_const(value: np.ndarray, dtype):
    v = np.asarray(value)
    u = _uniform(v) if v.ndim else None
    if u is not None and np.issubdtype(v.dtype, np.floating):
        v = np.asarray(u)
    if np.issubdtype(v.dtype, np.floating):
        return v.astype(dtype)
    return v


def _after_scale(fn: Callable | None, c: float) -> Callable:
    """t -> fn(c·t)."""
    def scaled(x):
        y = x * jnp.asarray(c, x.dtype)
        return y if fn is None else fn(y)
    return scaled


def _scalar_factor(name: str, ins: list) -> float | None:
    """c when the equation multiplies its one activation operand by a constant scalar c."""
    consts = [v for v in ins if isinstance(v, Const)]
    if name == 'neg':
        return -1.0
    if len(ins) != 2 or len(consts) != 1 or _uniform(consts[0].value) is None:
        return None
    c = _uniform(consts[0].value)
    if name == 'mul':
        return c
    if name == 'div' and isinstance(ins[0], Region) and c != 0:
        return 1.0 / c
    return None


def _padding_name(pads, n_in, k, s) -> str | None:
    pads = [tuple(p) for p in pads]
    if all(p == (0, 0) for p in pads):
        return 'VALID'
    if all(p == same_pads(n, kk, ss) for p, n, kk, ss in zip(pads, n_in, k, s)):
        return 'SAME'
    return None


def _relabel(old, perm, new, name, params):
    """The network axes of `new` after a layout equation that only permutes axes or inserts
    and removes size-1 axes, or None."""
    if name == 'transpose':
        return tuple(perm[i] for i in params['permutation'])
    if name == 'broadcast_in_dim':
        dims = params['broadcast_dimensions']
        if any(old[i] != new[d] for i, d in enumerate(dims)):
            return None
        out = [None] * len(new)
        for i, d in enumerate(dims):
            out[int(d)] = perm[i]
        return tuple(out) if all(new[i] == 1 for i, p in enumerate(out) if p is None) else None
    real = [(d, p) for d, p in zip(old, perm) if p is not None or d != 1]
    out, j = [], 0
    for d in new:
        if j < len(real) and real[j][0] == d:
            out.append(real[j][1])
            j += 1
        elif d == 1:
            out.append(None)
        else:
            return None
    if j != len(real) or any(p is None for d, p in real if d != 1):
        return None
    return tuple(out)


def _series_parallel(nodes: list[Node], nets: dict, out: int) -> list[Net]:
    """The layers from the input to `out`, as a serial list in which each fan-in's branches
    start at a FanOut placed at the fan-in's immediate dominator."""
    dom = []
    for i, n in enumerate(nodes):
        if not n.inputs:
            dom.append({i})
            continue
        common = set.intersection(*[dom[j] for j in n.inputs])
        dom.append(common | {i})
    emitted: set[int] = set()

    def idom(i):
        return max(dom[i] - {i})

    def chain(i: int, base: int) -> list[Net]:
        layers = []
        while i != base:
            if i in emitted:
                raise TraceError('a value is used by two branches that do not simply fan out '
                                 'and merge again', path=nodes[i].where,
                                 hint='write the network as fan-outs closed by sums, products '
                                 'or concatenations (a series-parallel graph)')
            emitted.add(i)
            n = nodes[i]
            if len(n.inputs) == 1:
                layers.append(nets[i])
                i = n.inputs[0]
                continue
            split = idom(i)
            branches = []
            for j in n.inputs:
                sub = chain(j, split)[::-1]
                branches.append(stax.Identity() if not sub else sub[0] if len(sub) == 1
                                else stax.serial(*sub))
            layers += [nets[i], stax.parallel(*branches), stax.FanOut(len(n.inputs))]
            i = split
        return layers

    return chain(out, 0)[::-1]


# ----------------------------------------------------------------------------- identification


def _grid(dtype) -> np.ndarray:
    return np.concatenate([np.linspace(-4, 4, 161), [-7.5, -2.25, 0.3, 1.7, 6.5]]).astype(dtype)


def _close(a, b, dtype) -> bool:
    tol = 1e-9 if np.dtype(dtype).itemsize >= 8 else 2e-5
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all(np.abs(a - b) <= tol * (1 + np.abs(b))))


def _classify(fn: Callable, dtype):
    """Identify a scalar function by its values on a grid: ('identity', None), ('scale', s),
    or ('layer', Net or (Net, note))."""
    t = _grid(dtype)
    try:
        f = np.asarray(fn(jnp.asarray(t)), np.float64)
    except Exception as e:  # a function that cannot run on a vector: not elementwise
        raise TraceError(f'an elementwise step cannot be evaluated on its own: {_first_line(e)}',
                         path='trace') from None
    t = t.astype(np.float64)
    if f.shape != t.shape:
        raise TraceError('an elementwise step changes the shape of the activations',
                         path='trace')

    def same(g):
        return _close(f, g, dtype)

    if same(t):
        return 'identity', None
    s = f[-1] / t[-1]
    if same(s * t):
        return 'scale', _tidy(s, dtype)
    lo, hi = -f[np.argmin(np.abs(t + 1))], f[np.argmin(np.abs(t - 1))]
    relu_family = same(np.where(t > 0, hi * t, lo * t))
    if relu_family:
        a, b = _tidy(lo, dtype), _tidy(hi, dtype)
        if (a, b) == (0.0, 1.0):
            return 'layer', stax.Relu()
        if (a, b) == (-1.0, 1.0):
            return 'layer', stax.Abs()
        if b == 1.0:
            return 'layer', stax.LeakyRelu(a)
        return 'layer', stax.ABRelu(a, b)
    if same(special.erf(t)):
        return 'layer', stax.Erf()
    c = f[np.argmin(np.abs(t))]
    a = f[np.argmin(np.abs(t - 6.5))] - c
    if a != 0 and abs((f[np.argmin(np.abs(t - 1))] - c) / a) < 1:
        b = special.erfinv((f[np.argmin(np.abs(t - 1))] - c) / a)
        if same(a * special.erf(b * t) + c):
            return 'layer', stax.Erf(_tidy(a, dtype), _tidy(b, dtype), _tidy(c, dtype))
    gelu = t * 0.5 * (1 + special.erf(t / math.sqrt(2)))
    if same(gelu):
        return 'layer', stax.Gelu()
    gelu_tanh = 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3)))
    if same(gelu_tanh):
        return 'layer', stax.Gelu(approximate=True)
    for builder, phi in ((stax.Sin, np.sin), (stax.Cos, np.cos), (stax.Sign, np.sign)):
        if same(phi(t)):
            return 'layer', builder()
    a0 = f[np.argmin(np.abs(t))]
    if a0 > 0 and np.all(f > 0):
        b = math.log(f[np.argmin(np.abs(t - 1))] / a0)
        if same(a0 * np.exp(b * t)):
            return 'layer', stax.Exp(_tidy(a0, dtype), _tidy(b, dtype))
    return 'layer', _numerical(fn, 'no closed form')


def _numerical(fn: Callable, why: str):
    return (stax.ElementwiseNumerical(fn=fn, deg=NUMERICAL_DEG),
            f'activation with {why}: kernel by {NUMERICAL_DEG}x{NUMERICAL_DEG}-point '
            'Gauss-Hermite quadrature (ElementwiseNumerical)')


def _fit_layer_norm(fn: Callable, shape, axes, dtype) -> float | None:
    """eps if `fn(x) == (x - mean) / sqrt(var + eps)` over `axes`, else None: eps is read off
    a probe whose variance is small (where eps shows), then the whole map is checked."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    small = 1e-4 if np.dtype(dtype).itemsize < 8 else 1e-2
    xs = (x * math.sqrt(small)).astype(dtype)
    ys = np.asarray(fn(jnp.asarray(xs)), np.float64)
    xs = xs.astype(np.float64)
    d = xs - xs.mean(axis=axes, keepdims=True)
    var = xs.var(axis=axes, keepdims=True)
    mask = np.abs(d) >= np.median(np.abs(d))
    if not np.all(np.isfinite(ys)) or np.any(ys[mask] == 0):
        return None
    eps = float(np.median(((d / np.where(mask, ys, 1)) ** 2 - var)[mask]))
    eps = max(_tidy(eps, dtype, digits=6), 0.0) if abs(eps) > small * 1e-9 else 0.0
    for scale in (1.0, math.sqrt(small)):
        xt = (x * scale).astype(dtype)
        y = np.asarray(fn(jnp.asarray(xt)), np.float64)
        xt = xt.astype(np.float64)
        want = (xt - xt.mean(axis=axes, keepdims=True)) / np.sqrt(
            xt.var(axis=axes, keepdims=True) + eps)
        if not _close(y, want, dtype) and not np.allclose(y, want, rtol=1e-3, atol=1e-3):
            return None
    return eps
