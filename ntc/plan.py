"""`KernelPlan`: a compiled, inspectable kernel program.

`ntc.compile(net, input_shape, get)` returns one.  `plan(x1, x2)` runs it (one jitted function),
`plan.explain()` prints an EXPLAIN-style table of its nodes, and `plan.symbolic()` gives the
output kernels as sympy expressions for networks whose rules all have closed forms.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import sysconfig
import types

import jax
import numpy as np
import pydantic
import sympy

from . import checks
from .errors import InputError, StoreError
from .ir.graph import Graph
from .ir.types import TensorType
from .lower.kernel import Kernel
from .passes import Options
from .passes.cost import N1, N2, NodeCost, cost
from .passes.roll_loops import loops

_RESULT_TYPES: dict[tuple[str, ...], type] = {}


def result_type(get: tuple[str, ...]) -> type:
    """The namedtuple returned for a tuple `get` (fields in the order asked)."""
    if get not in _RESULT_TYPES:
        _RESULT_TYPES[get] = collections.namedtuple('Kernel', get)
    return _RESULT_TYPES[get]


class KernelPlan:
    """A compiled kernel program for one input feature shape and one set of requested kernels."""

    def __init__(self, graph: Graph, input_type: TensorType, opts: Options, source: Graph,
                 dtype_bytes: int = 4):
        self.graph = graph
        self.input_type = input_type
        self.opts = opts
        self.source = source  # the typed, checked graph before optimisation
        self.dtype_bytes = dtype_bytes
        self.costs: dict[int, NodeCost] = cost(graph, opts, dtype_bytes)
        self._fn = None
        self._live = None

    # -- running ------------------------------------------------------------------------------

    @property
    def fn(self):
        """The lowered, jitted function (x1, x2) -> {name: array}."""
        if self._fn is None:
            from .lower.lower import lower
            self._fn = lower(self.graph, self.opts)
        return self._fn

    def check_inputs(self, x1, x2) -> None:
        t = self.input_type
        for name, x in (('x1', x1), ('x2', x2)):
            if x is None:
                continue
            if x.ndim != t.ndim:
                raise InputError(f'{name} has rank {x.ndim} but the plan was compiled for '
                                 f'inputs of rank {t.ndim} {t.describe()}')
            feat = tuple(d for i, d in enumerate(x.shape) if i != t.batch)
            want = tuple(d for i, d in enumerate(t.shape) if i != t.batch)
            if feat != want:
                raise InputError(f'{name} has feature shape {feat} but the plan was compiled '
                                 f'for {want}', hint='compile a plan for this input shape')

    def raw(self, x1, x2=None, **kwargs) -> dict:
        """Run the plan: {name: array} for every name in `get`.  `kwargs` are NT's extra
        kernel_fn inputs, e.g. ``pattern=(pattern1, pattern2)`` for `Aggregate`.

        Integer inputs are cast to the float dtype in use.  With concrete (not traced) values,
        NaN/Inf inputs and calls that cannot fit in the device's memory are refused, and a
        non-finite result raises `NumericalError` naming the first non-finite layer
        (see `ntc.checks`)."""
        x1 = checks.as_input(x1, 'x1')
        x2 = None if x2 is None else checks.as_input(x2, 'x2')
        self.check_inputs(x1, x2)
        inputs = kernel_inputs(kwargs, x1, x2)
        mask_constant = inputs.get('mask_constant')
        checks.check_values(x1, 'x1', mask_constant)
        checks.check_values(x2, 'x2', mask_constant)
        concrete = checks.is_concrete(x1) and (x2 is None or checks.is_concrete(x2))
        if concrete:
            b = self.input_type.batch
            n1 = x1.shape[b]
            n2 = n1 if x2 is None else x2.shape[b]
            scale = x1.dtype.itemsize / self.dtype_bytes
            checks.check_memory(lambda m1, m2: scale * self.peak_bytes(m1, m2), n1, n2,
                                next(iter(x1.devices())))
        out = self.fn(x1, x2, inputs) if inputs else self.fn(x1, x2)
        if concrete:
            from .lower.lower import first_nonfinite
            checks.check_results(out, lambda: first_nonfinite(self.graph, self.opts, x1, x2,
                                                              inputs or None), x1.dtype)
        return out

    def __call__(self, x1, x2=None, **kwargs):
        """The requested kernels: an array for one name, a namedtuple for several."""
        out = self.raw(x1, x2, **kwargs)
        get = self.opts.get
        if len(get) == 1:
            return out[get[0]]
        return result_type(get)(*(out[g] for g in get))

    def kernel(self, x1, x2=None, **kwargs) -> Kernel:
        """All kernels as a `Kernel` (what `kernel_fn(x1, x2, get=None)` returns)."""
        out = self.raw(x1, x2, **kwargs)
        return Kernel(nngp=out.get('nngp'), ntk=out.get('ntk'), cov1=out.get('cov1'),
                      cov2=out.get('cov2'), layout=self.graph.node(self.graph.output).cov,
                      x1_is_x2=x2 is None)

    # -- inspecting ------------------------------------------------------------------------

    @property
    def transposes(self) -> int:
        """Number of explicit Transpose nodes left in the plan."""
        return sum(1 for n in self.graph.nodes() if n.op.kind == 'Transpose')

    def total(self, field: str, n1: int, n2: int) -> float:
        """Total FLOPs or bytes ('flops'/'bytes'), or peak live bytes ('live'), at n1 × n2."""
        vals = [getattr(c, field).subs({N1: n1, N2: n2}) for c in self.costs.values()]
        return float(max(vals) if field == 'live' else sum(vals))

    def peak_bytes(self, n1: int, n2: int) -> float:
        """Peak live bytes of the covariances for an n1 × n2 kernel (the memory model)."""
        if self._live is None:  # compiled once: the memory check runs on every call
            self._live = sympy.lambdify((N1, N2), [c.live for c in self.costs.values()])
        return float(max(self._live(n1, n2), default=0))

    def explain(self, n1: int | None = None, n2: int | None = None) -> str:
        """An EXPLAIN table: one row per node in execution order, then totals.  With n1/n2 the
        costs are evaluated; otherwise they are shown as expressions in N1 and N2."""
        rows = [('id', 'op', 'in', 'layout', 'shape', 'FLOPs', 'bytes', 'path')]
        for node in self.graph.nodes():
            c = self.costs[node.id]
            ins = ','.join(f'%{i}' for i in self.graph.inputs(node.id)) or '-'
            layout = node.cov.describe() + (' [mat]' if node.materialize else '')
            if node.loop is not None:
                layout += f' [loop{node.loop[0]}.{node.loop[1]}]'
            rows.append((f'%{node.id}', node.op.label(), ins, layout, node.ttype.describe(),
                         _fmt(c.flops, n1, n2), _fmt(c.bytes, n1, n2), node.path))
        widths = [min(max(len(r[i]) for r in rows), 44) for i in range(len(rows[0]))]
        lines = []
        for j, r in enumerate(rows):
            cells = [r[i][:widths[i]].ljust(widths[i]) for i in range(len(r))]
            lines.append('  '.join(cells).rstrip())
            if j == 0:
                lines.append('  '.join('-' * w for w in widths))
        tot_f = sum((c.flops for c in self.costs.values()), sympy.Integer(0))
        tot_b = sum((c.bytes for c in self.costs.values()), sympy.Integer(0))
        peak = self.costs[max(self.costs, key=lambda i: _at(self.costs[i].live, 1000, 1000))].live
        lines.append('')
        lines.append(f'get={",".join(self.opts.get)}  input {self.input_type.describe()}  '
                     f'nodes {len(self.graph)}  transposes {self.transposes}  '
                     f'materialised {sum(n.materialize for n in self.graph.nodes())}  '
                     f'loops {self.loops_text()}')
        lines.append(f'total FLOPs {_fmt(tot_f, n1, n2)}   bytes written {_fmt(tot_b, n1, n2)}   '
                     f'peak live {_fmt(peak, n1, n2)}')
        return '\n'.join(lines)

    def loops_text(self) -> str:
        """The rolled loops: '0', or e.g. '1 (19 × 2 nodes)'."""
        found = loops(self.graph)
        if not found:
            return '0'
        each = ', '.join(f'{lp.n} × {len(lp.body)} nodes' for lp in found)
        return f'{len(found)} ({each})'

    def __repr__(self) -> str:
        return f'KernelPlan({len(self.graph)} nodes, get={self.opts.get})'

    def fingerprint(self) -> str:
        """A stable hash of everything that determines the plan's numbers: the optimised graph
        (every op's arguments, captured values of user functions included), the options and
        the input type.  Raises `Unfingerprintable` for a function with no stable value."""
        body = graph_fingerprint(self.graph) + repr(self.opts) + self.input_type.model_dump_json()
        return hashlib.sha256(body.encode()).hexdigest()

    def symbolic(self):
        """The output NNGP and NTK as sympy expressions of k11, k12, k22 and the layers'
        σw, σb (see `ntc.lower.symbolic`)."""
        from .lower.symbolic import symbolic_kernels
        return symbolic_kernels(self.source, self.opts)


def kernel_inputs(kwargs: dict, x1, x2) -> dict:
    """Normalise kernel_fn's extra keyword inputs (NT passes them to every layer's kernel_fn)
    through the `KERNEL_INPUTS` table; None values count as absent, unknown names are an error
    (NT would silently ignore a misspelt one)."""
    from .lower import lower as _  # noqa: F401  (fills the rule tables)
    from .lower.registry import KERNEL_INPUTS
    out = {}
    for name, value in kwargs.items():
        if value is None:
            continue
        if name not in KERNEL_INPUTS:
            raise InputError(f'kernel_fn got an unknown keyword argument {name!r}',
                             hint=f'known inputs: {", ".join(sorted(KERNEL_INPUTS))}')
        out[name] = KERNEL_INPUTS[name](value, x1, x2)
        if name != 'mask_constant':  # NaN is a legitimate mask constant
            for leaf in jax.tree_util.tree_leaves(out[name]):
                checks.check_values(leaf, name)
    return out


class Unfingerprintable(StoreError):
    """A value (usually one a user function captures) has no stable fingerprint."""


MAX_DEPTH = 12  # nesting levels followed inside captured values before giving up
_SCALARS = (type(None), bool, int, float, complex, str, bytes, range, slice, type(Ellipsis))


def graph_fingerprint(graph: Graph) -> str:
    """sha256 of a graph: every node's op (all arguments, user functions by value), path,
    types and layout, and the edges."""
    h = hashlib.sha256()
    for n in graph.nodes():
        h.update(repr((n.id, n.op.kind, n.path, n.ttype, n.cov, n.materialize, n.loop,
                       graph.inputs(n.id))).encode())
        h.update(_fn_id(n.op).encode())
    h.update(repr(graph.output).encode())
    return h.hexdigest()


def _fn_id(op) -> str:
    """Fingerprint of an op's arguments; functions are hashed by value (bytecode, constants,
    defaults, closure cells and the globals they read)."""
    return value_fingerprint(op.args(), f'{op.kind}')


def value_fingerprint(value, where: str = 'value') -> str:
    """sha256 of a Python value, followed recursively (at most `MAX_DEPTH` levels): scalars and
    strings by repr, arrays by dtype, shape and content, containers and dataclass / pydantic /
    plain objects by their items, functions by bytecode, constants, defaults, closure cells and
    referenced globals, modules and classes by name.  Raises `Unfingerprintable` naming the
    value it cannot hash (a tracer, an object without a stable state, nesting too deep)."""
    h = hashlib.sha256()
    _feed(h, value, where, 0, set())
    return h.hexdigest()


def _feed(h, v, where: str, depth: int, active: set) -> None:
    """Add `v` to the hash `h`; `active` holds the ids of the objects being followed (cycles)."""
    if depth > MAX_DEPTH:
        raise Unfingerprintable(f'{where} nests deeper than {MAX_DEPTH} levels')
    put = h.update
    if isinstance(v, _SCALARS):
        put(f'{type(v).__name__}:{v!r};'.encode())
        return
    if isinstance(v, (np.generic, np.dtype)):
        put(f'{type(v).__name__}:{v!r};'.encode())
        return
    if isinstance(v, jax.core.Tracer):
        raise Unfingerprintable(f'{where} is a traced value (captured inside jax.jit)')
    if isinstance(v, (np.ndarray, jax.Array)):
        if isinstance(v, jax.Array) and jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        a = np.ascontiguousarray(np.asarray(v))
        put(f'array:{a.dtype}{a.shape};'.encode())
        put(hashlib.sha256(a.tobytes()).digest())
        return
    if isinstance(v, types.ModuleType):
        put(f'module:{v.__name__};'.encode())
        return
    if isinstance(v, type):
        put(f'class:{v.__module__}.{v.__qualname__};'.encode())
        return
    if type(v) is object:  # a library's sentinel (e.g. "no argument given")
        put(b'sentinel;')
        return
    if isinstance(v, jax.Device):
        put(f'device:{v.platform}{v.id};'.encode())
        return
    key = id(v)
    if key in active:  # a recursive function or a self-referencing container
        put(b'cycle;')
        return
    active.add(key)
    try:
        _feed_object(h, v, where, depth, active)
    finally:
        active.discard(key)


def _feed_object(h, v, where: str, depth: int, active: set) -> None:
    d = depth + 1
    put = h.update
    if isinstance(v, (list, tuple)):
        put(f'{type(v).__name__}[{len(v)}];'.encode())
        for i, x in enumerate(v):
            _feed(h, x, f'{where}[{i}]', d, active)
    elif isinstance(v, dict):
        put(f'dict[{len(v)}];'.encode())
        items = sorted(v.items(), key=lambda kv: value_fingerprint(kv[0], where))
        for k, x in items:
            _feed(h, k, where, d, active)
            _feed(h, x, f'{where}[{k!r}]', d, active)
    elif isinstance(v, (set, frozenset)):
        put(f'set[{len(v)}];'.encode())
        for x in sorted(value_fingerprint(x, where) for x in v):
            put(x.encode())
    elif isinstance(v, functools.partial):
        put(b'partial;')
        _feed(h, (v.func, v.args, v.keywords), where, d, active)
    elif isinstance(v, types.MethodType):
        put(b'method;')
        _feed(h, (v.__func__, v.__self__), where, d, active)
    elif isinstance(v, types.FunctionType):
        _feed_function(h, v, where, d, active)
    elif isinstance(v, types.CodeType):
        _feed_code(h, v, where, d, active)
    elif isinstance(v, (types.BuiltinFunctionType, np.ufunc)):
        put(f'builtin:{getattr(v, "__module__", "")}.{v.__name__};'.encode())
    elif hasattr(v, '__wrapped__'):  # jax.jit, functools.wraps and other wrappers
        put(f'wrapped:{type(v).__qualname__};'.encode())
        _feed(h, v.__wrapped__, where, d, active)
    elif isinstance(v, Graph):
        put(f'graph:{graph_fingerprint(v)};'.encode())
    elif hasattr(v, 'graph') and type(v).__module__.startswith('ntc.'):  # a Net
        put(f'net:{graph_fingerprint(v.graph())};'.encode())
    elif dataclasses.is_dataclass(v) or isinstance(v, pydantic.BaseModel):
        put(f'obj:{type(v).__module__}.{type(v).__qualname__};'.encode())
        fields = ({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
                  if dataclasses.is_dataclass(v) else dict(v))
        _feed(h, fields, f'{where}.{type(v).__name__}', d, active)
    elif hasattr(v, '__dict__') and not hasattr(v, '__slots__'):
        put(f'obj:{type(v).__module__}.{type(v).__qualname__};'.encode())
        _feed(h, vars(v), f'{where}.{type(v).__name__}', d, active)
    else:
        raise Unfingerprintable(f'{where} holds a {type(v).__module__}.{type(v).__qualname__} '
                                'object, which has no stable value to fingerprint')


def _feed_code(h, code, where: str, depth: int, active: set) -> None:
    h.update(f'code:{code.co_name};'.encode())
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        _feed(h, c, where, depth, active)


def _global_names(code) -> set[str]:
    """Names a code object (and the code it nests) may read from its globals."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def _is_library(filename: str) -> bool:
    """Whether code comes from an installed package or the standard library (not user code)."""
    if not _LIBRARY_DIRS:
        paths = sysconfig.get_paths()
        _LIBRARY_DIRS.extend({os.path.realpath(paths[k]) + os.sep
                              for k in ('stdlib', 'platstdlib', 'purelib', 'platlib')})
    return os.path.realpath(filename).startswith(tuple(_LIBRARY_DIRS))


_LIBRARY_DIRS: list[str] = []


def _feed_function(h, fn, where: str, depth: int, active: set) -> None:
    """A function by value: code, defaults, closure cells and the globals it reads.  The
    globals of library code (ntc, installed packages, the standard library: versioned code)
    are not followed, and ntc's `cache` cells (which fill up as it runs) are skipped."""
    own = (fn.__module__ or '').startswith('ntc.')
    where = f'{where} ({fn.__module__}.{fn.__qualname__})'
    h.update(f'function:{fn.__module__}.{fn.__qualname__};'.encode())
    _feed_code(h, fn.__code__, where, depth, active)
    _feed(h, (fn.__defaults__, fn.__kwdefaults__), where, depth, active)
    cells = zip(fn.__code__.co_freevars, fn.__closure__ or ())
    for name, cell in cells:
        if own and name in _CACHE_CELLS:
            continue
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        _feed(h, value, f'{where}: captured {name}', depth, active)
    if own or _is_library(fn.__code__.co_filename):
        return
    g = fn.__globals__
    for name in sorted(_global_names(fn.__code__)):
        if name in g:
            _feed(h, g[name], f'{where}: global {name}', depth, active)


_CACHE_CELLS = {'cache', '_cache'}


def _at(expr, n1, n2) -> float:
    return float(sympy.sympify(expr).subs({N1: n1, N2: n2}))


def _units(v: float) -> str:
    for unit, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if abs(v) >= scale:
            return f'{v / scale:.3g}{unit}'
    return f'{v:.3g}'


def _fmt(expr, n1, n2) -> str:
    expr = sympy.sympify(expr)
    if n1 is not None:
        return _units(_at(expr, n1, n2 if n2 is not None else n1))
    if expr == 0:
        return '0'
    poly = sympy.Poly(sympy.expand(expr), N1, N2)
    terms = []
    for (p1, p2), coef in poly.terms():
        mono = '·'.join([f'N1^{p1}' if p1 > 1 else 'N1'] * (p1 > 0)
                        + [f'N2^{p2}' if p2 > 1 else 'N2'] * (p2 > 0))
        c = _units(float(coef))
        terms.append(f'{c}·{mono}' if mono else c)
    return ' + '.join(terms)
