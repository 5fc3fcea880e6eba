"""`predict.gradient_descent_mse_ensemble` with keyword arguments for the kernel function given
for the train set and again for the test set, as NT's code does: equal values (two copies of an
empirical kernel's nested `params`) are the same argument; different ones are refused."""

import jax
import numpy as np
import pytest

import ntc
from ntc import predict, stax
from ntc.errors import InputError


@pytest.fixture(scope='module')
def setup():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    r = np.random.RandomState(0)
    x_train, x_test, y_train = r.randn(6, 3), r.randn(4, 3), r.randn(6, 1)
    kernel_fn = ntc.empirical_kernel_fn(apply_fn)

    def params(seed):
        return init_fn(jax.random.PRNGKey(seed), x_train.shape)[1]
    return kernel_fn, params, x_train, x_test, y_train


def test_equal_copies_of_params_are_one_argument(setup):
    kernel_fn, params, x_train, x_test, y_train = setup
    shared = params(0)
    same = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4,
                                                 params=shared)
    expected = same(x_test=x_test, get='ntk', compute_cov=True, params=shared)
    copies = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4,
                                                   params=params(0))
    got = copies(x_test=x_test, get='ntk', compute_cov=True, params=params(0))
    np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(got.covariance, expected.covariance, rtol=1e-12)


def test_different_params_for_train_and_test_are_refused(setup):
    kernel_fn, params, x_train, x_test, y_train = setup
    fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4,
                                               params=params(0))
    with pytest.raises(InputError, match="keyword 'params'"):
        fn(x_test=x_test, get='ntk', params=params(1))
