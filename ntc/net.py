"""`Net`: the builder tree that `ntc.stax` returns, and its translation to a `Graph`.

A `Net` is a layer (one op), a `serial`/`parallel` combination of nets, or a `repeat` of one net
`n` times, exactly as the user wrote it; it is what specs dump and load.  `build_graph` flattens
it into the DAG IR, naming each node by its path in the tree, e.g. ``serial[3].Relu``; a repeat
is expanded into its `n` copies, ``serial[1].repeat[2].serial[0].Dense`` being iteration 2 (the
`roll_loops` pass rolls the copies back into one loop).  A `Net` also unpacks as
``init_fn, apply_fn, kernel_fn`` like a neural_tangents layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp

from .api import (
    LEAF,
    InputTree,
    OutputTree,
    make_apply_fn,
    make_init_fn,
    make_kernel_fn,
    map_tree,
    rebuild,
    tree_leaves,
)
from .errors import ArchitectureError, ValidationError
from .ir.graph import Graph, RepeatRecord
from .ir.op import Op
from .layers.custom import NTLayer
from .layers.structure import FanOut, Input

Kind = Literal['layer', 'serial', 'parallel', 'repeat']


@dataclass(frozen=True, eq=True)
class Net:
    """A network declaration: one op (`kind='layer'`), a combination of child nets, or
    (`kind='repeat'`) its one child applied `n` times."""

    kind: Kind
    op: Op | None = None
    children: tuple[Net, ...] = ()
    n: int = 0
    # derived values (graph, plans); not an init field, so `dataclasses.replace` starts afresh
    _cache: dict = field(default_factory=dict, init=False, compare=False, repr=False, hash=False)

    # -- the neural_tangents triple ---------------------------------------------------------

    def __iter__(self):
        fns = (make_init_fn(self), make_apply_fn(self), make_kernel_fn(self))
        for fn in fns:  # named after the layer, as NT names its triples ('Erf', 'serial', ...)
            fn.__name__ = self._name()
        return iter(fns)

    def _name(self) -> str:
        """NT's name for the triple: the layer's kind (a custom layer's function name), or
        'serial' / 'parallel' / 'repeat'."""
        if self.kind != 'layer':
            return self.kind
        return self.op.name if isinstance(self.op, NTLayer) else self.op.kind

    def __getitem__(self, i: int):
        return tuple(self)[i]

    def __len__(self) -> int:
        return 3

    @property
    def init_fn(self):
        return self[0]

    @property
    def apply_fn(self):
        return self[1]

    @property
    def kernel_fn(self):
        return self[2]

    # -- the IR ----------------------------------------------------------------------------

    def graph(self, tree: InputTree | None = None) -> Graph:
        """The DAG of this net for inputs of structure `tree` (`ntc.api.split_inputs`; by
        default the structure the net itself asks for, e.g. a pair for a top-level
        `parallel` of two branches), cached: graphs are never mutated in place."""
        return self.graph_and_outputs(tree)[0]

    def graph_and_outputs(self, tree: InputTree | None = None) -> tuple[Graph, OutputTree]:
        """(graph, output tree): the graph for inputs of structure `tree`, and how its
        outputs (`Graph.outputs`, by index) nest in NT's containers (`ntc.api.rebuild`)."""
        tree = natural_tree(self) if tree is None else tree
        graphs = self._cache.setdefault('graphs', {})
        if tree not in graphs:
            graphs[tree] = build_graph(self, tree)
        return graphs[tree]

    def code(self, module: str = 'stax') -> str:
        """Python source that rebuilds this net with `ntc.stax`."""
        pre = f'{module}.' if module else ''
        if self.kind == 'repeat':
            return f'{pre}repeat({self.children[0].code(module)}, {self.n})'
        if self.kind != 'layer':
            return f'{pre}{self.kind}(' + ', '.join(c.code(module) for c in self.children) + ')'
        defaults = {k: f.default for k, f in type(self.op).model_fields.items()}
        args = []
        for k, v in self.op.args().items():
            if k in defaults and v == defaults[k]:
                continue
            args.append(f'{k}={getattr(v, "__name__", None) or repr(v)}')
        return f'{pre}{self.op.kind}({", ".join(args)})'

    def __repr__(self) -> str:
        return self.code('')

    # -- parameters ------------------------------------------------------------------------

    def nested_params(self, flat: dict, input_shape=None):
        """neural_tangents' parameter structure from the path dict the finite network reads:
        a layer's own parameters (`()` when it has none), a list per `serial`, a tuple per
        `parallel`, and for `repeat` the child's structure with every array stacked along a new
        leading axis, one entry per iteration; for `repeat(child, 0)` (with the net's
        `input_shape`) arrays of the child's parameter shapes with a leading axis of size 0,
        as NT gives them."""
        template = None
        if input_shape is not None and _has_empty_repeat(self):
            one = _one_step(self)
            template = jax.eval_shape(lambda k: make_init_fn(one)(k, input_shape)[1],
                                      jax.random.PRNGKey(0))
        return _nest(self, flat, '', template)

    def path_params(self, params) -> dict:
        """The path dict from NT's nested structure (`nested_params`); a path dict (keys that
        are layer paths of this net) is returned as it is."""
        if isinstance(params, dict) and set(params) <= {n.path for n in self.graph().nodes()}:
            return params
        out: dict = {}
        _flatten(self, params, '', out)
        return out


def layer(op: Op) -> Net:
    return Net('layer', op)


def repeated(child: Net, n: Any, path: str = 'repeat') -> Net:
    """The net applying `child` `n` times (n a non-negative integer; `path` names it in errors)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValidationError(f'{path}.n: must be a non-negative integer, got {n!r}')
    return Net('repeat', children=(child,), n=n)


def natural_tree(net: Net) -> InputTree:
    """The input structure `net` asks for: a `parallel` at its start takes a tuple with one
    entry per branch (each branch's own structure); anything else takes one array."""
    while net.kind in ('serial', 'repeat') and net.children:
        net = net.children[0]
    if net.kind == 'parallel':
        return ('tuple', tuple(natural_tree(c) for c in net.children))
    return LEAF


def build_graph(net: Net, tree: InputTree = LEAF) -> tuple[Graph, OutputTree]:
    """Translate a builder tree into the DAG IR for inputs of structure `tree` (NT's semantics
    of values: a FanOut makes a list, a parallel maps its branches over the entries of the
    container it receives and returns a container of the same type), and the output tree
    (`Graph.outputs` by index, nested as NT returns them)."""
    g = Graph()
    n_inputs = len(tree_leaves(tree))
    value = rebuild(tree, [g.add(Input(), [], 'input' if n_inputs == 1 else f'input[{i}]')
                           for i in range(n_inputs)])
    try:
        out = _emit(net, g, value, '')
    except RecursionError:
        raise ArchitectureError('the network is nested too deeply (serial/parallel inside '
                                'each other thousands of levels deep)', path=_label(net, ''),
                                hint='flatten it: serial(*layers) takes any number of layers, '
                                'and stax.repeat(layer, n) stacks n copies') from None
    g.outputs = tree_leaves(value_tree(out))
    positions = iter(range(len(g.outputs)))
    return g, map_tree(value_tree(out), lambda _: next(positions))


class ParallelList(list):
    """The values a `parallel` computes from a list of values."""


class ParallelTuple(tuple):
    """The values a `parallel` computes from a tuple of values."""


def value_tree(value) -> InputTree:
    """A value of `_emit` (a node id, or a list/tuple of values) as a tree whose leaves are the
    node ids."""
    if isinstance(value, int):
        return value
    name = 'list' if isinstance(value, list) else 'tuple'
    if isinstance(value, (ParallelList, ParallelTuple)):
        name = f'parallel-{name}'
    return (name, tuple(value_tree(v) for v in value))


def _label(net: Net, prefix: str) -> str:
    own = net.op.kind if net.kind == 'layer' else net.kind
    return f'{prefix}.{own}' if prefix else own


def _count(value) -> int:
    return 1 if isinstance(value, int) else len(value)


def _empty(params) -> bool:
    return params is None or (isinstance(params, (tuple, list)) and len(params) == 0)


def _has_empty_repeat(net: Net) -> bool:
    return (net.kind == 'repeat' and net.n == 0) or any(map(_has_empty_repeat, net.children))


def _one_step(net: Net) -> Net:
    """`net` with every `repeat(child, 0)` made `repeat(child, 1)`: the same parameter
    structure, with one step's parameters where `repeat(child, 0)` keeps none."""
    if net.kind == 'layer':
        return net
    n = 1 if net.kind == 'repeat' and net.n == 0 else net.n
    return Net(net.kind, net.op, tuple(_one_step(c) for c in net.children), n)


def _nest(net: Net, flat: dict, prefix: str, template=None):
    """NT's nested parameters of `net` from the path dict `flat`; `template`: the parameter
    shapes of `_one_step(net)` (only where `net` holds a `repeat(child, 0)`)."""
    path = _label(net, prefix)
    if net.kind == 'layer':
        return flat.get(path, ())
    if net.kind == 'repeat':
        step = None if template is None else _unstack(template)
        if net.n == 0:
            return () if step is None else _empty_stack(net.children[0], step, (0,))
        steps = [_nest(net.children[0], flat, f'{path}[{i}]', step) for i in range(net.n)]
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *steps)
    parts = [_nest(child, flat, f'{path}[{i}]', None if template is None else template[i])
             for i, child in enumerate(net.children)]
    return parts if net.kind == 'serial' else tuple(parts)


def _unstack(template):
    """The parameter shapes of one step of a repeat's stacked `template`."""
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), template)


def _empty_stack(net: Net, template, lead: tuple[int, ...]):
    """Parameters of `net` stacked along leading axes `lead` of which one is 0 (so they hold no
    numbers), nested as NT nests them; `template`: the parameter shapes of `_one_step(net)`."""
    if net.kind == 'layer':
        return jax.tree_util.tree_map(lambda s: jnp.zeros(lead + s.shape, s.dtype), template)
    if net.kind == 'repeat':
        return _empty_stack(net.children[0], _unstack(template), lead + (net.n,))
    parts = [_empty_stack(c, t, lead) for c, t in zip(net.children, template)]
    return parts if net.kind == 'serial' else tuple(parts)


def _flatten(net: Net, params, prefix: str, out: dict) -> None:
    path = _label(net, prefix)
    if net.kind == 'layer':
        if not _empty(params):
            out[path] = params
        return
    if _empty(params):  # a subtree without parameters may be given as ()
        return
    if net.kind == 'repeat':
        for i in range(net.n):
            step = jax.tree_util.tree_map(lambda a, i=i: a[i], params)
            _flatten(net.children[0], step, f'{path}[{i}]', out)
        return
    if not isinstance(params, (tuple, list)) or len(params) != len(net.children):
        got = f'{len(params)} entries' if isinstance(params, (tuple, list)) else \
            type(params).__name__
        raise ArchitectureError(f'params for {net.kind} of {len(net.children)} layers has {got}',
                                path=path, hint='pass the params init_fn returned (one entry '
                                                'per layer, () for a layer without parameters)')
    for i, (child, p) in enumerate(zip(net.children, params)):
        _flatten(child, p, f'{path}[{i}]', out)


def _emit(net: Net, g: Graph, value, prefix: str):
    """The value `net` computes from `value`: a node id, or a list/tuple of values."""
    if net.kind == 'repeat':
        return _emit_repeat(net, g, value, prefix)
    if net.kind == 'serial':
        base = f'{prefix}.serial' if prefix else 'serial'
        for i, child in enumerate(net.children):
            value = _emit(child, g, value, f'{base}[{i}]')
        return value
    if net.kind == 'parallel':
        base = f'{prefix}.parallel' if prefix else 'parallel'
        if isinstance(value, int) or len(value) != len(net.children):
            raise ArchitectureError(
                f'parallel has {len(net.children)} branches but receives {_count(value)} '
                'value(s)', path=base, hint=f'put FanOut({len(net.children)}) before it, or '
                f'give it {_count(value)} branches')
        outs = [_emit(child, g, x, f'{base}[{i}]')
                for i, (child, x) in enumerate(zip(net.children, value))]
        return ParallelList(outs) if isinstance(value, list) else ParallelTuple(outs)
    op, path = net.op, _label(net, prefix)
    if isinstance(op, FanOut):
        if not isinstance(value, int):
            raise ArchitectureError(f'FanOut receives {len(value)} values', path=path,
                                    hint='merge them with a fan-in first')
        return [value] * op.num
    if op.arity is None:
        if isinstance(value, int) or len(value) < 2:
            raise ArchitectureError(f'{op.kind} needs two or more branches, got '
                                    f'{_count(value)}', path=path,
                                    hint='put FanOut(n) and parallel(...) before it')
        if not all(isinstance(v, int) for v in value):
            raise ArchitectureError(f'{op.kind} receives nested values', path=path,
                                    hint='merge each branch with a fan-in first')
        return g.add(op, list(value), path)
    if not isinstance(value, int):
        raise ArchitectureError(f'{op.kind} takes one value but receives {len(value)} parallel '
                                'values', path=path, hint='put it inside parallel(...) or merge '
                                'the branches with FanInSum()/FanInConcat() first')
    return g.add(op, [value], path)


def _emit_repeat(net: Net, g: Graph, value, prefix: str):
    """The `n` copies of the child in sequence, iteration i under ``<prefix>.repeat[i]`` (n = 0:
    the identity, as in neural_tangents).  The graph records the entry and each iteration's exit
    so that `infer_types` can refuse a child that changes the shape."""
    base = _label(net, prefix)
    entry, exits = value, []
    for i in range(net.n):
        value = _emit(net.children[0], g, value, f'{base}[{i}]')
        if _nesting(value) != _nesting(entry):
            raise ArchitectureError(f'repeat needs a layer that keeps the number of values, but '
                                    f'it maps {_count(entry)} to {_count(value)}', path=base,
                                    hint=f'use serial(*[layer] * {net.n}) for such a layer')
        exits.append(tuple(tree_leaves(value_tree(value))))
    if exits:
        g.repeats.append(RepeatRecord(path=base, n=net.n,
                                      entry=tuple(tree_leaves(value_tree(entry))),
                                      exits=tuple(exits)))
    return value


def _nesting(value):
    """How a value nests (None for one node id, a tuple per container), whatever the ids and
    container types."""
    return None if isinstance(value, int) else tuple(_nesting(v) for v in value)


def as_net(obj: Any, where: str) -> Net:
    """Accept a Net; reject anything else (e.g. a raw neural_tangents triple) clearly."""
    if isinstance(obj, Net):
        return obj
    raise ArchitectureError(f'{where} expects ntc.stax layers, got {type(obj).__name__}',
                            hint='build every layer with ntc.stax (from ntc import stax)')
