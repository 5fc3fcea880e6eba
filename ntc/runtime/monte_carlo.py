"""Monte-Carlo NNGP / NTK estimates of any network with a JAX ``init_fn`` / ``apply_fn``.

The infinite-width kernels are expectations over random initialisations of the empirical
kernels (Neal 1996; Lee et al. 2018; Jacot et al. 2018; Novak et al. 2019, "Neural tangents",
sec. 3), so averaging `empirical_kernel_fn` over ``n`` independently initialised networks gives
an unbiased estimate with ``O(1/sqrt(n))`` error - also for networks without a closed form.

- `monte_carlo_kernel_fn`: NT's drop-in; returns ``kernel_fn(x1, x2=None, get=None, **kw)``, or,
  when ``n_samples`` is an iterable, a generator of running estimates at those sample counts.
- `monte_carlo_kernel_stats`: the same samples, reduced to the per-entry sample mean *and*
  standard error of the mean, for statistical tests against closed forms.

Samples are drawn as in NT (for sample ``i``: ``key, k = split(key)``, then
``init_key, rng = split(k)``, ``params = init_fn(init_key, x1.shape)[1]``, and the apply function
gets ``rng=`` when it accepts one).  They are computed in chunks with `jax.vmap`, each chunk
jitted and, across ``device_count`` devices, sharded along the sample axis; only running sums
(Chan et al. 1979's pairwise update of mean and squared deviations) are kept, so memory does not
grow with ``n_samples``.  Each device sums its own samples; the sums are copied to the first
device and merged there, so results are ordinary one-device arrays and the sharded program has
no collective (XLA:CPU aborts the process when an all-reduce waits 40 s for a host device).
"""

from __future__ import annotations

import math
from collections import OrderedDict, namedtuple
from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from ..checks import is_concrete
from ..errors import InputError
from .empirical import (
    DEFAULT_NTK_IMPLEMENTATION,
    _axes,
    _get,
    _split_kwargs,
    accepts_rng,
    empirical_kernel_fn,
    slice_pairs,
)

__all__ = ['monte_carlo_kernel_fn', 'monte_carlo_kernel_stats', 'MonteCarloStats']

_tree = jax.tree_util
_MEMORY_BUDGET = 2 ** 25    # array elements one chunk may hold (Jacobians and kernels)
_MAX_CHUNK = 128
_CACHE_SIZE = 32
_CHUNK_CACHE: OrderedDict = OrderedDict()   # jitted chunk functions, shared by kernel_fns


class MonteCarloStats(NamedTuple):
    """Per-entry Monte-Carlo statistics: ``mean[g]`` and ``stderr[g]`` (standard error of the
    mean, ``std / sqrt(n_samples)`` with the unbiased ``std``) for each kernel ``g``."""

    mean: dict
    stderr: dict
    n_samples: int


def _canon_n_samples(n_samples) -> tuple[list[int], bool]:
    if isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool):
        counts, generator = [int(n_samples)], False
    elif isinstance(n_samples, Iterable) and not isinstance(n_samples, (str, bytes)):
        counts, generator = list(n_samples), True
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                   for n in counts):
            raise InputError(f'n_samples must contain only integers, got {counts}')
        counts = sorted({int(n) for n in counts})
    else:
        raise InputError(f'n_samples must be an integer or an iterable of integers, got '
                         f'{n_samples!r}')
    if not counts or any(n <= 0 for n in counts):
        raise InputError(f'n_samples must be positive, got {n_samples}')
    return counts, generator


def _devices(device_count: int):
    devices = jax.devices()
    if device_count == -1:
        return devices
    if device_count == 0:
        return devices[:1]
    if device_count < 0 or device_count > len(devices):
        raise InputError(f'device_count={device_count} but {len(devices)} devices are available '
                         '(-1: all, 0: one)')
    return devices[:device_count]


class _Sampler:
    """Chunked, jitted, optionally sharded running sums over sampled empirical kernels.

    One compiled function per configuration does a whole chunk: it advances NT's key chain by
    the chunk's samples (`lax.scan`), evaluates their kernels with `vmap` (sharded along the
    sample axis over the devices), and merges their sum and squared deviations into the
    running state (Chan et al. 1979)."""

    def __init__(self, init_fn, apply_fn, key, trace_axes, diagonal_axes, vmap_axes,
                 implementation, device_count, store_on_device, chunk_size=None,
                 input_shape=None, **empirical_kw):
        self.init_fn = init_fn
        self.apply_fn = apply_fn
        self.key = key
        self.kernel_fn = empirical_kernel_fn(apply_fn, trace_axes, diagonal_axes, vmap_axes,
                                             implementation, **empirical_kw)
        self.settings = (init_fn, apply_fn, repr((trace_axes, diagonal_axes, vmap_axes,
                                                  int(implementation),
                                                  sorted(empirical_kw.items()))))
        self.pass_rng = accepts_rng(apply_fn)
        self.copy_inputs = vmap_axes is not None     # see _chunk_fn
        self.trace_axes, self.diagonal_axes = trace_axes, diagonal_axes
        self.devices = _devices(device_count)
        self.store_on_device = store_on_device
        self.chunk_size = chunk_size
        self.input_shape = input_shape

    def _one(self, skey, x1, x2, names, shape, kwargs):
        init_key, rng = jax.random.split(skey)
        params = self.init_fn(init_key, shape)[1]
        if self.pass_rng:
            kwargs = dict(kwargs, rng=rng)
        return {g: self.kernel_fn(x1, x2, g, params, **kwargs) for g in names}

    def _chunk_fn(self, names, shape, size, with_m2, static_kw, shard):
        """``(sample, merge)``, jitted: ``sample(key, take, x1, x2, kwargs)`` draws the next
        `size` samples (the first `take` count) and returns ``(next_key, partials)``, one
        ``(count, sum, M2)`` per device along a leading axis; ``merge(state, partials)`` adds
        them to the running state on one device."""
        cache_key = self.settings + (names, repr(shape), size, with_m2,
                                     repr(sorted(static_kw.items())),
                                     tuple(d.id for d in self.devices), shard)
        if cache_key in _CHUNK_CACHE:
            _CHUNK_CACHE.move_to_end(cache_key)
            return _CHUNK_CACHE[cache_key]
        # with vmap_axes every sample gets its own copy of the inputs: under a device mesh,
        # JAX's batching rule for a conv whose filter alone is batched and which has feature
        # groups (the transpose of a conv in the per-example Jacobians) raises
        # NotImplementedError; with the input batched too it takes a rule that works
        copy = self.copy_inputs

        def partials(skeys, mask, xs, kwargs):
            """(count, sum, M2 about their own mean) of the unmasked samples, each with a
            leading axis of length 1 (one entry per device once sharded)."""
            ks = jax.vmap(lambda k, x: self._one(k, *x, names, shape, dict(kwargs, **static_kw)),
                          in_axes=(0, 0 if copy else None))(skeys, xs)

            def masked(k):     # padding samples are dropped, even if not finite
                return jnp.where(mask.reshape((-1,) + (1,) * (k.ndim - 1)), k, 0)

            count = jnp.sum(mask).astype(_tree.tree_leaves(ks)[0].dtype)
            sums = _tree.tree_map(lambda k: jnp.sum(masked(k), axis=0), ks)
            means = _tree.tree_map(lambda sm: (sm / jnp.maximum(count, 1))[None], sums)
            m2 = _tree.tree_map(lambda k, m: jnp.sum(masked((k - m) ** 2), axis=0),
                                ks, means) if with_m2 else None
            return _tree.tree_map(lambda a: a[None], (count, sums, m2))

        # each device vmaps over its own share of the samples and sums it (shard_map: sharding
        # one vmap with XLA's partitioner gave wrong per-example NTKs of conv nets).  The
        # program has no collective: on host devices an all-reduce waits at most 40 s for the
        # other devices and then aborts the process, which a loaded CPU reaches
        if shard:
            spec = PartitionSpec('s')
            partials = jax.shard_map(partials, mesh=Mesh(np.array(self.devices), ('s',)),
                                     in_specs=(spec, spec, spec if copy else PartitionSpec(),
                                               PartitionSpec()),
                                     out_specs=spec, check_vma=False)

        def sample(key, take, x1, x2, kwargs):
            def step(k, _):
                pair = jax.random.split(k)
                return pair[0], (pair[0], pair[1])
            _, (chain, skeys) = jax.lax.scan(step, key, None, length=size)
            next_key = chain[jnp.maximum(take - 1, 0)]
            xs = (x1, x2)
            if copy:
                xs = _tree.tree_map(lambda a: jnp.broadcast_to(a, (size,) + a.shape), xs)
            return next_key, partials(skeys, jnp.arange(size) < take, xs, kwargs)

        def merge(state, parts):
            """The running state with each device's part added in turn."""
            for i in range(parts[0].shape[0]):
                state = _merge(state, _tree.tree_map(lambda a, i=i: a[i], parts), with_m2)
            return state

        fns = (jax.jit(sample), jax.jit(merge))
        _CHUNK_CACHE[cache_key] = fns
        if len(_CHUNK_CACHE) > _CACHE_SIZE:
            _CHUNK_CACHE.popitem(last=False)
        return fns

    def _size(self, outs, shape, x1, x2, names, kwargs, n_max, shard):
        if self.chunk_size is not None:
            size = int(self.chunk_size)
            if size <= 0:
                raise InputError(f'chunk_size must be positive, got {self.chunk_size}')
        else:
            params = jax.eval_shape(lambda k: self.init_fn(k, shape)[1], self.key)
            n_params = sum(math.prod(p.shape) for p in _tree.tree_leaves(params))
            n_kernel = sum(math.prod(o.shape) for o in _tree.tree_leaves(outs))
            per_input = zip((x1, x2), _split_kwargs(kwargs, x1, x2))  # pattern=(p1, p2) etc.
            n_out = sum(math.prod(o.shape) for x, kw in per_input if x is not None
                        for o in self.out_shapes(x, shape, kw))
            per = n_kernel + n_params * (n_out if 'ntk' in names else 1)
            if self.copy_inputs:
                per += sum(math.prod(a.shape) for a in _tree.tree_leaves((x1, x2)))
            size = max(1, min(_MAX_CHUNK, _MEMORY_BUDGET // max(per, 1)))
        # a power of two at least n_max (up to the budget): fewer distinct compilations
        size = min(size, 1 << max(n_max - 1, 0).bit_length())
        d = len(self.devices) if shard else 1
        return -(-size // d) * d

    def run(self, x1, x2, names, counts, kwargs, with_m2):
        """Yield ``(n, (n, sums, M2s or None))`` after reaching each sample count in `counts`."""
        if 'rng' in kwargs:
            raise InputError('rng is drawn for every sample from key; do not pass it')
        shape = tuple(self.input_shape) if self.input_shape is not None else \
            _tree.tree_map(jnp.shape, x1)
        dyn = {k: v for k, v in kwargs.items()
               if all(hasattr(a, 'shape') for a in _tree.tree_leaves(v))}
        static_kw = {k: v for k, v in kwargs.items() if k not in dyn}
        outs = jax.eval_shape(lambda k: self._one(k, x1, x2, names, shape, kwargs), self.key)
        # traced (inside the caller's jit or shard_map, e.g. ntc.batch's): the caller places
        # the computation, so all samples run in the one program
        traced = not is_concrete(x1, x2, dyn)
        shard = len(self.devices) > 1 and not traced
        size = self._size(outs, shape, x1, x2, names, kwargs, counts[-1], shard)
        sample, merge = self._chunk_fn(names, shape, size, with_m2, static_kw, shard)

        def zeros():
            return _tree.tree_map(lambda o: np.zeros(o.shape, o.dtype), outs)

        dtype = _tree.tree_leaves(outs)[0].dtype
        state = (np.zeros((), dtype), zeros(), zeros() if with_m2 else None)
        key, n_done = self.key, 0
        for target in counts:
            while n_done < target:
                take = min(size, target - n_done)
                key, parts = sample(key, np.int32(take), x1, x2, dyn)
                if shard:
                    parts = _on_one_device(parts, self.devices[0])
                state = merge(state, parts)
                if not self.store_on_device:
                    state = _tree.tree_map(np.asarray, state)
                n_done += take
            yield n_done, state

    def out_shapes(self, x, shape, kwargs):
        """Shapes of the apply function's output leaves on x."""
        def apply(k):
            params = self.init_fn(k, shape)[1]
            kw = dict(kwargs, rng=k) if self.pass_rng else kwargs
            return self.apply_fn(params, x, **kw)
        return _tree.tree_leaves(jax.eval_shape(apply, self.key))

    def out_ndim(self, x, shape, kwargs) -> int:
        """Rank of the apply function's outputs (the same for every leaf, else an error)."""
        ranks = {o.ndim for o in self.out_shapes(x, shape, kwargs)}
        if len(ranks) != 1:
            raise InputError('batch_size needs outputs of one rank, got ranks '
                             f'{sorted(ranks)}')
        return ranks.pop()


def _merge(state, part, with_m2):
    """Chan et al.'s (1979) pairwise update: the (count, sum, M2) of the union of two sets of
    samples from those of each set (M2: the sum of squared deviations from the set's mean)."""
    (n_a, sum_a, m2_a), (n_b, sum_b, m2_b) = state, part
    n = n_a + n_b
    m2 = None
    if with_m2:
        both = (n_a > 0) & (n_b > 0)
        scale = n_a * n_b / jnp.maximum(n, 1)

        def add_m2(m_a, m_b, s_a, s_b):
            gap = s_b / jnp.maximum(n_b, 1) - s_a / jnp.maximum(n_a, 1)
            return m_a + m_b + jnp.where(both, gap ** 2 * scale, 0)

        m2 = _tree.tree_map(add_m2, m2_a, m2_b, sum_a, sum_b)
    return n, _tree.tree_map(jnp.add, sum_a, sum_b), m2


def _on_one_device(parts, device):
    """`parts` (sharded along their leading axis) gathered on `device` by copying each shard
    there: results on one device, as a user expects, and no collective program."""
    def gather(a):
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        return jnp.concatenate([jax.device_put(s.data, device) for s in shards])
    return _tree.tree_map(gather, parts)


def monte_carlo_kernel_fn(init_fn, apply_fn, key, n_samples, batch_size: int = 0,
                          device_count: int = -1, store_on_device: bool = True,
                          trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
                          implementation=DEFAULT_NTK_IMPLEMENTATION, _j_rules: bool = True,
                          _s_rules: bool = True, _fwd: bool | None = None):
    """Monte-Carlo estimate of the NNGP / NTK: the average of the empirical kernels of
    ``n_samples`` networks initialised by ``init_fn(key, input_shape) -> (shape, params)`` and
    applied by ``apply_fn(params, x, **kwargs)`` (Novak et al. 2019, sec. 3).

    Returns ``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)`` giving the estimate (an array
    for a string ``get``, else a ``MonteCarloKernel`` namedtuple), or, when ``n_samples`` is an
    iterable of ints, a generator of the running estimates after each of those (sorted) counts.
    ``batch_size > 0`` computes the kernel in ``batch_size``-row blocks of ``x1`` and ``x2`` (it
    must divide both); ``device_count`` shards the samples over devices (``-1``: all, ``0``:
    one); ``store_on_device=False`` keeps the running sums in host memory.  The remaining
    arguments are those of `empirical_kernel_fn`.
    """
    counts, generator = _canon_n_samples(n_samples)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise InputError(f'batch_size must be a non-negative integer, got {batch_size!r}')
    sampler = _Sampler(init_fn, apply_fn, key, trace_axes, diagonal_axes, vmap_axes,
                       implementation, device_count, store_on_device,
                       _j_rules=_j_rules, _s_rules=_s_rules, _fwd=_fwd)

    def estimates(x1, x2, names, kwargs):
        if batch_size:
            return _blocked(sampler, x1, x2, names, counts, kwargs, batch_size)
        return (_tree.tree_map(lambda t, n=n: t / n, state[1])
                for n, state in sampler.run(x1, x2, names, counts, kwargs, False))

    def package(est, names, single):
        if single:
            return est[names[0]]
        typ = namedtuple('MonteCarloKernel', names)
        return _tree.tree_map(lambda *leaves: typ(*leaves), *(est[g] for g in names))

    if generator:
        def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
            """Generator of Monte-Carlo estimates of `get` after each count in n_samples."""
            names, single = _get(get)
            x2 = _nt_x2(x2)
            for est in estimates(x1, x2, names, apply_fn_kwargs):
                yield package(est, names, single)
    else:
        def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
            """Monte-Carlo estimate of the kernels `get` between `x1` and `x2` (None: x1)."""
            names, single = _get(get)
            x2 = _nt_x2(x2)
            *_, est = estimates(x1, x2, names, apply_fn_kwargs)
            return package(est, names, single)

    return kernel_fn


def _nt_x2(x2):
    """NT's x2 = x1 for a network with several inputs, a tree of Nones such as
    ``[(None, None), None]``, read as None."""
    return None if x2 is not None and not _tree.tree_leaves(x2) else x2


def _blocked(sampler, x1, x2, names, counts, kwargs, batch_size):
    """Estimates assembled from ``batch_size`` x ``batch_size`` blocks of (x1, x2)."""
    n1 = _tree.tree_leaves(x1)[0].shape[0]  # a network with several inputs: x1 is a tuple
    n2 = n1 if x2 is None else _tree.tree_leaves(x2)[0].shape[0]
    if n1 % batch_size or n2 % batch_size:
        raise InputError(f'batch_size={batch_size} must divide the batch sizes of x1 ({n1}) '
                         f'and x2 ({n2})')
    if sampler.input_shape is None:
        sampler.input_shape = _tree.tree_map(jnp.shape, x1)  # initialised for all of x1
    ndim = sampler.out_ndim(x1, sampler.input_shape, _split_kwargs(kwargs, x1, None)[0])
    tr, dg = _axes(ndim, sampler.trace_axes, sampler.diagonal_axes)
    if 0 in tr:
        raise InputError('batch_size > 0 needs the batch axis 0 outside trace_axes')
    diagonal = 0 in dg
    if diagonal and n1 != n2:
        raise InputError(f'diagonal_axes includes the batch axis, so x1 and x2 need the same '
                         f'number of examples, got {n1} and {n2}')
    def block(x, i):
        return _tree.tree_map(lambda a: a[i:i + batch_size], x)

    rows = [block(x1, i) for i in range(0, n1, batch_size)]
    cols = rows if x2 is None else [block(x2, j) for j in range(0, n2, batch_size)]
    runs = {}
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            if diagonal and i != j:
                continue
            second = None if (x2 is None and i == j) else b
            kw = slice_pairs(kwargs, n1, n2, slice(i * batch_size, (i + 1) * batch_size),
                             slice(j * batch_size, (j + 1) * batch_size))   # pattern=(p1, p2)
            runs[i, j] = sampler.run(a, second, names, counts, kw, False)
    for _ in counts:
        blocks = {}
        for ij, r in runs.items():
            n, (_, total, _) = next(r)
            blocks[ij] = _tree.tree_map(lambda t, n=n: t / n, total)

        def cat(axis, *parts):
            return _tree.tree_map(lambda *xs: jnp.concatenate(xs, axis=axis), *parts)

        if diagonal:
            yield cat(0, *(blocks[i, i] for i in range(len(rows))))
        else:
            yield cat(0, *(cat(1, *(blocks[i, j] for j in range(len(cols))))
                           for i in range(len(rows))))


def monte_carlo_kernel_stats(init_fn, apply_fn, key, x1, x2, n_samples: int,
                             get=('nngp', 'ntk'), input_shape=None, trace_axes=(-1,),
                             diagonal_axes=(), vmap_axes=None,
                             implementation=DEFAULT_NTK_IMPLEMENTATION, device_count: int = 0,
                             chunk_size: int | None = None, **apply_fn_kwargs) -> MonteCarloStats:
    """Per-entry sample mean and standard error of the mean of the empirical kernels over
    ``n_samples`` independent initialisations (the samples of `monte_carlo_kernel_fn` with the
    same ``key``, so ``mean`` equals its estimate).

    ``stderr[g] = sqrt(Σ (k_i - mean)^2 / (n - 1) / n)``, accumulated chunk by chunk with
    Chan et al.'s (1979) stable pairwise update: memory is one chunk of samples, not
    ``n_samples``.  ``input_shape`` is what ``init_fn`` gets (default ``x1.shape``);
    ``chunk_size`` samples are vmapped at a time (default: sized to a memory budget);
    ``device_count`` as in `monte_carlo_kernel_fn` (default one device).
    """
    counts, generator = _canon_n_samples(n_samples)
    if generator:
        raise InputError('monte_carlo_kernel_stats takes a single integer n_samples')
    if counts[0] < 2:
        raise InputError(f'a standard error needs n_samples >= 2, got {counts[0]}')
    names, _ = _get(get)
    sampler = _Sampler(init_fn, apply_fn, key, trace_axes, diagonal_axes, vmap_axes,
                       implementation, device_count, True, chunk_size=chunk_size,
                       input_shape=input_shape)
    *_, (n, (_, total, m2)) = sampler.run(x1, x2, names, counts, apply_fn_kwargs, True)
    mean = _tree.tree_map(lambda t: t / n, total)
    stderr = _tree.tree_map(lambda m: jnp.sqrt(m / (n - 1) / n), m2)
    return MonteCarloStats(mean, stderr, n)

