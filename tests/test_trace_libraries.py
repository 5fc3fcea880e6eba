"""ntc.from_flax and ntc.from_equinox: a small MLP, a CNN with pooling and a residual block,
traced from each library, give the same net (and kernels) as the same net written with stax,
with the parameter variances of the libraries' own initialisers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import stax

nn = pytest.importorskip('flax.linen')
eqx = pytest.importorskip('equinox')

STD = dict(parameterization='standard')
RNG = np.random.default_rng(0)
X_VEC1, X_VEC2 = RNG.standard_normal((4, 5)), RNG.standard_normal((3, 5))
X_IMG1, X_IMG2 = RNG.standard_normal((2, 6, 6, 3)), RNG.standard_normal((3, 6, 6, 3))


def digits(v: float) -> float:
    """As the tracer writes an inferred std: 13 significant digits."""
    return float(f'{v:.12e}')


def assert_same_net(traced, written, x1, x2):
    assert traced == written, f'\n{traced!r}\n{written!r}'
    shape = (-1,) + x1.shape[1:]
    assert ntc.compile(traced, shape).explain() == ntc.compile(written, shape).explain()
    for a, b in zip(traced.kernel_fn(x1, x2, ('nngp', 'ntk')),
                    written.kernel_fn(x1, x2, ('nngp', 'ntk'))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- flax


class FlaxMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.gelu(nn.Dense(16, kernel_init=nn.initializers.he_normal())(x))
        return nn.Dense(2, use_bias=False)(x)


class FlaxCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), padding='SAME')(x)
        x = x + nn.Conv(8, (3, 3), padding='SAME')(nn.relu(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.LayerNorm(use_scale=False, use_bias=False)(x)
        x = jnp.mean(jax.lax.erf(x), axis=(1, 2))
        return nn.Dense(3)(x)


def test_flax_mlp():
    net = ntc.from_flax(FlaxMLP(), X_VEC1)
    written = stax.serial(stax.Dense(16, 1.0, 0.0, **STD), stax.Relu(),
                          stax.Dense(16, digits(math.sqrt(2)), 0.0, **STD),
                          stax.Gelu(approximate=True),
                          stax.Dense(2, 1.0, **STD))
    assert_same_net(net, written, X_VEC1, X_VEC2)


def test_flax_cnn_with_pooling_residual_and_layer_norm():
    net = ntc.from_flax(FlaxCNN(), X_IMG1)
    conv = dict(W_std=1.0, b_std=0.0, padding='SAME', **STD)
    written = stax.serial(
        stax.Conv(8, (3, 3), **conv),
        stax.FanOut(2),
        stax.parallel(stax.Identity(), stax.serial(stax.Relu(), stax.Conv(8, (3, 3), **conv))),
        stax.FanInSum(),
        stax.AvgPool((2, 2), (2, 2)), stax.LayerNorm(eps=1e-6), stax.Erf(), stax.GlobalAvgPool(),
        stax.Dense(3, 1.0, 0.0, **STD))
    assert_same_net(net, written, X_IMG1, X_IMG2)


def test_flax_explicit_std_overrides():
    net = ntc.from_flax(FlaxMLP(), X_VEC1, W_std=1.5, b_std=0.1)
    assert net == stax.serial(stax.Dense(16, 1.5, 0.1, **STD), stax.Relu(),
                              stax.Dense(16, 1.5, 0.1, **STD), stax.Gelu(approximate=True),
                              stax.Dense(2, 1.5, **STD))


# ----------------------------------------------------------------------------- equinox


class EqxMLP(eqx.Module):
    layers: list

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.layers = [eqx.nn.Linear(5, 16, key=k1), eqx.nn.Linear(16, 2, key=k2)]

    def __call__(self, x):
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


class EqxCNN(eqx.Module):
    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.c1 = eqx.nn.Conv2d(3, 8, 3, padding=1, key=k1)
        self.c2 = eqx.nn.Conv2d(8, 8, 3, padding=1, key=k2)
        self.out = eqx.nn.Linear(8, 2, key=k3)

    def __call__(self, x):
        h = self.c1(x)
        h = h + self.c2(jax.nn.relu(h))
        h = jnp.mean(jnp.sin(h), axis=(1, 2))
        return self.out(h)


def test_equinox_mlp():
    net = ntc.from_equinox(EqxMLP(jax.random.PRNGKey(0)), X_VEC1)
    w = digits(1 / math.sqrt(3))
    written = stax.serial(stax.Dense(16, w, digits(1 / math.sqrt(15)), **STD), stax.Relu(),
                          stax.Dense(2, w, digits(1 / math.sqrt(48)), **STD))
    assert_same_net(net, written, X_VEC1, X_VEC2)


def test_equinox_cnn_channels_first_with_residual_block():
    x1, x2 = X_IMG1.transpose(0, 3, 1, 2), X_IMG2.transpose(0, 3, 1, 2)
    net = ntc.from_equinox(EqxCNN(jax.random.PRNGKey(0)), x1)
    w = digits(1 / math.sqrt(3))
    nchw = dict(padding='SAME', dimension_numbers=('NCHW', 'OIHW', 'NCHW'), **STD)
    written = stax.serial(
        stax.Conv(8, (3, 3), W_std=w, b_std=digits(1 / math.sqrt(81)), **nchw),
        stax.FanOut(2),
        stax.parallel(stax.Identity(),
                      stax.serial(stax.Relu(), stax.Conv(8, (3, 3), W_std=w,
                                                         b_std=digits(1 / math.sqrt(216)),
                                                         **nchw))),
        stax.FanInSum(), stax.Sin(), stax.GlobalAvgPool(channel_axis=1),
        stax.Dense(2, w, digits(1 / math.sqrt(24)), **STD))
    assert_same_net(net, written, x1, x2)


# ----------------------------------------------------------------------------- flax.nnx


def test_flax_nnx_mlp_with_explicit_variances():
    """flax.nnx modules keep no initialisers (nnx.Linear stores only its arrays), so there is
    no `from_nnx`: `ntc.trace` of the merged module takes the variances explicitly."""
    nnx = pytest.importorskip('flax.nnx')

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(5, 16, rngs=rngs)
            self.out = nnx.Linear(16, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x)))

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    assert not hasattr(nnx.merge(graphdef, state).hidden, 'kernel_init')

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    net = ntc.trace(apply, state, X_VEC1, W_std=1.0, b_std=0.0)  # nnx's defaults: lecun, zeros
    written = stax.serial(stax.Dense(16, 1.0, 0.0, **STD), stax.Relu(),
                          stax.Dense(2, 1.0, 0.0, **STD))
    assert_same_net(net, written, X_VEC1, X_VEC2)
