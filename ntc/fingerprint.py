"""Fingerprints of values: what makes two kernel jobs the same job.

A tile store reuses a tile only when everything that determines its numbers matches, so a
plan's fingerprint must cover every op argument, and a user function (an `Elementwise` rule, a
Monte-Carlo or empirical kernel function) must be hashed by value: its bytecode, constants,
defaults, closure cells and the globals it reads.  What has no stable value raises
`Unfingerprintable`, and the caller must name the job instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sysconfig
import types

import jax
import numpy as np
import pydantic

from .errors import StoreError
from .ir.graph import Graph


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
    h.update(repr(graph.outputs[0] if len(graph.outputs) == 1 else graph.outputs).encode())
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
