"""The public entry points that tie the stages together: `compile`, and the
``init_fn, apply_fn, kernel_fn`` triple every `Net` unpacks into."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from . import checks
from .covariance.kernel import Kernel
from .errors import InputError, ShapeError
from .ir.graph import Graph
from .ir.types import SPATIAL_RANK, TensorType
from .lower import finite
from .passes import KERNEL_NAMES, Options, run_passes
from .passes.check import check
from .passes.choose_layouts import propagate_needs
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


# ----------------------------------------------------------------------------- input trees
# NT's networks take and give one array, or a (nested) tuple or list of them: `parallel` at the
# start takes one entry per branch.  A tree describes that structure: LEAF for one array, or
# ('tuple' | 'list', children); hashable, so that graphs and plans are cached per structure.

LEAF = 'array'
InputTree = Any  # LEAF, or (container name, child trees)
OutputTree = Any  # the same form, with output positions (`Graph.outputs` indices) as leaves


CONTAINERS = ('tuple', 'list', 'parallel-tuple', 'parallel-list')  # the last two: outputs
# of a `parallel`, of the container type it received (init_fn gives tuples for them)


def is_container(tree) -> bool:
    return isinstance(tree, tuple) and len(tree) == 2 and tree[0] in CONTAINERS


def split_tree(x, is_leaf) -> tuple[list, InputTree]:
    """(leaves in order, tree) of a value made of nested tuples and lists."""
    if is_leaf(x):
        return [x], LEAF
    leaves, subtrees = [], []
    for item in x:
        got, sub = split_tree(item, is_leaf)
        leaves += got
        subtrees.append(sub)
    return leaves, ('list' if isinstance(x, list) else 'tuple', tuple(subtrees))


def tree_leaves(tree) -> list:
    """The leaves of a tree, in order."""
    if not is_container(tree):
        return [tree]
    return [leaf for sub in tree[1] for leaf in tree_leaves(sub)]


def map_tree(tree, f):
    """The tree with each leaf replaced by f(leaf)."""
    if not is_container(tree):
        return f(tree)
    return (tree[0], tuple(map_tree(sub, f) for sub in tree[1]))


def rebuild(tree, values, shapes: bool = False):
    """NT's containers: `tree` with its leaves, in order, replaced by `values` (tuples and
    lists as the tree names them; with `shapes`, as init_fn nests output shapes: a tuple for
    every `parallel`)."""
    items = iter(values)

    def build(t):
        if not is_container(t):
            return next(items)
        as_list = t[0].endswith('list') and not (shapes and t[0].startswith('parallel'))
        return (list if as_list else tuple)(build(sub) for sub in t[1])
    return build(tree)


def _is_array(x) -> bool:
    """An array leaf: anything but a tuple or list, or one holding numbers only."""
    return not isinstance(x, (tuple, list)) or _numeric(x)


def _numeric(x) -> bool:
    return all(isinstance(i, (int, float, np.number)) or (isinstance(i, (tuple, list))
                                                           and _numeric(i)) for i in x)


def _is_shape(x) -> bool:
    """A shape leaf: a tuple or list of ints (or None, NT's unknown size)."""
    return isinstance(x, (tuple, list)) and all(
        d is None or isinstance(d, (int, np.integer)) for d in x)


def split_inputs(x) -> tuple[list, InputTree]:
    """(arrays, tree) of kernel_fn's or apply_fn's `x`."""
    return split_tree(x, _is_array)


def split_shapes(input_shape) -> tuple[list, InputTree]:
    """(shapes, tree) of init_fn's or compile's `input_shape`: one shape or a (nested)
    tuple/list of shapes."""
    if not isinstance(input_shape, (tuple, list)):
        raise ShapeError(f'input shape {input_shape!r} is not a tuple of sizes',
                         hint='pass (N, features), or a tuple of such shapes for a network '
                              'with several inputs')
    return split_tree(input_shape, lambda x: _is_shape(x) or not isinstance(x, (tuple, list)))


# ----------------------------------------------------------------------------- input types


def input_type(net: Net, input_shape: Sequence[int]) -> TensorType:
    """The TensorType of the input of a one-input net."""
    return input_types(net.graph(LEAF), [input_shape])[0]


def input_types(graph: Graph, shapes: Sequence[Sequence[int]]) -> list[TensorType]:
    """The TensorType of each input node of `graph` for inputs of `shapes` (in order)."""
    inputs = graph.input_nodes()
    if len(shapes) != len(inputs):
        raise ShapeError(f'the network takes {len(inputs)} input(s), got {len(shapes)} shape(s)')
    return [_input_type(graph, nid, shape) for nid, shape in zip(inputs, shapes)]


def _readers(graph: Graph, nid: int) -> list:
    """The nodes downstream of input `nid`, in topological order."""
    below = {nid}
    for node in graph.nodes():
        if any(i in below for i in graph.inputs(node.id)):
            below.add(node.id)
    return [n for n in graph.nodes() if n.id in below and n.id != nid]


def _input_type(graph: Graph, nid: int, input_shape: Sequence[int]) -> TensorType:
    """The TensorType of input `nid`: batch/channel axes from the first layer reading it that
    names them."""
    if not _is_shape(input_shape):
        raise ShapeError(f'input shape {input_shape!r} is not a tuple of sizes',
                         hint='pass (N, features) or (N, spatial..., channels)')
    shape = tuple(None if d is None or d < 0 else int(d) for d in input_shape)
    if len(shape) < 2:
        raise ShapeError(f'input shape {tuple(input_shape)} needs a batch axis and a channel axis',
                         hint='pass (N, features) or (N, spatial..., channels)')
    batch_axis, channel_axis, first = 0, -1, None
    for node in _readers(graph, nid):
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


def typed_graph(graph: Graph, types: Sequence[TensorType], checked: bool = True) -> Graph:
    """`graph` with its inputs of `types` and every type inferred (and the architecture
    checked, if `checked`)."""
    g = graph.copy()
    for nid, t in zip(g.input_nodes(), types, strict=True):
        g.replace(nid, ttype=t)
    g = infer_types(g, Options())
    return check(g, Options()) if checked else g


def compile(net: Net, input_shape, get=('nngp', 'ntk'), *,  # noqa: A001
            reference: bool = False, force_full: bool = False, roll_loops: bool = True,
            diagonal_spatial: bool = False, verify: bool = True,
            dtype=jnp.float32) -> KernelPlan:
    """Compile `net` into a KernelPlan for inputs of `input_shape` (batch entry ignored; a
    (nested) tuple of shapes for a net with several inputs, as NT's init_fn takes them).

    `reference=True` gives the reference plan (joint Gram matrix, FULL layouts, no folding), the
    semantic oracle every optimisation must reproduce; `force_full=True` keeps FULL spatial
    layouts everywhere; `roll_loops=False` unrolls runs of identical layers (by default they run
    as loops, see `ntc.passes.roll_loops`); `diagonal_spatial=True` returns only the spatial
    diagonal of the output kernels, (N1, N2, s1, s2, ...), as NT's `diagonal_spatial`.
    """
    names, _ = normalize_get(get)
    shapes, tree = split_shapes(input_shape)
    built = net.graph(tree)
    types = input_types(built, shapes)
    for shape, t in zip(shapes, types):
        empty = [i for i, d in enumerate(t.shape) if i != t.batch and d == 0]
        if empty:
            raise ShapeError(f'input shape {tuple(shape)} has a zero-size axis {empty[0]}: '
                             'the kernel averages over the features, of which there are none',
                             hint='give every example at least one feature')
    opts = Options(get=names, reference=reference, force_full=force_full, roll_loops=roll_loops,
                   diagonal_spatial=bool(diagonal_spatial))
    return compile_for_types(built, types, opts, verify=verify, dtype=dtype)


def compile_for_types(built: Graph, types: Sequence[TensorType], opts: Options, *,
                      verify: bool = True, dtype=jnp.float32) -> KernelPlan:
    """The KernelPlan of a net's graph `built` for inputs of `types` (see `compile`)."""
    g = built.copy()
    for nid, t in zip(g.input_nodes(), types, strict=True):
        g.replace(nid, ttype=t)
    source = typed_graph(built, types)
    if opts.diagonal_spatial:
        refuse_diagonal_spatial(source)
    graph = run_passes(g, opts, check_ir=verify)
    return KernelPlan(graph, types, opts, source, dtype_bytes=jnp.dtype(dtype).itemsize)


def refuse_diagonal_spatial(source: Graph) -> None:
    """NT's `diagonal_spatial=True` on a network whose outputs have no spatial axes: there it
    cannot ask for a layout, so it asks (as in NT) for the kernel computed from the spatial
    diagonals alone, which a layer that reads the covariance between every pair of positions
    (global pooling after a conv, AvgPool, attention) cannot give: refused, as NT does."""
    outs = [source.node(o) for o in source.outputs]
    if any(o.ttype.spatial_axes for o in outs):
        return
    need, _ = propagate_needs(source, {o.id: 'NONE' for o in outs}, {})
    for nid in source.order():
        node = source.node(nid)
        for src in source.inputs(nid):
            t = source.node(src).ttype
            if (t.spatial_axes and need.get(nid) != 'FULL'
                    and node.op.spatial_need(need.get(nid, 'NONE'), t) == 'FULL'):
                raise InputError(f'diagonal_spatial=True on a network without spatial axes at '
                                 f'its output asks for the kernel from the spatial diagonals '
                                 f'only, but {node.op.kind} reads the covariance of '
                                 f'every pair of positions', path=node.path,
                                 hint='drop diagonal_spatial=True: the kernel has no spatial '
                                      'axes to take the diagonal of')


def returned_fields(plan: KernelPlan, n1: int, n2: int, diagonal_spatial: bool = False,
                    index: int = 0) -> dict:
    """NT's `Kernel` fields of the kernels `plan` returns (its output `index`) for n1 × n2
    examples: the finite output's shapes on x1 and x2 (`shape1`, `shape2`), its batch and
    channel axes, whether it is Gaussian, and whether it holds only the spatial diagonal."""
    out = plan.source.node(plan.source.outputs[index]).ttype

    def shape(n):
        return tuple(n if i == out.batch else int(d) for i, d in enumerate(out.shape))

    # NT: a layer that removes the spatial axes (Flatten, global pooling) clears the flag
    first = plan.source.node(plan.source.input_nodes()[0]).ttype
    removed = bool(first.spatial_axes) and not out.spatial_axes
    return dict(is_gaussian=out.is_gaussian,
                diagonal_spatial=bool(diagonal_spatial) and not removed,
                shape1=shape(n1), shape2=shape(n2), batch_axis=out.batch,
                channel_axis=out.channel)


def kernel_input_type(k: Kernel) -> TensorType:
    """The input type a `Kernel` given to kernel_fn stands for (NT's kernel composition): the
    finite tensor it is the kernel of, read from its `shape1`, axes and Gaussianity."""
    if k.shape1 is None or len(k.shape1) < 2:
        raise InputError(f'the Kernel given as x1 has shape1={k.shape1}: it does not say what '
                         'tensor it is the kernel of',
                         hint='pass a Kernel that a kernel_fn returned (get=None), or set '
                              'shape1, shape2, batch_axis and channel_axis with replace()')
    b = k.batch_axis % len(k.shape1)
    return TensorType(shape=tuple(None if i == b else int(d) for i, d in enumerate(k.shape1)),
                      batch_axis=k.batch_axis, channel_axis=k.channel_axis,
                      is_gaussian=k.is_gaussian)


def check_kernel_input(k: Kernel, x2, kwargs: dict) -> None:
    """Refuse a `Kernel` input that kernel_fn cannot start from."""
    if x2 is not None:
        raise InputError('kernel_fn got a Kernel as x1 and an x2: a Kernel already holds the '
                         'kernels of x1 and x2', hint='pass the Kernel alone: '
                                                      'kernel_fn(body_kernel_fn(x1, x2))')
    if not k.diagonal_batch:
        raise InputError('kernel_fn got a Kernel with diagonal_batch=False (marginals over '
                         'every pair of examples) as x1',
                         hint='compute the Kernel with diagonal_batch=True (the default)')
    extra = sorted(name for name, value in kwargs.items() if value is not None)
    if extra:
        raise InputError(f'kernel_fn got a Kernel as x1 and extra inputs {extra}: they are '
                         'only supported with array inputs',
                         hint='compose the networks into one with stax.serial and call it on '
                              'the arrays')


def check_kernel_layout(plan: KernelPlan, k: Kernel, index: int = 0) -> None:
    """Refuse a `Kernel` given for input `index` that stores less than the plan's first layers
    read."""
    want = plan.graph.node(plan.graph.input_nodes()[index]).cov
    have = k.returned_layout
    if SPATIAL_RANK[want.spatial] > SPATIAL_RANK[have.spatial]:
        raise InputError('the Kernel given as x1 keeps only the spatial diagonal '
                         '(diagonal_spatial=True), but this network reads every pair of '
                         'positions', hint='compute the Kernel with diagonal_spatial=False')
    if want.marginal is not None and (have.marginal is None or SPATIAL_RANK[want.marginal] >
                                      SPATIAL_RANK[have.marginal]):
        raise InputError('the Kernel given as x1 lacks the marginals cov1/cov2 this network '
                         'reads', hint='pass the whole Kernel a kernel_fn returned (get=None)')


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


def finite_graph(net: Net, input_shape) -> tuple[list[TensorType], Graph, OutputTree]:
    """(input types, typed graph, output tree) of the finite network on inputs of
    `input_shape` (one shape, or a tree of them: `split_shapes`), what init_fn and apply_fn run;
    cached per input type: inputs differing only in batch size share it."""
    shapes, tree = split_shapes(input_shape)
    built, out_tree = net.graph_and_outputs(tree)
    types = input_types(built, shapes)
    cache = net._cache.setdefault('typed', {})
    key = (tree, tuple(types))
    if key not in cache:
        cache[key] = typed_graph(built, types, checked=False)
    return types, cache[key], out_tree


def output_shapes(net: Net, input_shape) -> list[tuple[int, ...]]:
    """The finite network's output shapes (one per graph output) on inputs of `input_shape`
    (NT's `Kernel.shape1`), from shape inference: an output's batch size follows from the
    first input's through each layer's `Op.batch_size` (-1 for an input of unknown size)."""
    shapes, _ = split_shapes(input_shape)
    types, g, _ = finite_graph(net, input_shape)
    sizes = {nid: -1 if s[t.batch] is None else int(s[t.batch])
             for nid, s, t in zip(g.input_nodes(), shapes, types)}
    batch = g.batch_sizes(sizes) if -1 not in sizes.values() else None
    out = []
    for nid in g.outputs:
        t = g.node(nid).ttype
        n = -1 if batch is None else batch[nid]
        out.append(tuple(n if i == t.batch else int(d) for i, d in enumerate(t.shape)))
    return out


def output_shape(net: Net, x_shape: Sequence[int]) -> tuple[int, ...]:
    """The output shape of a one-output net on inputs of `x_shape`."""
    (shape,) = output_shapes(net, x_shape)
    return shape


def _shape_tree(xs: list, tree: InputTree):
    """The tree of shapes of arrays `xs` (a tree's leaves)."""
    return rebuild(tree, [tuple(x.shape) for x in xs]) if is_container(tree) else xs[0].shape


def make_kernel_fn(net: Net):
    """NT's `kernel_fn(x1, x2=None, get=None, **kwargs)` for `net`, traceable under jax.jit.
    Besides kernels, `get` may name NT's `shape1` / `shape2`: the output shapes (tuples).

    `x1` and `x2` may be (nested) tuples or lists of arrays, for a net with several inputs
    (a `parallel` at its start); a net with several outputs returns them nested as NT does (a
    tuple or list per `parallel`, the container type of its input; a list per `FanOut`)."""
    cache = net._cache.setdefault('plans', {})

    def kernel_fn(x1, x2=None, get=None, *, diagonal_batch: bool = True,
                  diagonal_spatial: bool = False, **kwargs):
        names, form = normalize_get(get, shapes=True)
        if isinstance(x1, Kernel):
            return compose([x1], None, x2, names, form, diagonal_spatial, kwargs)
        ks, ktree = split_tree(x1, lambda v: not isinstance(v, (tuple, list)))
        if is_container(ktree) and all(isinstance(k, Kernel) for k in ks):
            return compose(ks, ktree, x2, names, form, diagonal_spatial, kwargs)
        xs1, tree = split_inputs(x1)
        xs2 = None
        if x2 is not None:
            xs2, tree2 = split_inputs(x2)
            if all(x is None for x in xs2):  # NT: [(None, None), None] is x2 = None
                xs2 = None
            elif tree2 != tree:
                raise InputError('x1 and x2 have different structures (tuples and lists of '
                                 'arrays)', hint='pass x2 nested as x1 is')
        if xs2 is not None and all(same_inputs(a, b) for a, b in zip(xs1, xs2)):
            xs2 = None  # NT's convention: kernel_fn(x, x) is kernel_fn(x, None)
        many = is_container(tree)
        name = (lambda n, i: f'{n}[{i}]') if many else (lambda n, i: n)
        xs1 = [checks.as_input(x, name('x1', i)) for i, x in enumerate(xs1)]
        xs2 = None if xs2 is None else [checks.as_input(x, name('x2', i))
                                        for i, x in enumerate(xs2)]
        _, out_tree = net.graph_and_outputs(tree)
        # NT: a layer requiring diagonal_batch=False makes the network's marginals full
        diagonal_batch = diagonal_batch and not any(
            node.op.needs_joint_batch() for node in net.graph(tree).nodes())
        axes_key = ('batch axes', tree, tuple(x.ndim for x in xs1))
        if axes_key not in cache:  # NT's batch_axis, from the first layer that names it
            g = net.graph(tree)
            cache[axes_key] = [_input_type(g, nid, x.shape).batch if x.ndim >= 2 else 0
                               for nid, x in zip(g.input_nodes(), xs1, strict=True)]
        batch_axes = cache[axes_key]
        features = []
        for i, (a, b) in enumerate(zip(xs1, xs2 or [None] * len(xs1))):
            ax = batch_axes[i]
            feat = a.shape[:ax] + a.shape[ax + 1:]
            features.append(feat)
            if b is not None and (a.ndim != b.ndim or feat != b.shape[:ax] + b.shape[ax + 1:]):
                raise InputError(f'{name("x1", i)} has shape {a.shape} and {name("x2", i)} has '
                                 f'shape {b.shape}: they must have the same feature shape (all '
                                 f'axes but the batch axis {ax})')
        kernels = tuple(n for n in names if n in KERNEL_NAMES)
        arg1 = tuple(xs1) if many else xs1[0]
        arg2 = None if xs2 is None else (tuple(xs2) if many else xs2[0])

        def plan_for(kernels):
            key = (tree, tuple(features), tuple(x.ndim for x in xs1), kernels,
                   bool(diagonal_spatial))
            if key not in cache:
                cache[key] = compile(net, _shape_tree(xs1, tree), kernels, dtype=xs1[0].dtype,
                                     diagonal_spatial=diagonal_spatial)
            return cache[key]

        def per_output(value, plan):
            return value if len(plan.graph.outputs) > 1 else [value]

        def batch_marginals():
            """NT's `diagonal_batch=False`: cov1 = K(x1, x1), cov2 = K(x2, x2) over every pair
            of examples, (N, N, ...) in the output layout (cov2 None when x2 is None), per
            output."""
            full = plan_for(('nngp',))
            cov1 = per_output(full.raw(arg1, None, **kwargs), full)
            cov2 = (per_output(full.raw(arg2, None, **kwargs), full) if arg2 is not None
                    else [None] * len(cov1))
            return [dict(cov1=a['nngp'], cov2=None if b is None else b['nngp'])
                    for a, b in zip(cov1, cov2)]

        outs = None
        if kernels:
            plan = plan_for(kernels)
            if form == 'kernel':
                ks = per_output(plan.kernel(arg1, arg2, **kwargs), plan)
                # the output's batch sizes: a layer may select or concatenate examples
                ks = [k.replace(**returned_fields(plan, *k.nngp.shape[:2], diagonal_spatial,
                                                  index=i))
                      for i, k in enumerate(ks)]
                if not diagonal_batch:
                    ks = [k.replace(diagonal_batch=False, **m)
                          for k, m in zip(ks, batch_marginals())]
                return rebuild(out_tree, ks)
            outs = [dict(o) for o in per_output(plan.raw(arg1, arg2, **kwargs), plan)]
            if not diagonal_batch and {'cov1', 'cov2'} & set(kernels):
                for o, m in zip(outs, batch_marginals()):
                    o.update(m)
        if 'shape1' in names or 'shape2' in names:
            shape1 = output_shapes(net, _shape_tree(xs1, tree))
            shape2 = shape1 if xs2 is None else output_shapes(net, _shape_tree(xs2, tree))
            outs = outs or [{} for _ in shape1]
            for o, a, b in zip(outs, shape1, shape2):
                o.update(shape1=a, shape2=b)
        if form == 'tuple':  # NT: a tuple `get` gives a namedtuple, even of one kernel
            results = [result_type(names)(*(o[n] for n in names)) for o in outs]
        else:
            results = [o[names[0]] for o in outs]
        return rebuild(out_tree, results)

    def compose(ks: list, tree, x2, names, form, diagonal_spatial, kwargs):
        """kernel_fn of Kernels instead of inputs: one `Kernel`, or NT's (nested) tuple or list
        of them, one per input (`tree`; None for one); the plan runs from them, and the
        results are nested per output as NT nests them."""
        for k in ks:
            check_kernel_input(k, x2, kwargs)
        types = tuple(kernel_input_type(k) for k in ks)
        kernels = tuple(n for n in names if n in KERNEL_NAMES) or ('nngp',)
        key = ('kernel inputs', tree, types, kernels, bool(diagonal_spatial))
        if key not in cache:
            opts = Options(get=kernels, diagonal_spatial=bool(diagonal_spatial))
            cache[key] = compile_for_types(net.graph(tree), list(types), opts,
                                           dtype=ks[0].nngp.dtype)
        plan = cache[key]
        for i, k in enumerate(ks):
            check_kernel_layout(plan, k, i)
        _, out_tree = net.graph_and_outputs(tree)
        raw = plan.fn(ks[0] if tree is None else tuple(ks), None)
        outs = raw if len(plan.graph.outputs) > 1 else [raw]
        same = ks[0].x1_is_x2
        results = []
        for i, out in enumerate(outs):
            out = dict(out)
            pair = next((out[n] for n in ('nngp', 'ntk') if out.get(n) is not None), None)
            n1, n2 = (ks[0].nngp if pair is None else pair).shape[:2]  # a layer may move examples
            fields = returned_fields(plan, n1, n2, diagonal_spatial, index=i)
            out.update(shape1=fields['shape1'], shape2=fields['shape2'])
            if form == 'kernel':
                results.append(Kernel(nngp=out['nngp'], ntk=out['ntk'], cov1=out['cov1'],
                                      cov2=None if same else out['cov2'],
                                      layout=plan.output_layouts[i], x1_is_x2=same,
                                      **fields))
            elif form == 'tuple':
                results.append(result_type(names)(*(out[n] for n in names)))
            else:
                results.append(out[names[0]])
        return rebuild(out_tree, results)

    kernel_fn.net = net
    return kernel_fn


def make_init_fn(net: Net):
    """NT's `init_fn(rng, input_shape) -> (output_shape, params)`; for a net with several
    inputs `input_shape` is a (nested) tuple or list of shapes, and a net with several outputs
    gives their shapes nested as NT does (tuples for `parallel`, lists for `FanOut`); params
    in NT's nested structure (`Net.nested_params`)."""
    def init_fn(rng, input_shape):
        _, g, out_tree = finite_graph(net, input_shape)
        return (rebuild(out_tree, output_shapes(net, input_shape), shapes=True),
                net.nested_params(finite.init_params(g, rng), input_shape))

    return init_fn


def make_apply_fn(net: Net):
    """NT's `apply_fn(params, inputs, rng=None, **kwargs)`: the finite network (`inputs` and the
    outputs nested as for `make_kernel_fn`); `params` as init_fn returns them, or the dict keyed
    by layer path the finite network reads."""
    def apply_fn(params, inputs, rng=None, **kwargs):
        xs, tree = split_inputs(inputs)
        many = is_container(tree)
        xs = [checks.as_input(x, f'inputs[{i}]' if many else 'inputs') for i, x in enumerate(xs)]
        for x in xs:
            checks.check_values(x, 'inputs', kwargs.get('mask_constant'))
        _, g, out_tree = finite_graph(net, _shape_tree(xs, tree))
        out = finite.apply(g, net.path_params(params), xs if many else xs[0], rng=rng, **kwargs)
        return rebuild(out_tree, out if len(g.outputs) > 1 else [out])

    return apply_fn
