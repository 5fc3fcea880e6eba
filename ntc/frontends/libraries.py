"""`from_flax` and `from_equinox`: a module's apply function traced by `ntc.trace`, with each
parameter's initial standard deviation read from the module's initialisers.

- Flax linen: every submodule names its initialisers (`kernel_init`, `bias_init`, ...).  The
  `jax.nn.initializers.variance_scaling` family (lecun_normal, the default kernel init,
  he_normal, glorot_uniform, ...) has variance scale / fan, for every distribution (its
  truncated normal is rescaled to that variance); `normal(stddev)` has stddev²; `zeros` 0.
- Equinox: `Linear` and `Conv` draw weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  variance 1 / (3 fan_in), with fan_in the input features (times the kernel size for Conv).

flax and equinox are imported inside these functions only, so `import ntc` never needs them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from ..net import Net
from .jaxpr import Recognised, recognise


def from_flax(module, x_example, variables: Any = None, *, key: int = 0,
              W_std: float | None = None, b_std: float | None = None) -> Net:
    """The ntc `Net` of a `flax.linen` module (`module.apply(variables, x)`), with the
    parameter variances of its initialisers.  `variables` defaults to `module.init`."""
    return recognise_flax(module, x_example, variables, key=key, W_std=W_std, b_std=b_std).net


def recognise_flax(module, x_example, variables: Any = None, *, key: int = 0,
                   W_std: float | None = None, b_std: float | None = None) -> Recognised:
    """`from_flax` with the notes of `ntc.frontends.recognise`."""
    import flax.linen as nn

    if variables is None:
        variables = module.init(jax.random.PRNGKey(key), x_example)
    params = variables['params']
    others = {k: v for k, v in variables.items() if k != 'params'}
    owners = {}

    def interceptor(next_fun, args, kwargs, context):
        owners.setdefault(tuple(context.module.scope.path), context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        module.apply(variables, x_example)

    def std(path, leaf):
        names = tuple(_key_name(k) for k in path)
        owner = owners.get(names[:-1])
        init = getattr(owner, f'{names[-1]}_init', None)
        variance = None if init is None else init_variance(init, np.shape(leaf))
        return math.nan if variance is None else math.sqrt(variance)  # nan: unknown

    def apply_fn(p, x):
        return module.apply({'params': p, **others}, x)

    return recognise(apply_fn, params, x_example, param_std=std, W_std=W_std, b_std=b_std)


def from_equinox(model, x_example, *, W_std: float | None = None,
                 b_std: float | None = None) -> Net:
    """The ntc `Net` of an Equinox module applied to one example (`model(x)`), traced over the
    batch `x_example` with `jax.vmap`, with Equinox's default initial variances."""
    return recognise_equinox(model, x_example, W_std=W_std, b_std=b_std).net


def recognise_equinox(model, x_example, *, W_std: float | None = None,
                      b_std: float | None = None) -> Recognised:
    """`from_equinox` with the notes of `ntc.frontends.recognise`."""
    import equinox as eqx

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def std(path, leaf):
        owner = model
        for k in path[:-1]:
            owner = _child(owner, k)
        if isinstance(owner, eqx.nn.Linear):
            fan_in = owner.in_features if owner.in_features != 'scalar' else 1
        elif isinstance(owner, eqx.nn.Conv):
            fan_in = owner.in_channels // owner.groups * math.prod(owner.kernel_size)
        else:
            return math.nan  # unknown; an error if the parameter is a weight or bias
        return 1 / math.sqrt(3 * fan_in)

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return recognise(apply_fn, params, x_example, param_std=std, W_std=W_std, b_std=b_std)


def init_variance(init, shape: tuple[int, ...]) -> float | None:
    """The variance of the entries that `init(key, shape)` draws, read from the initialiser's
    arguments (see the module docstring); None for an initialiser not listed there."""
    if getattr(init, '__name__', '') == 'zeros':
        return 0.0
    code = getattr(init, '__code__', None)
    cells = getattr(init, '__closure__', None) or ()
    args = dict(zip(code.co_freevars, (c.cell_contents for c in cells))) if code else {}
    if {'scale', 'mode', 'in_axis', 'out_axis'} <= set(args):
        fan_in, fan_out = _fans(shape, args['in_axis'], args['out_axis'])
        fan = {'fan_in': fan_in, 'fan_out': fan_out,
               'fan_avg': (fan_in + fan_out) / 2}.get(args['mode'])
        if fan is not None:
            return float(args['scale']) / fan
    if set(args) == {'stddev', 'dtype'} or set(args) == {'stddev'}:
        return float(args['stddev']) ** 2
    return None


def _fans(shape, in_axis: int, out_axis: int) -> tuple[float, float]:
    """(fan_in, fan_out) as variance_scaling computes them: the in/out axes times the
    receptive field (every other axis)."""
    receptive = math.prod(d for i, d in enumerate(shape)
                          if i not in (in_axis % len(shape), out_axis % len(shape)))
    return shape[in_axis] * receptive, shape[out_axis] * receptive


def _key_name(k) -> str:
    for attr in ('key', 'name', 'idx'):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _child(obj, k):
    if hasattr(k, 'name'):
        return getattr(obj, k.name)
    if hasattr(k, 'key'):
        return obj[k.key]
    return obj[k.idx]
