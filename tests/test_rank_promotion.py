"""ntc under `jax_numpy_rank_promotion='raise'` (set by conftest for the whole suite, as NT's
tests and careful users do): the computations that used to broadcast arrays of different rank
implicitly run, and give the same numbers as with implicit rank promotion allowed.

Each case runs first under 'raise' (so nothing traced under 'allow' is reused from a cache),
then again under 'allow' as the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import erf

from ntc import stax
from ntc.runtime import predict
from ntc.runtime.monte_carlo import monte_carlo_kernel_stats


def _under_raise_and_allow(fn):
    """(fn() under 'raise', fn() under 'allow'), as numpy pytrees."""
    assert jax.config.jax_numpy_rank_promotion == 'raise', 'conftest turns the flag on'
    strict = jax.tree_util.tree_map(np.asarray, fn())
    with jax.numpy_rank_promotion('allow'):
        loose = jax.tree_util.tree_map(np.asarray, fn())
    return strict, loose


def _assert_identical(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _data(n_train=5, n_test=3, dim=4, channels=2):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x_train = jax.random.normal(k1, (n_train, dim))
    x_test = jax.random.normal(k2, (n_test, dim))
    y_train = jax.random.normal(k3, (n_train, channels))
    return x_train, x_test, y_train


def _erf_net():
    return stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1))


TIMES = [np.array([0.5, 2.0, 10.0]), np.array([[0.0, 1.0], [3.0, np.inf]])]


@pytest.mark.parametrize('t', TIMES, ids=['t-1d', 't-2d'])
@pytest.mark.parametrize('with_test', [True, False], ids=['x_test', 'train'])
def test_ensemble_times_and_covariance(t, with_test):
    """The issue's crash: an array of times with compute_cov=True ((6, 6) + (2, 6, 6))."""
    x_train, x_test, y_train = _data()
    _, _, kernel_fn = _erf_net()

    def run():
        fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train,
                                                   diag_reg=1e-4)
        return fn(t, x_test if with_test else None, ('nngp', 'ntk'), compute_cov=True)

    strict, loose = _under_raise_and_allow(run)
    assert strict.ntk.covariance.shape == t.shape + (3 if with_test else 5,) * 2
    _assert_identical(strict, loose)


@pytest.mark.parametrize('t', TIMES, ids=['t-1d', 't-2d'])
def test_gradient_descent_mse_times(t):
    """Closed-form MSE dynamics at an array of times, train and test outputs."""
    x_train, x_test, y_train = _data()
    _, _, kernel_fn = _erf_net()
    k_dd = kernel_fn(x_train, None, 'ntk')
    k_td = kernel_fn(x_test, x_train, 'ntk')
    fx_train_0 = 0.1 * jnp.ones_like(y_train)
    fx_test_0 = -0.2 * jnp.ones((3, 2))

    def run():
        fn = predict.gradient_descent_mse(k_dd, y_train, learning_rate=0.5, diag_reg=1e-4)
        return fn(t, fx_train_0, fx_test_0, k_td)

    strict, loose = _under_raise_and_allow(run)
    assert strict[0].shape == t.shape + y_train.shape
    assert strict[1].shape == t.shape + (3, 2)
    _assert_identical(strict, loose)


def test_elementwise_numerical_kernel():
    """The quadrature of ElementwiseNumerical adds (deg, N1, N2) nodes to (N1, N2) arrays."""
    x_train, x_test, _ = _data(n_train=6)
    _, _, kernel_fn = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1),
                                  stax.ElementwiseNumerical(fn=erf, deg=16), stax.Dense(1))

    strict, loose = _under_raise_and_allow(lambda: kernel_fn(x_test, x_train, ('nngp', 'ntk')))
    assert strict.nngp.shape == (3, 6)
    _assert_identical(strict, loose)


def test_monte_carlo_stats():
    """The chunk's second moment subtracts the (N1, N2) chunk mean from (chunk, N1, N2)."""
    x_train, x_test, _ = _data()
    init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(1))

    def run():
        stats = monte_carlo_kernel_stats(init_fn, apply_fn, jax.random.PRNGKey(1), x_test,
                                         x_train, 4, get='nngp', chunk_size=2)
        return stats.mean, stats.stderr

    strict, loose = _under_raise_and_allow(run)
    _assert_identical(strict, loose)


def test_dropout_on_full_spatial_covariances():
    """Dropout's self-pair mask on a FULL spatial covariance: (N, N, 1, 1) times (a, a')."""
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 2))
    _, _, kernel_fn = stax.serial(stax.Conv(8, (3, 3), padding='SAME'),
                                  stax.Dropout(0.8, mode='train'),
                                  stax.Conv(8, (3, 3), padding='SAME'), stax.Relu(),
                                  stax.GlobalAvgPool(), stax.Dense(1))

    strict, loose = _under_raise_and_allow(lambda: kernel_fn(x, None, ('nngp', 'ntk')))
    assert strict.nngp.shape == (3, 3)
    _assert_identical(strict, loose)
