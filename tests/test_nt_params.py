"""NT's parameter formats and names from `init_fn`, observed on neural-tangents 0.6.5: a bias
has the rank of the layer's output with 1 on every axis but the channel axis, attention keeps
its parameters in a tuple (queries, keys, values, out, b, pos_emb), and a layer's three
functions are named after it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc import stax

KEY = jax.random.PRNGKey(0)


def param_shapes(net, shape):
    _, params = net.init_fn(KEY, shape)
    return jax.tree_util.tree_map(lambda a: a.shape, params)


@pytest.mark.parametrize('net, shape, bias', [
    (stax.Dense(5, b_std=0.1), (3, 4), (1, 5)),
    (stax.Dense(5, b_std=0.1, parameterization='standard'), (3, 4), (1, 5)),
    (stax.Dense(5, b_std=0.1), (3, 2, 2, 4), (1, 1, 1, 5)),
    (stax.Dense(5, b_std=0.1, channel_axis=1), (3, 4, 2), (1, 5, 1)),
    (stax.Dense(5, b_std=0.1, channel_axis=0, batch_axis=1), (4, 3, 2), (5, 1, 1)),
    (stax.Conv(5, (2, 2), b_std=0.1), (3, 4, 4, 2), (1, 1, 1, 5)),
    (stax.Conv(5, (2,), b_std=0.1), (3, 4, 2), (1, 1, 5)),
    (stax.Conv(5, (2, 2), b_std=0.1, dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
     (3, 2, 4, 4), (1, 5, 1, 1)),
    (stax.ConvTranspose(5, (2, 2), b_std=0.1), (3, 4, 4, 2), (1, 1, 1, 5)),
])
def test_bias_has_nts_shape(net, shape, bias):
    assert param_shapes(net, shape)[1] == bias


@pytest.mark.parametrize('parameterization', ['ntk', 'standard'])
def test_dense_applies_a_bias_of_nts_shape_and_a_vector_alike(parameterization):
    net = stax.Dense(3, W_std=1.5, b_std=0.5, parameterization=parameterization)
    x = jax.random.normal(KEY, (4, 2, 6))
    _, (w, b) = net.init_fn(KEY, x.shape)
    y = net.apply_fn((w, b), x)
    scale = 1.5 / np.sqrt(6) if parameterization == 'ntk' else 1.0
    b_scale = 0.5 if parameterization == 'ntk' else 1.0
    np.testing.assert_allclose(y, scale * x @ w + b_scale * b.reshape(1, 1, 3), rtol=1e-12)
    np.testing.assert_allclose(net.apply_fn((w, b.reshape(-1)), x), y, rtol=1e-12)


def test_attention_params_are_nts_tuple():
    net = stax.GlobalSelfAttention(6, 4, 3, 2, b_std=0.1, pos_emb_type='CONCAT',
                                   n_chan_pos_emb=3)
    shapes = param_shapes(net, (3, 5, 4, 2))
    # (queries, keys, values, out, b, pos_emb); queries are the keys under linear scaling
    assert shapes == (None, (2, 5, 4), (2, 2, 3), (6, 6), (1, 1, 1, 6), (1, 5, 4, 3))
    untied = stax.GlobalSelfAttention(6, 4, 3, 2, linear_scaling=False, pos_emb_type='SUM',
                                      n_chan_pos_emb=2)
    assert param_shapes(untied, (3, 5, 2)) == ((2, 2, 4), (2, 2, 4), (2, 2, 3), (6, 6), None,
                                               (1, 5, 2))


def test_attention_pos_emb_follows_the_tensor_axes():
    """Positional embeddings are laid out as the input (batch axis 1, channel axis the
    embedding's channels), whatever the axes; transposing the input transposes nothing else."""
    kw = dict(b_std=0.1, pos_emb_type='CONCAT', n_chan_pos_emb=3)
    last = stax.GlobalSelfAttention(6, 4, 3, 2, **kw)
    first = stax.GlobalSelfAttention(6, 4, 3, 2, channel_axis=1, **kw)
    x = jax.random.normal(KEY, (3, 5, 4, 2))
    _, p = last.init_fn(KEY, x.shape)
    assert param_shapes(first, (3, 2, 5, 4))[5] == (1, 3, 5, 4)
    moved = p[:4] + (jnp.moveaxis(p[4], -1, 1), jnp.moveaxis(p[5], -1, 1))
    np.testing.assert_allclose(first.apply_fn(moved, jnp.moveaxis(x, -1, 1)),
                               jnp.moveaxis(last.apply_fn(p, x), -1, 1), rtol=1e-10)


@pytest.mark.parametrize('net, name', [
    (stax.Erf(), 'Erf'), (stax.Identity(), 'Identity'), (stax.Dense(3), 'Dense'),
    (stax.serial(stax.Dense(2), stax.Relu()), 'serial'), (stax.repeat(stax.Relu(), 2), 'repeat'),
    (stax.parallel(stax.Relu(), stax.Relu()), 'parallel'), (stax.FanOut(2), 'FanOut'),
])
def test_functions_are_named_after_the_layer(net, name):
    assert [f.__name__ for f in net] == [name] * 3


def empirical_ntk(net, x1, x2, key):
    """Θ(x1, x2) of the finite network at its initial parameters, averaged over the output's
    channel axis: Σ_θ ∂f(x1)/∂θ ∂f(x2)/∂θ by explicit Jacobians."""
    _, params = net.init_fn(key, x1.shape)
    j1, j2 = (jax.jacobian(net.apply_fn)(params, x) for x in (x1, x2))
    prods = jax.tree_util.tree_map(
        lambda a, b: jnp.einsum('ik...,jk...->ij', a.reshape(a.shape[:2] + (-1,)),
                                b.reshape(b.shape[:2] + (-1,))), j1, j2)
    out_channels = net.apply_fn(params, x1).shape[-1]
    return sum(jax.tree_util.tree_leaves(prods)) / out_channels


@pytest.mark.parametrize('s', [(1, 1), (4, 2), (3, 5)])
@pytest.mark.parametrize('conv', [False, True])
def test_standard_parameterization_gradients_give_the_analytic_ntk(s, conv):
    """A layer linear in its parameters has an empirical NTK equal to the analytic one at any
    initialisation: under the standard parameterization with `s` the weights' gradients carry
    1/sqrt(s[0]), as in NT, so the NTK's weight term is the base width fan_in / s[0]."""
    kw = dict(W_std=1.7, b_std=0.4, parameterization='standard', s=s)
    if conv:
        net = stax.serial(stax.Conv(3, (2, 2), padding='SAME', **kw), stax.Flatten())
        x1, x2 = (jax.random.normal(jax.random.PRNGKey(i), (n, 3, 4, 2)) for i, n in [(1, 2),
                                                                                     (2, 3)])
    else:
        net = stax.Dense(3, **kw)
        x1, x2 = (jax.random.normal(jax.random.PRNGKey(i), (n, 6)) for i, n in [(1, 2), (2, 3)])
    np.testing.assert_allclose(empirical_ntk(net, x1, x2, KEY), net.kernel_fn(x1, x2, 'ntk'),
                               rtol=1e-10)
