"""Θ(x1, x2)·v for large N: `empirical_ntk_vp_fn`'s NTK-vector product computed over tiles of
examples, sharded across devices, with memory bounded by one tile per device.

With J_i the Jacobian of ``f(params, x_i)`` with respect to the parameters,
``Θ v = J1 (J2ᵀ v) = J1 t`` where ``t = Σ_j J2[j]ᵀ v[j]`` sums over tiles j of x2 (Novak et al.
2022, "Fast finite width neural tangent kernel", sec. L, for the product; the sum over tiles is
the chain rule applied to examples that do not interact).  Two passes:

1. **VJP over x2.** Every device scans its share of x2 tile by tile and adds each tile's
   ``J2[j]ᵀ v[j]`` (one parameter-shaped array per leaf) to a running sum; the devices' sums
   are then added (``psum``), so every device holds ``t``.
2. **JVP over x1.** Every device scans its share of x1 tile by tile: ``(Θ v)[i] = J1[i] t``.

Each product costs one VJP over x2 and one JVP over x1 whatever the tile size, the same work as
the un-tiled product; Θ (``N1·O × N2·O``) is never formed, not even in blocks.  Peak memory per
device is a few parameter-sized arrays (params, ``t``, one tile's gradient) plus the residuals
of one tile's forward pass.  The product is one jitted JAX function of ``v``, so it can be used
inside ``jax.jit``, ``jax.scipy.sparse.linalg.cg`` and other iterative solvers; it is a pytree
of its inputs and parameters, to be passed to jitted code as an argument (`TiledNtkVp.solve`
does so).

Examples must not interact in ``f``: every leaf of x1 and x2, and of ``f``'s outputs, has the
examples on axis 0 (what ``ntc.batch`` also assumes).  Ragged tiles are padded by repeating the
last example; the padded rows of ``v`` are zeros, so they add nothing to ``t``, and the padded
rows of the result are cut off.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from .. import checks
from ..errors import InputError, NumericalError
from .empirical import per_example_pairs

__all__ = ['TiledNtkVp', 'tiled_ntk_vp_fn', 'batch_ntk_vp']

AXIS = 'tiles'
MEMORY_SAFETY = 3.0  # headroom: other arrays share the device, the allocator fragments
_tree = jax.tree_util


def _examples(x, what: str) -> int:
    """The number of examples (axis 0, shared by every leaf) of an input pytree."""
    sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in _tree.tree_leaves(x)}
    if len(sizes) != 1 or None in sizes:
        raise InputError(f'every leaf of {what} must have the examples on axis 0, got shapes '
                         f'{[jnp.shape(a) for a in _tree.tree_leaves(x)]}', path=what,
                         hint='the tiled NTK-vector product cuts inputs along axis 0')
    return sizes.pop()


def _pad(x, n: int):
    """`x` (a pytree, examples on axis 0) padded to `n` examples by repeating the last one."""
    def one(a):
        a = jnp.asarray(a)
        if a.shape[0] == n:
            return a
        return jnp.concatenate([a, jnp.repeat(a[-1:], n - a.shape[0], axis=0)])
    return _tree.tree_map(one, x)


def _split(kwargs: dict, n1: int, n2: int):
    """(shared keyword arguments of the x1 side, of the x2 side, per-example ones of x1, of x2),
    as `empirical_ntk_vp_fn` reads them: a pair ``(v1, v2)`` goes to the two sides, and is cut
    into tiles when it holds one row per example (NT's ``pattern=(p1, p2)``)."""
    if kwargs.get('rng') is not None:
        raise InputError('rng= is not supported by the tiled NTK-vector product: each tile '
                         'would draw its own random numbers', path='rng',
                         hint='use the un-tiled empirical_ntk_vp_fn, or pass a deterministic f')
    pairs = per_example_pairs(kwargs, n1, n2)
    shared1, shared2 = {}, {}
    for k, v in kwargs.items():
        if k in pairs:
            continue
        paired = isinstance(v, tuple) and len(v) == 2
        shared1[k], shared2[k] = v if paired else (v, v)
    rows1 = {k: v1 for k, (v1, _) in pairs.items()}
    rows2 = {k: v1 if v2 is None else v2 for k, (v1, v2) in pairs.items()}
    return shared1, shared2, rows1, rows2


def _sharded(f, shared1, shared2, devices, tile, steps):
    """The product ``(x1 tiles, x2 tiles, params, v) -> Θ v`` as one `shard_map` over
    `devices`: each device scans its `steps` tiles of `tile` examples on each side."""
    t1, t2, s1, s2 = tile[1], tile[2], steps[1], steps[2]

    def stack(x, steps, tile):      # a device's rows as (steps, tile, ...)
        return _tree.tree_map(lambda a: a.reshape((steps, tile) + a.shape[1:]), x)

    def local(xs1, xs2, params, v):
        (x1, k1), (x2, k2) = stack(xs1, s1, t1), stack(xs2, s2, t2)

        def pull(t, tile):          # t += J2[j]^T v[j]
            x, k, vj = tile
            _, vjp = jax.vjp(lambda p: f(p, x, **shared2, **k), params)
            return _tree.tree_map(jnp.add, t, vjp(vj)[0]), None

        zero = _tree.tree_map(jnp.zeros_like, params)
        t, _ = jax.lax.scan(pull, zero, (x2, k2, stack(v, s2, t2)))
        t = jax.lax.psum(t, AXIS)

        def push(_, tile):          # (Θ v)[i] = J1[i] t
            x, k = tile
            return None, jax.jvp(lambda p: f(p, x, **shared1, **k), (params,), (t,))[1]

        _, out = jax.lax.scan(push, None, (x1, k1))
        return _tree.tree_map(lambda a: a.reshape((s1 * t1,) + a.shape[2:]), out)

    rows = PartitionSpec(AXIS)
    return jax.shard_map(local, mesh=Mesh(np.array(devices), (AXIS,)),
                         in_specs=(rows, rows, PartitionSpec(), rows), out_specs=rows,
                         check_vma=False)


def _memory(program, args):
    """XLA's memory analysis of `program`'s product on `args`, compiled and not run."""
    spec = _tree.tree_map(lambda o: jax.ShapeDtypeStruct((program.pad2,) + o.shape[1:], o.dtype),
                          program.in_shape)
    return program.fn.lower(*args, spec).compile().memory_analysis()


def _fitting_tile(build, most: int, device) -> int:
    """The largest tile (≤ `most`) whose temporaries fit in a third of `device`'s free memory
    (shared among the host's CPU devices, whose tiles run at the same time).  The temporaries
    are linear in the tile (one tile's residuals plus parameter-sized sums): XLA's memory
    analysis at two small tiles gives the line."""
    budget = checks.free_device_bytes(device) / MEMORY_SAFETY
    a = min(8, most)
    b = min(2 * a, most)
    temp_a = _memory(*build(a)).temp_size_in_bytes
    if b == a:
        return a
    per_example = max((_memory(*build(b)).temp_size_in_bytes - temp_a) / (b - a), 1.0)
    return max(1, min(most, a + int((budget - temp_a) // per_example)))


class _Program:
    """The static part of a `TiledNtkVp` (the jitted product, sizes, shapes, devices): the
    auxiliary data of its pytree, compared by identity so that jit's cache keeps one entry."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


@jax.tree_util.register_pytree_node_class
class TiledNtkVp:
    """``v -> Θ(x1, x2)·v`` for ``v`` shaped like ``f(params, x2)``, computed in tiles of
    `batch_size` examples per device over `devices` (see the module's docstring).  Call it
    like the function `empirical_ntk_vp_fn` returns; the result is shaped like
    ``f(params, x1)``.  It is a pytree whose leaves are the inputs and parameters: pass it to
    a jitted function as an argument (``jax.jit(lambda vp, y: ...)(vp, y)``) so that the
    program reads them as arguments instead of embedding them as constants."""

    def __init__(self, f, x1, x2, params, batch_size: int | None = None, devices=None,
                 **apply_fn_kwargs):
        devices = list(jax.local_devices() if devices is None else devices)
        symmetric = x2 is None or x2 is x1
        x2 = x1 if x2 is None else x2
        n1, n2 = _examples(x1, 'x1'), _examples(x2, 'x2')
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                       or isinstance(batch_size, bool) or batch_size < 1):
            raise InputError(f'batch_size must be a positive integer, got {batch_size!r}',
                             path='batch_size',
                             hint='examples per tile and device; None: the largest that fits')
        d = len(devices)
        shared1, shared2, rows1, rows2 = _split(apply_fn_kwargs, n1, n2)
        out_shape = jax.eval_shape(lambda p: f(p, x1, **shared1, **rows1), params)
        in_shape = jax.eval_shape(lambda p: f(p, x2, **shared2, **rows2), params)
        for what, shape, n in (('f(params, x1)', out_shape, n1), ('f(params, x2)', in_shape, n2)):
            if any(not o.shape or o.shape[0] != n for o in _tree.tree_leaves(shape)):
                raise InputError(f'every output of {what} must have the {n} examples on axis '
                                 f'0, got shapes '
                                 f'{[o.shape for o in _tree.tree_leaves(shape)]}',
                                 path=what, hint='f must map each example to its own output')
        most = {1: math.ceil(n1 / d), 2: math.ceil(n2 / d)}   # one tile per device

        def build(batch: int):
            tile = {s: min(batch, most[s]) for s in (1, 2)}
            steps = {1: math.ceil(n1 / (d * tile[1])), 2: math.ceil(n2 / (d * tile[2]))}
            pad1, pad2 = d * steps[1] * tile[1], d * steps[2] * tile[2]
            fn = jax.jit(_sharded(f, shared1, shared2, devices, tile, steps))
            program = _Program(fn=fn, devices=devices, n1=n1, n2=n2, pad2=pad2, tile=tile,
                               steps=steps, in_shape=in_shape, out_shape=out_shape,
                               symmetric=symmetric)
            xs1 = _pad((x1, rows1), pad1)
            same = symmetric and pad2 == pad1 and all(rows2[k] is rows1[k] for k in rows1)
            return program, (xs1, xs1 if same else _pad((x2, rows2), pad2), params)

        if batch_size is None:
            batch_size = _fitting_tile(build, max(most.values()), devices[0])
        self._program, self._args = build(batch_size)

    def tree_flatten(self):
        return self._args, self._program

    @classmethod
    def tree_unflatten(cls, program, args):
        vp = object.__new__(cls)
        vp._program, vp._args = program, tuple(args)
        return vp

    @property
    def devices(self) -> list:
        """The devices the tiles are spread over."""
        return self._program.devices

    @property
    def in_shape(self):
        """Shapes and dtypes of ``f(params, x2)``, which ``v`` must have."""
        return self._program.in_shape

    @property
    def out_shape(self):
        """Shapes and dtypes of ``f(params, x1)``, which the product has."""
        return self._program.out_shape

    def _cotangents(self, v):
        """`v` checked against f(params, x2), cast to its dtypes and padded with zero rows."""
        leaves, tdef = _tree.tree_flatten(v)
        want, want_def = _tree.tree_flatten(self.in_shape)
        shapes = [jnp.shape(a) for a in leaves]
        if tdef != want_def or shapes != [o.shape for o in want]:
            raise InputError(f'v must be shaped like f(params, x2), {[o.shape for o in want]}, '
                             f'got {shapes}', path='v',
                             hint='v has one entry per output of f on x2; the product is '
                                  'shaped like f(params, x1)')
        pad = self._program.pad2 - self._program.n2
        return tdef.unflatten([jnp.pad(jnp.asarray(a, o.dtype),
                                       [(0, pad)] + [(0, 0)] * (jnp.ndim(a) - 1))
                               for a, o in zip(leaves, want)])

    @property
    def tile(self) -> dict:
        """Examples per tile on the x1 side (key 1) and the x2 side (key 2)."""
        return self._program.tile

    def memory_analysis(self):
        """XLA's memory analysis of the compiled product (per device: arguments, outputs and
        temporaries in bytes), without running it."""
        return _memory(self._program, self._args)

    def solve(self, y, diag_reg: float, tol: float = 1e-6, maxiter: int | None = None):
        """Kernel regression's weights ``α = (Θ + diag_reg·I)⁻¹ y`` by conjugate gradients
        (``jax.scipy.sparse.linalg.cg``; Hestenes & Stiefel 1952) through the tiled product,
        Θ = Θ(x1, x1) over every output entry and ``y`` shaped like ``f(params, x1)``; the
        predictions on x_test are ``Θ(x_test, x1)·α``.  Raises `NumericalError` when the
        relative residual ``‖(Θ + diag_reg·I) α - y‖ / ‖y‖`` ends above ``10·tol``."""
        if not self._program.symmetric:
            raise InputError('solve needs the square Θ(x1, x1), but this product was made '
                             'with an x2 of its own', path='x2',
                             hint='make the product with x2=None to solve, and a second one '
                                  'with x1=x_test, x2=x_train to predict')
        self._cotangents(y)   # the shape check, before any work
        alpha, residual = _cg(self, y, diag_reg, tol, maxiter)
        if not float(residual) <= 10 * tol:
            raise NumericalError(f'conjugate gradients did not solve (Θ + {diag_reg:g} I) α = y:'
                                 f' relative residual {float(residual):.3g} (target {tol:g})',
                                 path='solve', hint='raise diag_reg or maxiter, or loosen tol')
        return alpha

    def __call__(self, v):
        """Θ(x1, x2)·v, shaped like f(params, x1)."""
        out = self._program.fn(*self._args, self._cotangents(v))
        return _tree.tree_map(lambda a: a[:self._program.n1], out)


@functools.partial(jax.jit, static_argnames=('maxiter',))
def _cg(vp, y, diag_reg, tol, maxiter):
    """(α, relative residual) of ``(Θ + diag_reg·I) α = y`` by CG; `vp` is an argument, so its
    inputs are arguments of the program, not constants in it."""
    def system(a):
        return _tree.tree_map(lambda p, q: p + diag_reg * q, vp(a), a)

    alpha, _ = jax.scipy.sparse.linalg.cg(system, y, tol=tol, maxiter=maxiter)
    r = _tree.tree_leaves(_tree.tree_map(jnp.subtract, system(alpha), y))
    norm = jnp.sqrt(sum(jnp.sum(a ** 2) for a in _tree.tree_leaves(y)))
    return alpha, jnp.sqrt(sum(jnp.sum(a ** 2) for a in r)) / jnp.where(norm > 0, norm, 1.0)


def tiled_ntk_vp_fn(f, x1, x2, params, batch_size: int | None = None, devices=None,
                    **apply_fn_kwargs) -> TiledNtkVp:
    """`empirical_ntk_vp_fn(f, x1, x2, params, **apply_fn_kwargs)` computed in tiles of
    `batch_size` examples (None: the largest tile whose temporaries fit in memory, see
    `_fitting_tile`) on `devices` (None: all local devices)."""
    return TiledNtkVp(f, x1, x2, params, batch_size, devices, **apply_fn_kwargs)


def batch_ntk_vp(ntk_vp, batch_size, devices: list, store=None, resume: bool = False,
                 fingerprint=None):
    """What ``ntc.batch`` returns for a function made by `empirical_ntk_vp_fn`: its product in
    tiles of `batch_size` (0: the function itself, un-tiled) on `devices`.  A product is cheap
    to redo and its result depends on v, so there is no store to resume from; the result is an
    array on the devices (``store_on_device`` and ``progress`` do not apply)."""
    if store is not None or resume or fingerprint is not None:
        raise InputError('ntc.batch of an NTK-vector product keeps no tile store', path='store',
                         hint='drop store=, resume= and fingerprint=; the product is recomputed '
                              'on each call')
    if batch_size == 0:
        return ntk_vp
    inputs = ntk_vp.ntk_vp_inputs
    return TiledNtkVp(inputs['f'], inputs['x1'], inputs['x2'], inputs['params'], batch_size,
                      devices, **inputs['kwargs'])
