"""`ntc.batch`: compute an N1×N2 kernel in tiles, sharded across devices, resumable.

- Tiles are square, `batch_size` rows by `batch_size` columns.  Ragged edges are padded by
  repeating the last example (so every tile has one shape and one compilation, and no padding
  row can produce a NaN), and the padding is cut off the result.
- Each step sends one tile to every device of a 1-D mesh with `jax.shard_map`; the next step is
  dispatched before the previous one is fetched, so transfers overlap compute.
- When x2 is None (or is x1) only the tiles on and above the diagonal are computed; each is
  mirrored according to the output layout the plan records (batch axes swapped, and both sides
  of every spatial pair for a FULL spatial covariance; a DIAG one has no pairs).  Diagonal
  tiles go through the `x2=None` path, so their semantics are those of the un-tiled call.  A
  foreign kernel function (no plan) is mirrored only when its kernels are 2-D; otherwise every
  tile is computed.
- The batch axis is the plan's (NT's `batch_axis`): x1 and x2 are tiled along it.
- Arguments after x1 and x2 reach the wrapped function as they were given (positional or by
  keyword: an empirical kernel's `get, params`, or none for a user's `kernel_fn(x1, x2)`), so
  any function with NT's signature can be batched; a foreign function gets x2 = x1 for
  x2=None.  A keyword pair `(v1, v2)` of per-example arrays (NT's `pattern=(p1, p2)`) is
  tiled along with x1 and x2; other arguments are passed whole to every tile.
- `batch_size=None` picks the largest tile whose peak memory, from the plan's cost model, fits
  in the free memory of a device; a tile that still runs out of memory is halved (as long as
  no tile of the job is finished).  A resumed job reuses the tile recorded in its store,
  whatever the memory is now.
- Every tile is checked on the host: a non-finite value raises `NumericalError` naming the
  tile, and is never saved.
- With a `TileStore`, each finished tile is saved atomically and a rerun with `resume=True`
  skips it (see `ntc.runtime.store` for what makes two jobs the same).  `out=` assembles the
  result in a memory-mapped `.npy` file whose space is reserved before computing, under a
  temporary name (`OUT.partial`) renamed to `OUT` only when the result is complete.
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import checks
from ..api import (
    LEAF,
    input_types,
    kernel_input_type,
    normalize_get,
    rebuild,
    returned_fields,
    split_inputs,
    typed_graph,
)
from ..api import compile as compile_plan
from ..checks import free_device_bytes
from ..covariance.kernel import Kernel
from ..errors import InputError, NumericalError, StoreError
from ..fingerprint import Unfingerprintable, value_fingerprint
from ..passes import KERNEL_NAMES
from ..plan import KernelPlan, result_type
from .empirical import per_example_pairs, slice_pairs
from .ntk_vp_tiles import batch_ntk_vp
from .store import Job, TileStore, array_hash, write_error

AXIS = 'tiles'
ARGS = '*args'  # the call's positional arguments after x1 and x2, among its keywords
MEMORY_SAFETY = 3.0  # XLA temporaries beyond the covariances the cost model counts


@dataclass
class BatchStats:
    """What a batched call did: the tile grid, tiles computed, skipped and resumed, and how
    many tiles each device computed."""

    tile: int = 0
    grid: tuple[int, int] = (0, 0)
    tiles_total: int = 0
    tiles_computed: int = 0
    tiles_skipped_symmetric: int = 0
    tiles_resumed: int = 0
    per_device: Counter = field(default_factory=Counter)


def _as_dict(res, names) -> dict:
    """Normalise a kernel function's result (array, namedtuple, Kernel or dict) to a dict."""
    if isinstance(res, dict):
        return {n: res[n] for n in names}
    if len(names) == 1 and not hasattr(res, names[0]):
        return {names[0]: res}
    return {n: getattr(res, n) for n in names}


def _mirror(x, pairs: bool):
    """K(x2, x1) from K(x1, x2): swap the batch axes and, when the spatial axes come in pairs
    (a FULL spatial covariance, (N1, N2, s1, s1', s2, s2', ...)), the two sides of each pair."""
    axes = [1, 0] + ([a for p in range(2, x.ndim, 2) for a in (p + 1, p)] if pairs
                     else list(range(2, x.ndim)))
    return np.transpose(x, axes[:x.ndim])


def _precision() -> str:
    """The numerical precision in effect: x64 or x32, and a default matmul precision if set."""
    text = 'x64' if jax.config.jax_enable_x64 else 'x32'
    matmul = jax.config.jax_default_matmul_precision
    return text if matmul is None else f'{text} matmul={matmul}'


def _pad_rows(x, n):
    if x.shape[0] == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)])


def auto_tile(plan: KernelPlan, n: int, device) -> int:
    """The largest tile (≤ n) whose modelled peak memory fits in the device's free memory."""
    budget = free_device_bytes(device) / MEMORY_SAFETY
    lo, hi = 1, max(1, n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan.peak_bytes(mid, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _devices(devices) -> list:
    """A list of devices, NT's int `device_count` included (-1: all local devices, 0: one)."""
    local = jax.local_devices()
    if devices is None:
        return local
    if isinstance(devices, int):
        if devices < -1 or devices > len(local):
            raise InputError(f'device_count={devices}, but there are {len(local)} local devices',
                             hint='pass -1 for all devices, or a list of jax devices')
        return local if devices == -1 else local[:max(devices, 1)]
    return list(devices)


class BatchedKernelFn:
    """A kernel function computed in tiles; same call signature as the function it wraps.

    A call runs in steps that the multi-process driver (`ntc.runtime.distributed`) also takes
    one by one, each process on its own share of the tiles: `prepare_inputs`, `choose_tile`,
    `job_identity` (what a tile store records), `compute_tiles` and `assemble_from_store`;
    `tile_grid` lists the tiles."""

    def __init__(self, kernel_fn, batch_size=None, devices=None, store_on_device=True,
                 progress=None, store=None, resume=False, fingerprint=None):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 0):
            raise InputError(f'batch_size must be a non-negative integer, got {batch_size!r}',
                             hint='pass None for an automatic tile size, 0 for one tile over '
                                  'all the inputs (NT\'s "no batching"), or N for N × N tiles')
        self.kernel_fn = kernel_fn
        self.batch_size = batch_size
        self.devices = _devices(devices)
        self.store_on_device = store_on_device
        self.progress = progress
        self.store = TileStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.resume = resume
        self.fingerprint = fingerprint
        self.stats = BatchStats()
        self._steps: dict = {}
        self._batch_axis = 0  # of x1 and x2, from the plan (NT's batch_axis)
        self._pairs = False  # whether the kernels' spatial axes come in pairs (FULL spatial)
        self._partials: list[tuple[str, str]] = []
        self._get = None  # the call's `get`, as given

    # -- what to compute -------------------------------------------------------------------------

    def _plan(self, x1, names, kwargs) -> KernelPlan | None:
        """The plan the tiles run (None for a foreign kernel function): it decides the batch
        axis and how a tile is mirrored.  NT's output requests are plan options: a spatially
        diagonal output has no position pairs to swap."""
        if kwargs.get('diagonal_batch', True) is False:
            raise InputError('ntc.batch computes per-example marginals only '
                             '(diagonal_batch=False is not tiled)',
                             hint="compute cov1 as batch(kernel_fn)(x1, None, 'nngp')")
        if isinstance(self.kernel_fn, KernelPlan):
            return self.kernel_fn
        net = getattr(self.kernel_fn, 'net', None)
        return None if net is None else compile_plan(
            net, x1.shape, names, dtype=x1.dtype,
            diagonal_spatial=bool(kwargs.get('diagonal_spatial', False)))

    def _call(self, a, b, names, kwargs):
        """The kernels of one tile; `a` and `b` have their batch axis first.  `kwargs` are the
        call's keyword arguments, and its positional ones after x1 and x2 under `ARGS`."""
        a = jnp.moveaxis(a, 0, self._batch_axis)
        b = None if b is None else jnp.moveaxis(b, 0, self._batch_axis)
        kwargs = dict(kwargs)
        args = tuple(kwargs.pop(ARGS, ()))
        if isinstance(self.kernel_fn, KernelPlan):
            out = self.kernel_fn.raw(a, b, *args, **kwargs)
            return {n: out[n] for n in names}
        if self._own():     # ntc's kernel_fn: `get` from `names`, then the other arguments
            get = names[0] if len(names) == 1 else names
            return _as_dict(self.kernel_fn(a, b, get, *args, **kwargs), names)
        # any other function gets the call's arguments as they were given (a `get` given
        # apart, as the distributed driver does, first), and x2 = x1 for x2=None, as in NT's
        # batch, so that `lambda x1, x2: x1 @ x2.T` works
        if not args and 'get' not in kwargs and self._get is not None:
            args = (self._get,)
        return _as_dict(self.kernel_fn(a, a if b is None else b, *args, **kwargs), names)

    def _own(self) -> bool:
        """Whether the wrapped function is ntc's (a KernelPlan, or a kernel_fn with a net)."""
        return (isinstance(self.kernel_fn, KernelPlan)
                or getattr(self.kernel_fn, 'net', None) is not None)

    def _step(self, names, symmetric_tile: bool, kwargs, pairs=()):
        """A jitted function computing one tile per device: (D, b, ...) inputs -> outputs, and
        the keyword arrays it takes.  Array leaves of `kwargs` (e.g. an empirical kernel's
        `params`) are traced arguments, replicated on every device; other leaves are static.
        The keywords `pairs` come as (D, b, ...) tiles of their two arrays, like the inputs."""
        leaves, tree = jax.tree_util.tree_flatten(kwargs)
        is_array = tuple(isinstance(v, (np.ndarray, jax.Array)) for v in leaves)
        static = tuple(None if arr else v for v, arr in zip(leaves, is_array))
        arrays = [v for v, arr in zip(leaves, is_array) if arr]
        try:
            hash(static)
            static_key = static
        except TypeError:
            static_key = value_fingerprint(static, 'a keyword argument')
        key = (names, symmetric_tile, tree, is_array, static_key, pairs)
        if key not in self._steps:
            mesh = Mesh(np.array(self.devices), (AXIS,))
            spec = PartitionSpec(AXIS)

            def one(a, b, arrs, tiled):
                it = iter(arrs)
                vals = [next(it) if arr else v for v, arr in zip(static, is_array)]
                kw = jax.tree_util.tree_unflatten(tree, vals)
                kw.update({k: (v1[0], v2[0]) for k, (v1, v2) in tiled.items()})
                out = self._call(a[0], None if symmetric_tile else b[0], names, kw)
                return {n: v[None] for n, v in out.items()}

            fn = jax.shard_map(one, mesh=mesh, in_specs=(spec, spec, PartitionSpec(), spec),
                               out_specs=spec, check_vma=False)
            self._steps[key] = (jax.jit(fn), NamedSharding(mesh, spec))
        return self._steps[key] + (arrays,)

    # -- the call ----------------------------------------------------------------------------------

    def prepare_inputs(self, x1, x2, get, kwargs=None):
        """(x1, x2, symmetric, names, form, plan): the call's inputs, normalised and checked,
        with the batch axis moved first.  `symmetric` is False when x2 is given, or when the
        kernel's layout is unknown (a foreign kernel function with kernels of more than two
        axes): then every tile is computed, none mirrored."""
        self._get = get
        if isinstance(self.kernel_fn, KernelPlan) and get is None:
            names, form = self.kernel_fn.opts.get, 'tuple'
        elif get is None and not self._own():
            names, form = None, None    # a foreign function: told by its output below
        else:
            names, form = normalize_get(get)
        symmetric = x2 is None or x2 is x1
        mask = (kwargs or {}).get('mask_constant')
        x1 = np.asarray(checks.as_input(x1, 'x1'))  # integers cast, complex refused
        checks.check_values(x1, 'x1', mask)
        if not symmetric:
            x2 = np.asarray(checks.as_input(x2, 'x2'))
            checks.check_values(x2, 'x2', mask)
        plan = self._plan(x1, names, kwargs or {}) if names is not None else None
        self._batch_axis = plan.batch_axis if plan is not None else 0
        x1 = np.moveaxis(x1, self._batch_axis, 0)
        x2n = x1 if symmetric else np.moveaxis(np.asarray(x2), self._batch_axis, 0)
        if names is None:
            names, form = self._output_names(x1, x2n, kwargs or {})
        if x2n.shape[1:] != x1.shape[1:]:
            raise InputError(f'x1 has shape {x1.shape} and x2 has shape {x2n.shape} (batch axis '
                             'first): they must have the same feature shape (all axes but the '
                             'batch axis)')
        if plan is not None:
            refuse_moving_examples(plan.source)
            self._pairs = plan.output_layout.spatial == 'FULL'
        elif symmetric:
            self._pairs = False
            symmetric = self._foreign_is_2d(x1, names, kwargs or {})
        return x1, x2n, symmetric, names, form, plan

    def _output_names(self, x1, x2, kwargs):
        """(names, form) of a foreign kernel function called without `get`, from the output of
        two examples: one array is kernel 'nngp' returned as is; a namedtuple, dict or Kernel
        gives the kernels it holds."""
        kw = _slice_pairs(kwargs, x1.shape[0], x2.shape[0], slice(0, 2), slice(0, 2))
        out = jax.eval_shape(lambda a, b: self.kernel_fn(a, b, *kw.get(ARGS, ()), **{
            k: v for k, v in kw.items() if k != ARGS}), x1[:2], x2[:2])
        if hasattr(out, 'shape'):
            return ('nngp',), 'one'
        names = tuple(n for n in KERNEL_NAMES
                      if (out.get(n) if isinstance(out, dict) else getattr(out, n, None))
                      is not None)
        if not names:
            raise InputError(f'kernel_fn returned {type(out).__name__}, which holds none of '
                             f'{", ".join(KERNEL_NAMES)}',
                             hint="return an array, or pass get='nngp' or a tuple of names")
        return names, ('kernel' if isinstance(out, Kernel) else 'tuple')

    def _foreign_is_2d(self, x1, names, kwargs) -> bool:
        """Whether a kernel function without a plan gives 2-D kernels (then mirroring a tile is
        a transpose); False when that cannot be told without running it."""
        n = x1.shape[0]
        kwargs = _slice_pairs(kwargs, n, n, slice(0, 2), slice(0, 2))
        try:
            out = jax.eval_shape(lambda a: self._call(a, None, names, kwargs), x1[:2])
        except Exception:  # noqa: BLE001  (any failure to trace: compute every tile)
            return False
        return all(len(out[n].shape) == 2 for n in names if n in ('nngp', 'ntk'))

    def _auto_tile_size(self, plan, n1, n2, symmetric: bool = False) -> int:
        if self.batch_size == 0:  # NT's "no batching": one tile over all the inputs
            return max(n1, n2)
        tile = self.batch_size or (auto_tile(plan, max(n1, n2), self.devices[0]) if plan
                                   else min(256, max(n1, n2)))
        if symmetric and self.batch_size is None:
            # at least 4 × 4 tiles, so that skipping the lower triangle saves work (10 of 16
            # tiles ran 30-50% faster than one call in benchmarks/bench_tiling.py)
            tile = min(tile, max(1, math.ceil(n1 / 4)))
        return min(tile, max(n1, n2))

    def __call__(self, x1, x2=None, *args, out=None, **kwargs):
        """The kernels of `kernel_fn(x1, x2, *args, **kwargs)`, computed in tiles: `get` is the
        first of `args` or a keyword; other arguments are passed on as given, except a pair
        `(v1, v2)` of per-example arrays (e.g. `pattern=(p1, p2)`), which is tiled with x1 and
        x2.  A network with several inputs or outputs is tiled by `_call_tree`."""
        if _kernel_leaves(x1):     # NT's composition: a Kernel, or one per input
            get, args, kwargs = self._split_get(args, kwargs)
            return self._call_on_kernel(x1, x2, get, args, kwargs)
        if self._several_inputs_or_outputs(x1):
            if out is not None or self.store is not None:
                raise InputError('ntc.batch tiles a network with several inputs or outputs in '
                                 'memory only (no out= or store)',
                                 hint='compute each output with its own one-output network')
            return self._call_tree(x1, x2, args, kwargs)
        get, args, kwargs = self._split_get(args, kwargs)
        if args:
            kwargs = dict(kwargs, **{ARGS: args})
        x1, x2n, symmetric, names, form, plan = self.prepare_inputs(x1, x2, get, kwargs)
        tile = self.choose_tile(plan, x1.shape[0], x2n.shape[0], symmetric)
        while True:
            try:
                return self._run(x1, x2n, symmetric, names, form, tile, plan, out, kwargs)
            except jax.errors.JaxRuntimeError as e:
                if ('RESOURCE_EXHAUSTED' not in str(e) or self.batch_size is not None
                        or tile == 1 or self.stats.tiles_computed or self.stats.tiles_resumed):
                    raise
                if self.store is not None and not self.store.discard_empty_job():
                    raise
                tile = max(1, tile // 2)  # a smaller tile fits: never fail for memory

    def _split_get(self, args, kwargs):
        """(get, args, kwargs) of a call: ntc's kernel_fn has `get` taken apart and the rest
        passed on; a foreign function keeps its arguments, and its first one is `get` only if
        it reads as one (an empirical kernel's `params` may come there)."""
        if self._own():
            if args:
                return args[0], args[1:], kwargs
            kwargs = dict(kwargs)
            return kwargs.pop('get', None), (), kwargs
        return (args[0] if args and _is_get(args[0]) else kwargs.get('get')), args, kwargs

    # -- several inputs or outputs (NT's tuples and lists) -------------------------------------

    def _several_inputs_or_outputs(self, x1) -> bool:
        """Whether x1 is a (nested) tuple or list of arrays, or the wrapped ntc network has
        several outputs."""
        if split_inputs(x1)[1] is not LEAF:
            return True
        net = getattr(self.kernel_fn, 'net', None)
        graph = self.kernel_fn.graph if isinstance(self.kernel_fn, KernelPlan) else (
            None if net is None else net.graph(LEAF))
        return graph is not None and len(graph.outputs) > 1

    def _call_tree(self, x1, x2, args, kwargs):
        """`kernel_fn(x1, x2, *args, **kwargs)` for inputs and outputs nested in tuples and
        lists (NT's convention for several of them): every tile pair is one call on the tiles of
        every input array, and the results are joined leaf by leaf along the two batch axes
        (marginals along their one).  Tiles run one after the other on the default device,
        without mirroring; NT's x2 of Nones, ``[(None, None), None]``, is x2 = None."""
        if x2 is not None and not jax.tree_util.tree_leaves(x2):
            x2 = None
        xs1, tree = split_inputs(x1)
        xs2 = None if x2 is None else split_inputs(x2)[0]
        axes = self._tree_batch_axes(x1, xs1)
        n1 = xs1[0].shape[axes[0]]
        n2 = n1 if xs2 is None else xs2[0].shape[axes[0]]
        tile = max(n1, n2) if not self.batch_size else self.batch_size
        get = self._split_get(args, kwargs)[0]
        if tile < max(n1, n2):
            self._refuse_moving_examples(tree, lambda g: input_types(g, [np.shape(x)
                                                                         for x in xs1]))

        def block(xs, start):
            return rebuild(tree, [jax.lax.slice_in_dim(x, start, min(start + tile, x.shape[ax]),
                                                       axis=ax) for x, ax in zip(xs, axes)])

        own = self._own()
        rows = []
        for i in range(0, n1, tile):
            row = []
            for j in range(0, n2, tile):
                if xs2 is None and i == j:
                    second = None if own else block(xs1, i)
                else:
                    second = block(xs1 if xs2 is None else xs2, j)
                row.append(self.kernel_fn(block(xs1, i), second, *args, **kwargs))
                self.stats.tiles_computed += 1
            rows.append(row)
        self.stats.tile = tile
        self.stats.grid = (len(rows), len(rows[0]))
        self.stats.tiles_total = self.stats.tiles_computed
        return _join_tree(rows, get if isinstance(get, str) else None)

    def _refuse_moving_examples(self, tree, types_of) -> None:
        """Refuse an ntc network that selects, reorders or concatenates examples (tiles of its
        inputs are then not tiles of its kernel); `types_of(graph)`: its input types."""
        if isinstance(self.kernel_fn, KernelPlan):
            refuse_moving_examples(self.kernel_fn.source)
            return
        net = getattr(self.kernel_fn, 'net', None)
        if net is not None:
            graph = net.graph(tree)
            refuse_moving_examples(typed_graph(graph, types_of(graph), checked=False))

    def _tree_batch_axes(self, x1, xs1) -> list[int]:
        """Each input array's batch axis: the plan's for an ntc network, else 0."""
        net = getattr(self.kernel_fn, 'net', None)
        if isinstance(self.kernel_fn, KernelPlan):
            return [t.batch for t in self.kernel_fn.input_types]
        if net is None:
            return [0] * len(xs1)
        graph = net.graph(split_inputs(x1)[1])
        return [t.batch for t in input_types(graph, [np.shape(x) for x in xs1])]

    def _call_on_kernel(self, tree, x2, get, args, kwargs):
        """NT's composition through `batch`: `kernel_fn(tree)` for a Kernel (or NT's nested
        tuple or list of them, one per input), computed on the sub-kernels of `batch_size` ×
        `batch_size` tiles of its examples, one after another (no sharding, tile store or
        `out=`), and assembled in the form `kernel_fn` returns."""
        if x2 is not None:
            raise InputError('a batched kernel_fn got a Kernel as x1 and an x2: a Kernel '
                             'already holds the kernels of x1 and x2',
                             hint='pass the Kernel alone: batch(kernel_fn)(kernel)')
        k = _kernel_leaves(tree)[0]
        n1, n2 = k.nngp.shape[:2]
        tile = self.batch_size or max(n1, n2)
        if tile < max(n1, n2):
            types = [kernel_input_type(leaf) for leaf in _kernel_leaves(tree)]
            self._refuse_moving_examples(split_inputs(tree)[1] if not isinstance(tree, Kernel)
                                         else LEAF, lambda g: types)
        name = get if isinstance(get, str) else None
        rows = []
        for i in range(0, n1, tile):
            row = []
            for j in range(0, n2, tile):
                r, c = slice(i, min(i + tile, n1)), slice(j, min(j + tile, n2))
                sub = jax.tree_util.tree_map(
                    lambda kk, r=r, c=c, i=i, j=j: _sub_kernel(kk, r, c, kk.x1_is_x2 and i == j),
                    tree, is_leaf=_is_kernel)
                out = (self.kernel_fn(sub, None, get, *args, **kwargs) if self._own()
                       else self.kernel_fn(sub, None, *args, **kwargs))
                row.append(out[name or 'nngp'] if isinstance(out, dict) else out)
            rows.append(row)
        joined = _join_tree(rows, name)
        if _kernel_leaves(joined):
            return jax.tree_util.tree_map(
                lambda j: j.replace(cov2=None if k.x1_is_x2 else j.cov2, x1_is_x2=k.x1_is_x2,
                                    shape1=_with_batch(j.shape1, n1, j.batch_axis),
                                    shape2=_with_batch(j.shape2, n2, j.batch_axis)),
                joined, is_leaf=_is_kernel)
        if not isinstance(tree, Kernel):     # results per output, as kernel_fn nests them
            return joined
        sizes = {'shape1': n1, 'shape2': n2}
        if hasattr(joined, '_fields'):
            return joined._replace(**{s: _with_batch(getattr(joined, s), n, k.batch_axis)
                                      for s, n in sizes.items() if s in joined._fields})
        return _with_batch(joined, sizes[name], k.batch_axis) if name in sizes else joined

    def choose_tile(self, plan, n1, n2, symmetric: bool = False, store=None) -> int:
        """The tile size: `batch_size`, the one recorded in a store being resumed (`store`, else
        this function's own), or automatic."""
        store = store if store is not None else self.store
        if self.batch_size is None and store is not None and self.resume:
            recorded = store.recorded_job()
            if recorded is not None:
                return recorded.tile  # never lose finished tiles to a different memory budget
        return self._auto_tile_size(plan, n1, n2, symmetric)

    def _identity(self, plan) -> str:
        """What the numbers depend on besides inputs and options: the job's name when the caller
        gave one, else the plan's fingerprint, else the kernel function's (by value)."""
        if self.fingerprint is not None:
            return f'named:{self.fingerprint}'
        try:
            if plan is not None:
                return plan.fingerprint()
            return 'function:' + value_fingerprint(self.kernel_fn, 'kernel_fn')
        except Unfingerprintable as e:
            raise StoreError(f'cannot tell this job from another one to store or resume it: {e}',
                             hint="name the job: ntc.batch(..., fingerprint='a name unique to "
                                  "this network, its parameters and its inputs')") from None

    def job_identity(self, x1, x2, symmetric, names, tile, plan, kwargs=None) -> Job:
        """The identity of the call prepared by `prepare_inputs` with tile size `tile`: what a
        tile store records to tell its job from another (see `ntc.runtime.store.Job`)."""
        try:
            kw = value_fingerprint(kwargs, 'a keyword argument') if kwargs else 'none'
        except Unfingerprintable as e:
            raise StoreError(f'cannot fingerprint the keyword arguments: {e}',
                             hint='pass concrete arrays and plain values') from None
        return Job(plan=self._identity(plan), x1=array_hash(x1),
                   x2='x1' if symmetric else array_hash(x2), dtype=str(x1.dtype),
                   get=list(names), n1=x1.shape[0], n2=x2.shape[0], tile=tile,
                   symmetric=symmetric, precision=_precision(), kwargs=kw)

    def _run(self, x1, x2, symmetric, names, form, tile, plan, out, kwargs):
        n1, n2 = x1.shape[0], x2.shape[0]
        t1, t2 = math.ceil(n1 / tile), math.ceil(n2 / tile)
        x1p, x2p = _pad_rows(x1, t1 * tile), _pad_rows(x2, t2 * tile)
        tiles = tile_grid(n1, n2, tile, symmetric)
        self.stats = BatchStats(tile=tile, grid=(t1, t2), tiles_total=t1 * t2,
                                tiles_skipped_symmetric=t1 * t2 - len(tiles))
        result: dict[str, np.ndarray] = {}
        self._partials: list[tuple[str, str]] = []  # (temporary, final) output files
        try:
            if self.store is not None:
                job = self.job_identity(x1, x2, symmetric, names, tile, plan, kwargs)
                self.store.open(job, self.resume)
            if out is not None:  # reserve the output's space before computing anything
                self._allocate_out(result, out, x1p, x2p, tile, n1, n2, names, kwargs,
                                   symmetric)
            todo = []
            for i, j in tiles:
                saved = self.store.load(i, j) if self.store is not None else None
                if saved is not None:
                    self._place(result, saved, i, j, n1, n2, tile, symmetric, names, out)
                    self.stats.tiles_resumed += 1
                else:
                    todo.append((i, j))
            bar = _progress(len(tiles), self.stats.tiles_resumed, self.progress)
            diag = [t for t in todo if symmetric and t[0] == t[1]]
            rest = [t for t in todo if t not in diag]
            try:
                for group, sym_tile in ((diag, True), (rest, False)):
                    self._run_group(group, sym_tile, x1p, x2p, tile, names, kwargs, result,
                                    (n1, n2, symmetric, out), bar)
            finally:
                bar.close()
            fields = {} if plan is None else dict(
                returned_fields(plan, n1, n2, bool(kwargs.get('diagonal_spatial', False))),
                layout=plan.output_layout)
            return self._finish(result, names, form, symmetric, fields)
        finally:
            for tmp, _ in self._partials:  # an unfinished output never looks complete
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if self.store is not None:
                self.store.close()

    def _allocate_out(self, result, out, x1p, x2p, tile, n1, n2, names, kwargs, symmetric):
        """Create the memory-mapped outputs of `out=`, their space reserved on disk.  The shapes
        come from tracing one tile; a kernel function that cannot be traced gets its files when
        its first tile arrives."""
        try:
            kw = _slice_pairs(kwargs, n1, n2, slice(0, tile), slice(0, tile))
            shapes = jax.eval_shape(lambda a, b: self._call(a, b, names, kw), x1p[:tile],
                                    None if symmetric else x2p[:tile])
        except Exception:  # noqa: BLE001  (allocated lazily in _place instead)
            return
        for name in names:
            if name in ('nngp', 'ntk'):
                sd = shapes[name]
                result[name] = self._open_out(out, name, names, (n1, n2) + tuple(sd.shape[2:]),
                                              sd.dtype)

    def compute_tiles(self, store, x1, x2, symmetric, names, tile, tiles, kwargs):
        """Compute the tiles `tiles` (a list of (i, j)) of the call prepared by `prepare_inputs`
        and save them to `store`, without assembling a result: one process's share of a
        multi-process job.  `stats` counts them."""
        saved, self.store = self.store, store
        try:
            t1, t2 = math.ceil(x1.shape[0] / tile), math.ceil(x2.shape[0] / tile)
            x1p, x2p = _pad_rows(x1, t1 * tile), _pad_rows(x2, t2 * tile)
            self.stats = BatchStats(tile=tile, grid=(t1, t2), tiles_total=t1 * t2)
            bar = _progress(len(tiles), 0, self.progress)
            diag = [t for t in tiles if symmetric and t[0] == t[1]]
            rest = [t for t in tiles if t not in diag]
            for group, sym_tile in ((diag, True), (rest, False)):
                self._run_group(group, sym_tile, x1p, x2p, tile, names, kwargs, None,
                                (x1.shape[0], x2.shape[0], symmetric, None), bar)
            bar.close()
        finally:
            self.store = saved

    def assemble_from_store(self, store, x1, x2, symmetric, names, form, tile, plan, out,
                            kwargs):
        """The result of the call prepared by `prepare_inputs`, read from the tiles in `store`
        (as a resumed job); tiles still missing there are computed and saved."""
        saved = self.store, self.resume
        self.store, self.resume = store, True
        try:
            return self._run(x1, x2, symmetric, names, form, tile, plan, out, kwargs)
        finally:
            self.store, self.resume = saved

    def _run_group(self, group, sym_tile, x1p, x2p, tile, names, kwargs, result, place, bar):
        if not group:
            return
        n_dev = len(self.devices)
        pairs = per_example_pairs(_keywords(kwargs), place[0], place[1])
        kwargs = {k: v for k, v in kwargs.items() if k not in pairs}
        pairs = {k: (_pad_rows(np.asarray(v1), x1p.shape[0]),
                     _pad_rows(np.asarray(v1 if v2 is None else v2), x2p.shape[0]))
                 for k, (v1, v2) in pairs.items()}
        step, sharding, arrays = self._step(names, sym_tile, kwargs, tuple(sorted(pairs)))
        chunks = [group[k:k + n_dev] for k in range(0, len(group), n_dev)]
        pending = None
        for chunk in chunks + [None]:
            launched = None
            if chunk is not None:
                padded = chunk + [chunk[-1]] * (n_dev - len(chunk))

                def rows(x, side, tiles=padded):   # tiles of x by row (side 0) or column (1)
                    return jax.device_put(np.stack([x[t[side] * tile:(t[side] + 1) * tile]
                                                    for t in tiles]), sharding)

                tiled = {k: (rows(v1, 0), rows(v2, 1)) for k, (v1, v2) in pairs.items()}
                launched = (chunk, step(rows(x1p, 0), rows(x2p, 1), arrays, tiled))
            if pending is not None:  # fetch the previous step while this one runs
                self._collect(*pending, tile, names, result, place, bar)
            pending = launched

    def _collect(self, chunk, outs, tile, names, result, place, bar):
        n1, n2, symmetric, out = place
        device_of = {s.index[0].start or 0: s.device for s in outs[names[0]].addressable_shards}
        host = {n: np.asarray(v) for n, v in outs.items()}
        bad = None
        for d, (i, j) in enumerate(chunk):
            arrays = {n: host[n][d] for n in names}
            self.stats.per_device[str(device_of[d])] += 1
            err = _non_finite(arrays, i, j, tile, n1, n2)
            if err is not None:  # never saved; the finite tiles of this step still are
                bad = bad or err
                continue
            if self.store is not None:
                self.store.save(i, j, arrays)
            if result is not None:
                self._place(result, arrays, i, j, n1, n2, tile, symmetric, names, out)
            self.stats.tiles_computed += 1
            bar.update(1)
        if bad is not None:
            raise bad

    def _place(self, result, arrays, i, j, n1, n2, tile, symmetric, names, out):
        r0, c0 = i * tile, j * tile
        rows, cols = min(tile, n1 - r0), min(tile, n2 - c0)
        for name in names:
            x = np.asarray(arrays[name])
            if name in ('nngp', 'ntk'):
                full = result.get(name)
                if full is None:
                    full = result[name] = self._open_out(out, name, names,
                                                         (n1, n2) + x.shape[2:], x.dtype)
                full[r0:r0 + rows, c0:c0 + cols] = x[:rows, :cols]
                if symmetric and i != j:
                    full[c0:c0 + cols, r0:r0 + rows] = _mirror(x[:rows, :cols], self._pairs)
            elif name == 'cov1' or (name == 'cov2' and symmetric):
                if j == (i if symmetric else 0):
                    full = result.setdefault(name, np.zeros((n1,) + x.shape[1:], x.dtype))
                    full[r0:r0 + rows] = x[:rows]
            elif name == 'cov2' and i == 0:
                full = result.setdefault(name, np.zeros((n2,) + x.shape[1:], x.dtype))
                full[c0:c0 + cols] = x[:cols]

    def _open_out(self, out, name, names, shape, dtype):
        """A result array: in memory, or memory-mapped under a temporary name (see `_finish`)."""
        if out is None:
            return np.zeros(shape, dtype)
        final = output_path(out, name, names)
        parent = os.path.dirname(os.path.abspath(final))
        if not os.path.isdir(parent):
            raise StoreError(f'cannot write {final}: the directory {parent} does not exist',
                             hint='create the directory or choose another output path')
        tmp = final + '.partial'
        self._partials.append((tmp, final))
        return _allocate(tmp, shape, dtype)

    def _finish(self, result, names, form, symmetric, fields=None):
        for arr in result.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        for tmp, final in self._partials:  # complete: give the outputs their names
            try:
                os.replace(tmp, final)
            except OSError as e:
                raise write_error(final, e) from None
        self._partials = []
        if self.store_on_device:
            result = {n: jnp.asarray(v) for n, v in result.items()}
        if form == 'one':
            return result[names[0]]
        if form == 'kernel':
            return Kernel(nngp=result.get('nngp'), ntk=result.get('ntk'), cov1=result.get('cov1'),
                          cov2=None if symmetric else result.get('cov2'), x1_is_x2=symmetric,
                          **(fields or {}))
        return result_type(tuple(names))(*(result[n] for n in names))


def refuse_moving_examples(graph) -> None:
    """Raise when a layer of typed `graph` moves examples (`Op.moves_examples`: selects,
    reorders or concatenates them), so that a tile of x1 × x2 gives no tile of the kernel."""
    node = graph.moving_examples()
    if node is not None:
        raise InputError(f'ntc.batch computes the kernel in tiles of the examples of x1 and '
                         f'x2, but {node.op.kind} selects, reorders or concatenates examples, '
                         'so a tile of the inputs gives no tile of the kernel', path=node.path,
                         hint='call kernel_fn itself, on the whole batch')


def _join_tree(rows, name: str | None):
    """One result from the results of a grid of tiles (`rows[i][j]`, each a tree of arrays,
    namedtuples of kernels or Kernels): cross kernels joined along both batch axes, marginals
    (`cov1` down the first column, `cov2` along the first row) along their one; `name` is the
    kernel an array leaf holds (None: a cross kernel)."""
    first = rows[0][0]
    if first is None:
        return None
    if isinstance(first, Kernel):
        fields = {n: _join_tree([[getattr(t, n) for t in row] for row in rows], n)
                  for n in ('nngp', 'ntk', 'cov1', 'cov2')}
        return first.replace(**fields)
    if isinstance(first, tuple) and hasattr(first, '_fields'):  # a namedtuple of kernels
        return type(first)(*(_join_tree([[getattr(t, n) for t in row] for row in rows], n)
                             for n in first._fields))
    if isinstance(first, (tuple, list)):
        return type(first)(_join_tree([[t[k] for t in row] for row in rows], name)
                           for k in range(len(first)))
    if name == 'cov1':
        return jnp.concatenate([row[0] for row in rows], axis=0)
    if name == 'cov2':
        return jnp.concatenate(rows[0], axis=0)
    if name in ('shape1', 'shape2'):
        return first
    return jnp.concatenate([jnp.concatenate(row, axis=1) for row in rows], axis=0)


def _sub_kernel(k: Kernel, rows: slice, cols: slice, same: bool) -> Kernel:
    """The Kernel of examples `rows` of x1 against examples `cols` of x2 (`same`: the rows
    are the columns, x1 is x2)."""
    def cut(x, s):
        return None if x is None else x[s]

    cov2 = k.cov1 if k.x1_is_x2 else k.cov2
    n1, n2 = rows.stop - rows.start, cols.stop - cols.start
    return k.replace(nngp=k.nngp[rows, cols], ntk=None if k.ntk is None else k.ntk[rows, cols],
                     cov1=cut(k.cov1, rows), cov2=None if same else cut(cov2, cols),
                     x1_is_x2=same, shape1=_with_batch(k.shape1, n1, k.batch_axis),
                     shape2=_with_batch(k.shape2, n2, k.batch_axis))


def _with_batch(shape, n: int, batch_axis: int):
    """`shape` (a tuple, or None) with its batch entry set to `n`."""
    if shape is None:
        return None
    b = batch_axis % len(shape)
    return tuple(n if i == b else d for i, d in enumerate(shape))


def _is_kernel(value) -> bool:
    return isinstance(value, Kernel)


def _kernel_leaves(tree) -> list:
    """The Kernels of `tree` when it is a Kernel or a (nested) tuple or list of Kernels only
    (NT's input to a composed kernel_fn), else []."""
    if isinstance(tree, Kernel):
        return [tree]
    if not isinstance(tree, (tuple, list)) or not tree or hasattr(tree, '_fields'):
        return []
    leaves = [_kernel_leaves(t) for t in tree]
    return [k for sub in leaves for k in sub] if all(leaves) else []


def _is_get(value) -> bool:
    """Whether `value` reads as NT's `get`: a kernel name or a tuple or list of names (an
    empirical kernel function's `params` in that place do not)."""
    return isinstance(value, str) or (isinstance(value, (tuple, list)) and bool(value)
                                      and all(isinstance(v, str) for v in value))


def _keywords(kwargs: dict) -> dict:
    """The call's keyword arguments, without its positional ones (`ARGS`)."""
    return {k: v for k, v in kwargs.items() if k != ARGS}


def _slice_pairs(kwargs: dict, n1: int, n2: int, rows: slice, cols: slice) -> dict:
    """`slice_pairs` of the call's keyword arguments; positional ones are left as they are."""
    return dict(kwargs, **slice_pairs(_keywords(kwargs), n1, n2, rows, cols))


def tile_grid(n1: int, n2: int, tile: int, symmetric: bool) -> list[tuple[int, int]]:
    """The tiles (i, j) of an n1 × n2 kernel in `tile` × `tile` blocks, row by row; only the
    upper triangle (j ≥ i) when the kernel is symmetric."""
    t1, t2 = math.ceil(n1 / tile), math.ceil(n2 / tile)
    return [(i, j) for i in range(t1) for j in range(t2) if not symmetric or j >= i]


def output_path(out, name, names) -> str:
    """The file of kernel `name` for `out=`: `out` itself, or OUT.name.npy (OUT without its
    .npy) for each kernel when several are asked."""
    path = os.fspath(out)
    if len([n for n in names if n in ('nngp', 'ntk')]) > 1:
        stem = path[:-4] if path.endswith('.npy') else path
        path = f'{stem}.{name}.npy'
    return path


def _allocate(path: str, shape, dtype) -> np.memmap:
    """A `.npy` file at `path` memory-mapped for writing, its whole size reserved on disk up
    front (`posix_fallocate`), so that a full disk is a StoreError now and never a SIGBUS
    later."""
    dtype = np.dtype(dtype)
    header = {'descr': np.lib.format.dtype_to_descr(dtype), 'fortran_order': False,
              'shape': tuple(int(d) for d in shape)}
    try:
        with open(path, 'wb') as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.flush()
            size = offset + math.prod(header['shape']) * dtype.itemsize
            if hasattr(os, 'posix_fallocate'):
                os.posix_fallocate(f.fileno(), 0, size)
            else:
                f.truncate(size)
        return np.memmap(path, dtype=dtype, mode='r+', offset=offset, shape=header['shape'])
    except OSError as e:
        if os.path.exists(path):
            os.unlink(path)
        raise write_error(path, e) from None


def _non_finite(arrays, i, j, tile, n1, n2) -> NumericalError | None:
    """A NumericalError naming tile (i, j) when one of its kernels (padding cut off) holds a
    NaN or an infinity; None when all are finite."""
    r0, c0 = i * tile, j * tile
    rows, cols = min(tile, n1 - r0), min(tile, n2 - c0)
    for name, x in arrays.items():
        x = np.asarray(x)
        part = (x[:rows, :cols] if name in ('nngp', 'ntk') else x[:cols] if name == 'cov2'
                else x[:rows])
        if not np.isfinite(part).all():
            return NumericalError(
                f'tile ({i}, {j}) of {name} (rows {r0}:{r0 + rows}, columns {c0}:{c0 + cols}) '
                'holds non-finite values; it was not saved',
                hint=f'run kernel_fn on x1[{r0}:{r0 + rows}] and x2[{c0}:{c0 + cols}] to find the '
                     'first non-finite layer, or check those inputs')
    return None


def _progress(total, done, progress):
    from tqdm.auto import tqdm
    show = progress if progress is not None else sys.stderr.isatty()
    return tqdm(total=total, initial=done, unit='tile', desc='kernel tiles', disable=not show,
                dynamic_ncols=True)


def batch(kernel_fn, batch_size: int | None = None, devices=None, store_on_device: bool = True,
          *, device_count: int | None = None, progress: bool | None = None, store=None,
          resume: bool = False, fingerprint: str | None = None) -> BatchedKernelFn:
    """Compute `kernel_fn` (an ntc kernel_fn, a KernelPlan, or any function with NT's signature
    `kernel_fn(x1, x2, get, **kwargs)`, e.g. an empirical or Monte-Carlo one) in tiles of
    `batch_size` × `batch_size` (None: the largest that fits in memory; 0: one tile over all the
    inputs, NT's "no batching"), spread over `devices` (a list, or NT's int `device_count`: -1
    all local devices, 0 one, n the first n), which NT's keyword `device_count=` also gives.
    The result is assembled on device, in host memory (`store_on_device=False`), or in a
    memory-mapped `.npy` (`out=` at call time).
    `store` (a path or TileStore) with `resume=True` continues a crashed job; the job is
    identified by the plan's fingerprint (user functions by value) or, for a kernel function
    without a plan, by the function's value.  `fingerprint=` names the job instead: needed for a
    function that captures something with no stable value, and trusted as given."""
    if device_count is not None:
        if devices is not None:
            raise InputError(f'both devices={devices!r} and device_count={device_count!r} given',
                             hint='pass one: device_count (NT\'s name) or devices')
        if not isinstance(device_count, int) or isinstance(device_count, bool):
            raise InputError(f'device_count must be an integer, got {device_count!r}',
                             hint='-1: all local devices, 0: one device, n: the first n; or '
                                  'pass a list of jax devices as devices=')
        devices = device_count
    if hasattr(kernel_fn, 'ntk_vp_inputs'):  # from empirical_ntk_vp_fn: Θ·v in tiles
        return batch_ntk_vp(kernel_fn, batch_size, _devices(devices), store, resume, fingerprint)
    return BatchedKernelFn(kernel_fn, batch_size, devices, store_on_device, progress, store,
                           resume, fingerprint)
