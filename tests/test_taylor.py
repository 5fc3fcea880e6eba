"""ntc.runtime.taylor: `linearize` and `taylor_expand` in the parameters."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc.errors import InputError
from ntc.runtime import taylor
from ntc.runtime.taylor import linearize, taylor_expand


def poly(p, x, shift=0.):
    """Cubic in the parameters: a³ x + a b x² + b² + shift."""
    return p['a'] ** 3 * x + p['a'] * p['b'] * x ** 2 + p['b'] ** 2 + shift


P0 = {'a': jnp.array(0.7), 'b': jnp.array(-1.2)}
P1 = {'a': jnp.array(1.1), 'b': jnp.array(-0.5)}
X = jnp.array([0.5, -2., 3.])


def test_taylor_polynomials_of_a_cubic_are_exact_term_by_term():
    da, db = P1['a'] - P0['a'], P1['b'] - P0['b']
    a, b = P0['a'], P0['b']
    order = [
        poly(P0, X, 1.),                                                     # f
        3 * a ** 2 * da * X + (da * b + a * db) * X ** 2 + 2 * b * db,       # D f
        (6 * a * da ** 2 * X + 2 * da * db * X ** 2 + 2 * db ** 2) / 2,      # D² f / 2
        6 * da ** 3 * X / 6,                                                 # D³ f / 6
    ]
    for degree in range(5):
        want = sum(order[:degree + 1])
        got = taylor_expand(poly, P0, degree)(P1, X, shift=1.)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(taylor_expand(poly, P0, 3)(P1, X), poly(P1, X), rtol=1e-12)


def test_linearize_equals_degree_one_taylor_expansion():
    rng = np.random.RandomState(0)
    params = [{'w': jnp.asarray(rng.randn(3, 4))}, {'w': jnp.asarray(rng.randn(4, 2))}]
    moved = jax.tree_util.tree_map(lambda w: w + 0.3 * jnp.asarray(rng.randn(*w.shape)), params)
    x = jnp.asarray(rng.randn(5, 3))

    def f(p, x, scale=1.):
        return {'out': scale * jnp.tanh(x @ p[0]['w']) @ p[1]['w'], 'aux': jnp.sum(p[0]['w'])}

    lin = linearize(f, params)(moved, x, scale=2.)
    tay = taylor_expand(f, params, 1)(moved, x, scale=2.)
    for k in ('out', 'aux'):
        np.testing.assert_allclose(lin[k], tay[k], rtol=1e-13)
    # at the expansion point both equal f
    np.testing.assert_allclose(linearize(f, params)(params, x)['out'], f(params, x)['out'])
    # the linear model is linear: f_lin(p0 + 2d) - f0 = 2 (f_lin(p0 + d) - f0)
    twice = jax.tree_util.tree_map(lambda a, b: 2 * b - a, params, moved)
    f0 = f(params, x)['out']
    np.testing.assert_allclose(linearize(f, params)(twice, x)['out'] - f0,
                               2 * (linearize(f, params)(moved, x)['out'] - f0), rtol=1e-12)


def test_second_order_tracks_a_trained_wide_network_better_than_first_order():
    """Wide networks stay near their linearisation under gradient descent (Lee et al. 2019);
    the quadratic model captures part of the remaining change."""
    width, w_std, b_std = 512, 1.5, 0.2
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {'w1': jax.random.normal(keys[0], (2, width)),
              'b1': jax.random.normal(keys[1], (width,)),
              'w2': jax.random.normal(keys[2], (width, 1)),
              'b2': jax.random.normal(keys[3], (1,))}

    def net(p, x):
        h = jax.scipy.special.erf(w_std * x @ p['w1'] / math.sqrt(2) + b_std * p['b1'][None])
        return w_std * h @ p['w2'] / math.sqrt(width) + b_std * p['b2'][None]

    rng = np.random.RandomState(1)
    x, y, x_test = rng.randn(8, 2), rng.randn(8, 1), rng.randn(20, 2)
    grad = jax.jit(jax.grad(lambda p: 0.5 * jnp.mean((net(p, x) - y) ** 2)))
    trained = params
    for _ in range(10):
        trained = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, trained, grad(trained))
    f_true = net(trained, x_test)
    moved = np.abs(f_true - net(params, x_test)).max()
    err1 = np.abs(f_true - linearize(net, params)(trained, x_test)).max()
    err2 = np.abs(f_true - taylor_expand(net, params, 2)(trained, x_test)).max()
    assert moved > 0.1                   # training changed the function
    assert err1 < 0.05 * moved           # ... mostly linearly (measured: 1 %)
    assert err2 < 0.5 * err1             # ... and the quadratic term explains most of the rest
    #                                      (measured: err2 = 0.14 err1)


def test_bad_arguments():
    with pytest.raises(InputError, match='degree'):
        taylor_expand(poly, P0, -1)
    with pytest.raises(InputError, match='degree'):
        taylor_expand(poly, P0, 1.5)
    with pytest.raises(InputError, match='structure'):
        linearize(poly, P0)({'a': 1.}, X)


def test_signatures_match_neural_tangents():
    # neural_tangents 0.6.5: linearize(f, params), taylor_expand(f, params, degree)
    assert list(inspect.signature(taylor.linearize).parameters) == ['f', 'params']
    assert list(inspect.signature(taylor.taylor_expand).parameters) == ['f', 'params', 'degree']
    f_lin = linearize(poly, P0)
    assert [p.kind for p in inspect.signature(f_lin).parameters.values()] == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD]
