"""The public entry points that tie the stages together: `compile`, and the
``init_fn, apply_fn, kernel_fn`` triple every `Net` unpacks into."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from . import checks
from .errors import InputError, ShapeError
from .ir.types import TensorType
from .lower import finite
from .passes import KERNEL_NAMES, Options, run_passes
from .passes.check import check
from .passes.infer_types import infer_types
from .passes.options import SHAPE_NAMES
from .plan import KernelPlan, result_type

if TYPE_CHECKING:  # the front end (ntc.net) sits above this module and calls it
    from .net import Net


def normalize_get(get, shapes: bool = False) -> tuple[tuple[str, ...], str]:
    """(names, form): the kernels asked for and how to return them ('one', 'tuple', 'kernel').
    With `shapes`, `get` may also name NT's `shape1` / `shape2` (what a kernel_fn answers)."""
    if get is None:
        return KERNEL_NAMES, 'kernel'
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise InputError('get is empty', hint=f'ask for some of {", ".join(KERNEL_NAMES)}')
    for name in names:
        if name in SHAPE_NAMES and not shapes:
            raise InputError(f'get={get!r} names {name!r}, an output shape, not a kernel that '
                             'a plan computes', hint=f'ask kernel_fn(x1, x2, get={name!r}) for '
                                                     'it, or choose from '
                                                     f'{", ".join(KERNEL_NAMES)}')
        if name not in KERNEL_NAMES + (SHAPE_NAMES if shapes else ()):
            raise InputError(f'get={get!r} names an unknown kernel {name!r}',
                             hint=f'choose from {", ".join(KERNEL_NAMES)}'
                                  + (f', {", ".join(SHAPE_NAMES)}' if shapes else ''))
    return names, ('one' if isinstance(get, str) else 'tuple')


def input_type(net: Net, input_shape: Sequence[int]) -> TensorType:
    """The TensorType of the input: batch/channel axes from the first layer that names them."""
    shape = tuple(None if d is None or d < 0 else int(d) for d in input_shape)
    if len(shape) < 2:
        raise ShapeError(f'input shape {tuple(input_shape)} needs a batch axis and a channel axis',
                         hint='pass (N, features) or (N, spatial..., channels)')
    batch_axis, channel_axis, first = 0, -1, None
    for node in net.graph().nodes():
        axes = node.op.input_axes(len(shape))
        if axes is not None:
            (batch_axis, channel_axis), first = axes, node
            break
    for name in ('batch_axis', 'channel_axis'):
        axis = getattr(first.op, name, None) if first is not None else None
        if isinstance(axis, int) and not -len(shape) <= axis < len(shape):
            raise ShapeError(f'{name}={axis} is out of range for input shape '
                             f'{tuple(input_shape)} of rank {len(shape)}', path=first.path,
                             hint=f'use an axis in {-len(shape)}..{len(shape) - 1}')
    specs = first.op.input_specs() if first is not None else None
    if specs is not None and len(specs[0]) != len(shape):
        lhs = specs[0]
        raise ShapeError(f'dimension_numbers {specs} take inputs of rank {len(lhs)} '
                         f'{_axes_example(lhs)}, got input shape {tuple(input_shape)} of rank '
                         f'{len(shape)}', path=first.path,
                         hint='reshape the inputs' + (
                             f', or give the {first.op.kind} a {len(shape) - 2}-d filter'
                             if len(shape) > 2 else ', or use Dense for inputs without '
                             'spatial axes'))
    shape = tuple(None if i == batch_axis % len(shape) else d for i, d in enumerate(shape))
    try:
        return TensorType(shape=shape, batch_axis=batch_axis, channel_axis=channel_axis)
    except ValueError as e:
        errors = e.errors() if hasattr(e, 'errors') else [{'msg': str(e)}]
        msg = errors[0]['msg'].removeprefix('Value error, ')
        raise ShapeError(f'input shape {tuple(input_shape)}: {msg}',
                         path=first.path if first is not None else None) from None


def _axes_example(lhs: str) -> str:
    """'NHWC' -> '(N, H, W, C)'."""
    return '(' + ', '.join(lhs) + ')'


def typed_graph(net: Net, t: TensorType, checked: bool = True):
    """The net's graph with types inferred (and the architecture checked, if `checked`)."""
    g = net.graph().copy()
    g.replace(g.input_nodes()[0], ttype=t)
    g = infer_types(g, Options())
    return check(g, Options()) if checked else g


def compile(net: Net, input_shape: Sequence[int], get=('nngp', 'ntk'), *,  # noqa: A001
            reference: bool = False, force_full: bool = False, roll_loops: bool = True,
            diagonal_spatial: bool = False, verify: bool = True,
            dtype=jnp.float32) -> KernelPlan:
    """Compile `net` into a KernelPlan for inputs of `input_shape` (batch entry ignored).

    `reference=True` gives the reference plan (joint Gram matrix, FULL layouts, no folding), the
    semantic oracle every optimisation must reproduce; `force_full=True` keeps FULL spatial
    layouts everywhere; `roll_loops=False` unrolls runs of identical layers (by default they run
    as loops, see `ntc.passes.roll_loops`); `diagonal_spatial=True` returns only the spatial
    diagonal of the output kernels, (N1, N2, s1, s2, ...), as NT's `diagonal_spatial`.
    """
    names, _ = normalize_get(get)
    t = input_type(net, input_shape)
    empty = [i for i, d in enumerate(t.shape) if i != t.batch and d == 0]
    if empty:
        raise ShapeError(f'input shape {tuple(input_shape)} has a zero-size axis {empty[0]}: '
                         'the kernel averages over the features, of which there are none',
                         hint='give every example at least one feature')
    opts = Options(get=names, reference=reference, force_full=force_full, roll_loops=roll_loops,
                   diagonal_spatial=bool(diagonal_spatial))
    g = net.graph().copy()
    g.replace(g.input_nodes()[0], ttype=t)
    graph = run_passes(g, opts, check_ir=verify)
    source = typed_graph(net, t)
    return KernelPlan(graph, t, opts, source, dtype_bytes=jnp.dtype(dtype).itemsize)


def same_inputs(x1, x2) -> bool:
    """Whether x2 is x1: the same object, or equal concrete arrays (traced values never are).

    NT treats kernel_fn(x, x) as the symmetric kernel_fn(x, None); it matters for Dropout, whose
    noise is shared only by an input and itself, and lets the runtime compute half the tiles."""
    if x1 is x2:
        return True
    if not checks.is_concrete(x1, x2):
        return False
    if np.shape(x1) != np.shape(x2):
        return False
    return bool(np.array_equal(np.asarray(x1), np.asarray(x2)))


def finite_graph(net: Net, input_shape: Sequence[int]):
    """(input type, typed graph) of the finite network on inputs of `input_shape` (what init_fn
    and apply_fn run), cached per input type: inputs differing only in batch size share it."""
    t = input_type(net, input_shape)
    cache = net._cache.setdefault('typed', {})
    if t not in cache:
        cache[t] = typed_graph(net, t, checked=False)
    return t, cache[t]


def output_shape(net: Net, x_shape: Sequence[int]) -> tuple[int, ...]:
    """The finite network's output shape on inputs of `x_shape` (NT's `Kernel.shape1`), from
    shape inference."""
    t, g = finite_graph(net, x_shape)
    out = g.node(g.output).ttype
    return tuple(int(x_shape[t.batch]) if i == out.batch else int(d)
                 for i, d in enumerate(out.shape))


def make_kernel_fn(net: Net):
    """NT's `kernel_fn(x1, x2=None, get=None, **kwargs)` for `net`, traceable under jax.jit.
    Besides kernels, `get` may name NT's `shape1` / `shape2`: the output shapes (tuples)."""
    cache = net._cache.setdefault('plans', {})
    batch_axes: dict[int, int] = {}  # input rank -> batch axis

    def kernel_fn(x1, x2=None, get=None, *, diagonal_batch: bool = True,
                  diagonal_spatial: bool = False, **kwargs):
        names, form = normalize_get(get, shapes=True)
        # NT: a layer requiring diagonal_batch=False makes the network's marginals full
        diagonal_batch = diagonal_batch and not any(
            node.op.needs_joint_batch() for node in net.graph().nodes())
        if x2 is not None and same_inputs(x1, x2):
            x2 = None  # NT's convention: kernel_fn(x, x) is kernel_fn(x, None)
        x1 = checks.as_input(x1, 'x1')
        x2 = None if x2 is None else checks.as_input(x2, 'x2')
        if x1.ndim not in batch_axes:  # NT's batch_axis, from the first layer that names it
            batch_axes[x1.ndim] = input_type(net, x1.shape).batch if x1.ndim >= 2 else 0
        b = batch_axes[x1.ndim]
        features = x1.shape[:b] + x1.shape[b + 1:]
        if x2 is not None and (x1.ndim != x2.ndim or features != x2.shape[:b] + x2.shape[b + 1:]):
            raise InputError(f'x1 has shape {x1.shape} and x2 has shape {x2.shape}: they must '
                             f'have the same feature shape (all axes but the batch axis {b})')
        kernels = tuple(n for n in names if n in KERNEL_NAMES)

        def plan_for(kernels):
            key = (features, x1.ndim, kernels, bool(diagonal_spatial))
            if key not in cache:
                cache[key] = compile(net, x1.shape, kernels, dtype=x1.dtype,
                                     diagonal_spatial=diagonal_spatial)
            return cache[key]

        def batch_marginals():
            """NT's `diagonal_batch=False`: cov1 = K(x1, x1), cov2 = K(x2, x2) over every pair
            of examples, (N, N, ...) in the output layout (cov2 None when x2 is None)."""
            full = plan_for(('nngp',))
            return dict(cov1=full.raw(x1, None, **kwargs)['nngp'],
                        cov2=None if x2 is None else full.raw(x2, None, **kwargs)['nngp'])

        out = {}
        if kernels:
            plan = plan_for(kernels)
            if form == 'kernel':
                k = plan.kernel(x1, x2, **kwargs)
                return k if diagonal_batch else k.replace(**batch_marginals())
            out = dict(plan.raw(x1, x2, **kwargs))
            if not diagonal_batch and {'cov1', 'cov2'} & set(kernels):
                out.update(batch_marginals())
        if 'shape1' in names or 'shape2' in names:
            out['shape1'] = output_shape(net, x1.shape)
            out['shape2'] = out['shape1'] if x2 is None else output_shape(net, x2.shape)
        if form == 'tuple':  # NT: a tuple `get` gives a namedtuple, even of one kernel
            return result_type(names)(*(out[n] for n in names))
        return out[names[0]]

    kernel_fn.net = net
    return kernel_fn


def make_init_fn(net: Net):
    """NT's `init_fn(rng, input_shape) -> (output_shape, params)`, params in NT's nested
    structure (`Net.nested_params`)."""
    def init_fn(rng, input_shape):
        t, g = finite_graph(net, input_shape)
        out = g.node(g.output).ttype
        out_shape = tuple(input_shape[t.batch] if d is None else d for d in out.shape)
        return out_shape, net.nested_params(finite.init_params(g, rng))

    return init_fn


def make_apply_fn(net: Net):
    """NT's `apply_fn(params, inputs, rng=None, **kwargs)`: the finite network; `params` as
    init_fn returns them, or the dict keyed by layer path the finite network reads."""
    def apply_fn(params, inputs, rng=None, **kwargs):
        x = checks.as_input(inputs, 'inputs')
        checks.check_values(x, 'inputs', kwargs.get('mask_constant'))
        _, g = finite_graph(net, x.shape)
        return finite.apply(g, net.path_params(params), x, rng=rng, **kwargs)

    return apply_fn
