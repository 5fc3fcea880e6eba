"""What ntc.trace cannot recognise is a one-line TraceError (an NtcError) naming the jaxpr
equation, its primitive and the user's source line, with a hint."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntc
from ntc.frontends import TraceError

X = np.random.default_rng(0).standard_normal((2, 6, 6, 3))
P = {'k': jnp.ones((3, 3, 3, 4)), 'w': jnp.ones((4, 2))}


def conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def line_of(marker: str, fn) -> str:
    """`file:line` of the source line of `fn` holding `marker`."""
    fn = inspect.unwrap(fn)
    lines, start = inspect.getsourcelines(fn)
    (i,) = [i for i, text in enumerate(lines) if marker in text]
    return f'{inspect.getsourcefile(fn)}:{start + i}'


def raises(fn, x=X, params=P, **kwargs) -> TraceError:
    with pytest.raises(TraceError) as info:
        ntc.trace(fn, params, x, **kwargs)
    err = info.value
    assert isinstance(err, ntc.NtcError) and '\n' not in str(err) and err.hint
    return err


def test_max_pooling():
    def f(p, x):
        h = jax.nn.relu(conv(x, p['k']))
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')  # max
        return h.mean(axis=(1, 2)) @ p['w']

    err = raises(f)
    assert 'reduce_window_max' in str(err) and 'equation' in str(err)
    assert err.path.startswith(line_of('# max', f))
    assert 'monte_carlo_kernel_fn' in err.hint


def test_global_max_pooling():
    def f(p, x):
        return jax.nn.relu(conv(x, p['k'])).max(axis=(1, 2)) @ p['w']

    err = raises(f)
    assert 'reduce_max' in str(err) and 'global max pooling' in str(err)


def test_batch_norm_in_training_mode():
    def f(p, x):
        h = conv(x, p['k'])
        h = (h - h.mean(axis=(0, 1, 2), keepdims=True))  # batch norm
        return jax.nn.relu(h).mean(axis=(1, 2)) @ p['w']

    err = raises(f)
    assert 'batch' in str(err) and err.path.startswith(line_of('# batch norm', f))


def test_batch_norm_with_running_statistics():
    def f(p, x):
        h = conv(x, p['k'])
        h = (h - p['mean'][None, None, None]) * p['scale']  # running stats
        return jax.nn.relu(h).mean(axis=(1, 2)) @ p['w']

    params = dict(P, mean=jnp.zeros(4), scale=jnp.ones((1, 1, 1, 4)))
    err = raises(f, params=params)
    assert 'batch norm' in str(err) and err.path.startswith(line_of('# running stats', f))


def test_data_dependent_branch_with_lax_cond():
    def f(p, x):
        h = conv(x, p['k']).mean(axis=(1, 2))
        h = lax.cond(h.sum() > 0, jnp.sin, jnp.cos, h)  # branch
        return h @ p['w']

    err = raises(f)
    assert 'cond' in str(err) and 'data-dependent' in str(err)
    assert err.path.startswith(line_of('# branch', f))


def test_data_dependent_python_branch():
    def f(p, x):
        if x.sum() > 0:
            return x
        return -x

    err = raises(f)
    assert 'branches on the value of its input' in str(err)


def test_unknown_primitive():
    def f(p, x):
        h = jnp.cumsum(conv(x, p['k']), axis=1)  # cumsum
        return h.mean(axis=(1, 2)) @ p['w']

    err = raises(f)
    assert 'cumsum' in str(err) and err.path.startswith(line_of('# cumsum', f))


def test_flax_batch_norm_and_max_pool():
    nn = pytest.importorskip('flax.linen')

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=True)(x)  # flax batch norm
            return nn.Dense(2)(x.mean(axis=(1, 2)))

    class Pool(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            x = nn.max_pool(x, (2, 2))  # flax max pool
            return nn.Dense(2)(x.mean(axis=(1, 2)))

    with pytest.raises(TraceError, match='batch norm') as info:
        ntc.from_flax(Net(), X)
    assert info.value.path.startswith(line_of('# flax batch norm', Net.__call__))
    with pytest.raises(TraceError, match='max') as info:
        ntc.from_flax(Pool(), X)
    assert info.value.path.startswith(line_of('# flax max pool', Pool.__call__))
