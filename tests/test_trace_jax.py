"""ntc.trace on plain JAX functions of (params, x): the recognised net equals the same net
written with ntc.stax (same IR), and so do the kernels, to float64 round-off."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntc
from ntc import stax
from ntc.frontends import TraceError, recognise


@pytest.fixture(autouse=True)
def numpy_broadcasting():
    """The functions here add biases as users write them (`x @ w + b`)."""
    with jax.numpy_rank_promotion('allow'):
        yield


def normal_params(shapes: dict, seed: int = 0) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return {k: jax.random.normal(key, s) for key, (k, s) in zip(keys, shapes.items())}


def assert_same_net(traced, written, x1, x2, get=('nngp', 'ntk')):
    """Same builder tree, same compiled plan, same kernels."""
    assert traced == written, f'\n{traced!r}\n{written!r}'
    shape = (-1,) + x1.shape[1:]
    assert ntc.compile(traced, shape).explain() == ntc.compile(written, shape).explain()
    k1 = traced.kernel_fn(x1, x2, get)
    k2 = written.kernel_fn(x1, x2, get)
    for a, b in zip(k1, k2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def conv(x, w, padding='SAME', strides=(1, 1)):
    return lax.conv_general_dilated(x, w, strides, padding,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_mlp_in_ntk_parameterisation():
    def mlp(p, x):
        h = (x @ p['w1']) * (1.5 / jnp.sqrt(3.0)) + 0.05 * p['b1']
        h = jax.nn.relu(h)
        h = (h @ p['w2']) * (1.5 / jnp.sqrt(32.0)) + 0.05 * p['b2']
        h = jax.lax.erf(h)
        return (h @ p['w3']) * (1.5 / jnp.sqrt(32.0))

    p = normal_params({'w1': (3, 32), 'b1': (32,), 'w2': (32, 32), 'b2': (32,), 'w3': (32, 2)})
    x1 = np.random.default_rng(0).standard_normal((4, 3))
    x2 = np.random.default_rng(1).standard_normal((3, 3))
    written = stax.serial(stax.Dense(32, 1.5, 0.05), stax.Relu(), stax.Dense(32, 1.5, 0.05),
                          stax.Erf(), stax.Dense(2, 1.5))
    assert_same_net(ntc.trace(mlp, p, x1), written, x1, x2)


def test_mlp_in_standard_parameterisation():
    def mlp(p, x):
        h = jax.nn.gelu(x @ p['w1'] + p['b1'], approximate=False)
        return h @ p['w2'] + p['b2']

    p = normal_params({'w1': (3, 16), 'b1': (16,), 'w2': (16, 1), 'b2': (1,)})
    x1 = np.random.default_rng(0).standard_normal((4, 3))
    std = {'w1': 2.0 / np.sqrt(3), 'b1': 0.1, 'w2': 2.0 / np.sqrt(16), 'b2': 0.1}
    net = ntc.trace(mlp, p, x1, param_std=std)
    written = stax.serial(stax.Dense(16, 2.0, 0.1, parameterization='standard'), stax.Gelu(),
                          stax.Dense(1, 2.0, 0.1, parameterization='standard'))
    assert_same_net(net, written, x1, None)


def test_cnn_with_residual_block_and_pooling():
    def cnn(p, x):
        h = jax.nn.relu(conv(x, p['k1']) + p['c1'])
        y = conv(jax.nn.relu(conv(h, p['k2'])), p['k3'])
        h = h + y
        h = lax.reduce_window(h, 0., lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4
        h = h.mean(axis=(1, 2))
        return h @ p['w']

    p = normal_params({'k1': (3, 3, 2, 8), 'c1': (8,), 'k2': (3, 3, 8, 8), 'k3': (3, 3, 8, 8),
                       'w': (8, 3)})
    std = {'k1': 1 / np.sqrt(18), 'c1': 0.0, 'k2': 1 / np.sqrt(72), 'k3': 1 / np.sqrt(72),
           'w': 1 / np.sqrt(8)}
    x1 = np.random.default_rng(0).standard_normal((2, 6, 6, 2))
    x2 = np.random.default_rng(1).standard_normal((3, 6, 6, 2))
    conv_ = dict(padding='SAME', parameterization='standard')
    written = stax.serial(
        stax.Conv(8, (3, 3), b_std=0.0, **conv_), stax.Relu(),
        stax.FanOut(2),
        stax.parallel(stax.Identity(),
                      stax.serial(stax.Conv(8, (3, 3), **conv_), stax.Relu(),
                                  stax.Conv(8, (3, 3), **conv_))),
        stax.FanInSum(),
        stax.AvgPool((2, 2), (2, 2)), stax.GlobalAvgPool(),
        stax.Dense(3, parameterization='standard'))
    assert_same_net(ntc.trace(cnn, p, x1, param_std=std), written, x1, x2)


def test_flatten_strides_valid_padding_and_sum_pool():
    def cnn(p, x):
        h = jnp.sin(conv(x, p['k1'], 'VALID', (2, 2)))
        h = lax.reduce_window(h, 0., lax.add, (1, 2, 2, 1), (1, 1, 1, 1), 'SAME')
        h = h.reshape(h.shape[0], -1)
        return h @ p['w']

    p = normal_params({'k1': (3, 3, 2, 4), 'w': (64, 2)})
    x1 = np.random.default_rng(0).standard_normal((2, 9, 9, 2))
    net = ntc.trace(cnn, p, x1, param_std=0.5)
    written = stax.serial(
        stax.Conv(4, (3, 3), (2, 2), 'VALID', W_std=_w(0.5, 18), parameterization='standard'),
        stax.Sin(), stax.SumPool((2, 2), (1, 1), 'SAME'), stax.Flatten(),
        stax.Dense(2, W_std=_w(0.5, 64), parameterization='standard'))
    assert_same_net(net, written, x1, None)


def _w(sigma, fan_in):
    return float(f"{sigma * np.sqrt(fan_in):.12e}")


def test_concat_product_and_layer_norm():
    def net_fn(p, x):
        a = x @ p['wa']
        b = x @ p['wb']
        h = jnp.concatenate([a, b], axis=-1)
        m = h.mean(-1, keepdims=True)
        v = ((h - m) ** 2).mean(-1, keepdims=True)
        h = jnp.cos((h - m) / jnp.sqrt(v + 1e-6))
        c = h @ p['wc']
        d = h @ p['wd']
        return (c * d) @ p['wo']

    p = normal_params({'wa': (3, 8), 'wb': (3, 8), 'wc': (16, 8), 'wd': (16, 8), 'wo': (8, 1)})
    x1 = np.random.default_rng(0).standard_normal((4, 3))
    net = ntc.trace(net_fn, p, x1, param_std=lambda path, leaf: 1 / np.sqrt(leaf.shape[0]))
    written = stax.serial(
        stax.FanOut(2),
        stax.parallel(stax.Dense(8, parameterization='standard'),
                      stax.Dense(8, parameterization='standard')),
        stax.FanInConcat(),
        stax.LayerNorm(eps=1e-6), stax.Cos(),
        stax.FanOut(2),
        stax.parallel(stax.Dense(8, parameterization='standard'),
                      stax.Dense(8, parameterization='standard')),
        stax.FanInProd(),
        stax.Dense(1, parameterization='standard'))
    assert_same_net(net, written, x1, None)


@pytest.mark.parametrize('phi, layer', [
    (jax.nn.relu, stax.Relu()),
    (lambda t: jax.nn.leaky_relu(t, 0.2), stax.LeakyRelu(0.2)),
    (jnp.abs, stax.Abs()),
    (lambda t: jax.nn.gelu(t, approximate=True), stax.Gelu(approximate=True)),
    (lambda t: jax.nn.gelu(t, approximate=False), stax.Gelu()),
    (lax.erf, stax.Erf()),
    (lambda t: 2 * lax.erf(t) + 0.1, stax.Erf(2.0, 1.0, 0.1)),
    (jnp.sin, stax.Sin()), (jnp.cos, stax.Cos()), (jnp.sign, stax.Sign()),
    (lambda t: 0.5 * jnp.exp(t), stax.Exp(0.5, 1.0)),
    (lambda t: jnp.maximum(t, 0.0), stax.Relu()),
])
def test_activations_with_a_closed_form(phi, layer):
    def f(p, x):
        return phi(x @ p['w'])

    net = ntc.trace(f, normal_params({'w': (3, 4)}), np.ones((2, 3)))
    assert net == stax.serial(stax.Dense(4, W_std=_w(1, 3),
                                         parameterization='standard'), layer)


def test_tanh_goes_through_quadrature_with_a_note():
    def f(p, x):
        return jnp.tanh(x @ p['w']) @ p['v']

    p = normal_params({'w': (3, 8), 'v': (8, 1)})
    x1 = np.random.default_rng(0).standard_normal((3, 3))
    found = recognise(f, p, x1, param_std=0.5)
    (layer,) = [c for c in found.net.children if c.op.kind == 'ElementwiseNumerical']
    assert any('quadrature' in n for n in found.notes)
    assert any('standard parameterisation' in n for n in found.notes)
    want = stax.serial(stax.Dense(8, _w(0.5, 3), parameterization='standard'),
                       stax.ElementwiseNumerical(jnp.tanh, 32),
                       stax.Dense(1, _w(0.5, 8), parameterization='standard'))
    k1 = found.net.kernel_fn(x1, None, 'nngp')
    k2 = want.kernel_fn(x1, None, 'nngp')
    np.testing.assert_allclose(k1, k2, rtol=1e-10)


def test_overrides_and_float32_constants():
    def f(p, x):
        return (x @ p['w']) * np.float32(1.3 / np.sqrt(3.0))

    net = ntc.trace(f, normal_params({'w': (3, 4)}), np.ones((2, 3)))
    assert net == stax.serial(stax.Dense(4, 1.3))
    net = ntc.trace(f, normal_params({'w': (3, 4)}), np.ones((2, 3)), W_std=2.0)
    assert net == stax.serial(stax.Dense(4, 2.0))


def test_a_mixed_parameterisation_is_an_error():
    def f(p, x):
        return (x @ p['w']) * 0.5

    with pytest.raises(TraceError, match='neither the standard'):
        ntc.trace(f, normal_params({'w': (3, 4)}), np.ones((2, 3)), param_std=0.3)


def test_import_ntc_needs_neither_flax_nor_equinox():
    code = ('import sys, ntc; '
            'print(sorted(m for m in ("flax", "equinox") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=Path(ntc.__file__).parent.parent, check=True).stdout
    assert out.strip() == '[]'
