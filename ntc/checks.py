"""Checks at the boundary of a kernel computation: inputs, memory and results.

- `as_input`: the dtype rules, applied to concrete and traced inputs alike.  Integer and bool
  inputs (raw uint8 pixels) are cast to the float dtype in use (float64 under x64, else
  float32), so that x·x cannot overflow; complex and non-numeric inputs are refused.
- `check_values`: NaN or Inf in a concrete input (entries equal to `mask_constant` excepted)
  are refused, naming the input and the first bad index.  Traced inputs are not looked at.
- `check_memory`: a concrete call whose modelled peak memory exceeds the device's free memory
  is refused with the tile size to pass to `ntc.batch`, instead of aborting in XLA's allocator.
- `check_results`: a non-finite value in a concrete result raises `NumericalError`; the caller
  passes a function that finds the first non-finite node (run only on failure).

`result_checks(False)` turns the result check off (it costs one reduction per output and a
device-to-host sync of one bool per call).
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError, NumericalError

_STATE = {'results': True}

#: calls whose modelled peak is below this many bytes never probe the device's memory
SMALL_BYTES = 2 ** 28


@contextlib.contextmanager
def result_checks(enabled: bool):
    """Within the block, check results for NaN/Inf (True, the default) or not (False)."""
    before = _STATE['results']
    _STATE['results'] = bool(enabled)
    try:
        yield
    finally:
        _STATE['results'] = before


def is_concrete(*xs) -> bool:
    """Whether the arguments (pytrees) hold values: no leaf is a tracer under jit, vmap or grad,
    so they can be inspected (checks on values are skipped otherwise)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def float_dtype():
    """The float dtype in use: float64 under jax_enable_x64, else float32."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def as_input(x, name: str):
    """`x` as a jax array of a real floating dtype: integers and bools are cast to the float
    dtype in use; complex, string and object arrays are refused."""
    if is_concrete(x) and not isinstance(x, jax.Array):
        x = np.asarray(x)
    dtype = x.dtype
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise InputError(f'the input is complex ({dtype}); kernels are defined for real inputs',
                         path=name, hint='pass the real and imaginary parts as separate '
                         'channels, e.g. np.concatenate([x.real, x.imag], axis=-1)')
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.asarray(x)
    if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        return jnp.asarray(x, dtype=float_dtype())  # uint8 pixels: x·x must not overflow
    raise InputError(f'the input has dtype {dtype}, not a real number type', path=name,
                     hint='pass a real float (or integer) array')


def check_values(x, name: str, mask_constant=None) -> None:
    """Refuse NaN or Inf in a concrete array `x`, except at entries equal to `mask_constant`
    (NT's masking marks missing entries with it, often NaN)."""
    if x is None or not is_concrete(x) or not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return
    if all_finite([x]):
        return
    bad = ~jnp.isfinite(x)
    if mask_constant is not None and is_concrete(mask_constant):
        c = jnp.asarray(mask_constant, dtype=jnp.result_type(x))
        bad = bad & ~jnp.where(jnp.isnan(c), jnp.isnan(x), x == c)
    if not bool(jnp.any(bad)):
        return
    idx = tuple(int(i) for i in np.argwhere(np.asarray(bad))[0])
    value = np.asarray(x)[idx]
    raise InputError(f'entry {list(idx)} is {value}: inputs must be finite', path=name,
                     hint='clean or impute the data, or pass mask_constant= to mark missing '
                     'entries')


def free_memory(device) -> float:
    """Bytes one call on `device` can still allocate: the device's free memory, or the host's
    available memory for a CPU device (a direct call may use all of it)."""
    stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
    if stats and 'bytes_limit' in stats:
        return float(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
    try:
        with open('/proc/meminfo') as f:
            info = dict(line.split(':', 1) for line in f)
        return float(info['MemAvailable'].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float('inf')  # unknown: do not refuse



def free_device_bytes(device) -> float:
    """Free memory one tile may use on `device`: `free_memory`, with the host's memory
    shared among the CPU devices (their tiles run at the same time)."""
    free = free_memory(device)
    free = 4e9 if math.isinf(free) else free  # unknown: a modest default
    if device.platform != 'cpu':
        return free
    return free / max(1, sum(d.platform == 'cpu' for d in jax.devices()))


def check_memory(peak_bytes, n1: int, n2: int, device) -> None:
    """Refuse an n1 × n2 call whose modelled peak memory `peak_bytes(n1, n2)` exceeds the free
    memory of `device`, suggesting a tile size for `ntc.batch` that fits.  The cost model may
    underestimate, never overestimates by much: a call is refused only when even the model says
    it cannot fit."""
    need = peak_bytes(n1, n2)
    if need <= SMALL_BYTES:
        return
    free = free_memory(device)
    if need <= free:
        return
    lo, hi = 1, max(n1, n2, 1)
    while lo < hi:  # the largest square tile that fits 3× over (XLA's temporaries)
        mid = (lo + hi + 1) // 2
        if 3 * peak_bytes(mid, mid) <= free:
            lo = mid
        else:
            hi = mid - 1
    raise InputError(f'this {n1} × {n2} kernel needs about {need / 1e9:.3g} GB at its peak but '
                     f'the device has {free / 1e9:.3g} GB free', path='kernel_fn',
                     hint=f'compute it in tiles: ntc.batch(kernel_fn, batch_size={lo})(x1, x2)')


@jax.jit
def _device_all_finite(arrays) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def all_finite(arrays: list) -> bool:
    """Whether every entry of the concrete arrays is finite: read in place on the host for CPU
    arrays (no dispatch), one fused reduction on an accelerator (one bool comes back)."""
    on_host = [a for a in arrays if not isinstance(a, jax.Array)
               or all(d.platform == 'cpu' for d in a.devices())]
    if not all(np.isfinite(np.asarray(a)).all() for a in on_host):
        return False
    rest = [a for a in arrays if not any(a is b for b in on_host)]
    return not rest or bool(_device_all_finite(rest))


def check_results(out: dict, locate=None, dtype=None) -> None:
    """Raise `NumericalError` if a concrete result in `out` ({name: array}) has a NaN or Inf.
    `locate()` returns (path, op kind) of the first non-finite node, or None."""
    if not _STATE['results']:
        return
    arrays = {k: v for k, v in out.items()
              if v is not None and is_concrete(v) and jnp.issubdtype(v.dtype, jnp.inexact)}
    if all_finite(list(arrays.values())):
        return
    names = '/'.join(k for k, v in arrays.items() if not all_finite([v]))
    where = locate() if locate is not None else None
    hint = 'check the inputs and layer parameters'
    if dtype is not None and jnp.finfo(dtype).bits < 64:
        hint = (f'computed in {jnp.dtype(dtype).name}: try jax_enable_x64 with float64 inputs, '
                f'or rescale the inputs; {hint}')
    if where is None:
        raise NumericalError(f'the {names} kernel has non-finite values', hint=hint)
    path, kind = where
    what = ('the covariance of the inputs (x1·x2 / features) overflows' if kind == 'Input'
            else f'{kind} is the first layer whose kernel has non-finite values')
    raise NumericalError(f'{what} (the result\'s {names} has NaN or Inf)', path=path, hint=hint)
