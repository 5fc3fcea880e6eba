"""`predict.gradient_descent`'s predict_fn under `jax.jit` with traced times `t` (NT allows it):
the same values as with concrete times, for a scalar and for an array of times in any order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc import predict, stax

RS = np.random.RandomState(0)
X, Y, XT = RS.randn(6, 3), RS.randn(6, 2), RS.randn(4, 3)
_, _, KFN = stax.serial(stax.Dense(8, 1.2, 0.1), stax.Relu(), stax.Dense(2))
K, KT = KFN(X, None, 'ntk'), KFN(XT, X, 'ntk')


def loss(fx, y_hat):
    return 0.5 * jnp.mean((fx - y_hat) ** 2)


@pytest.mark.parametrize('t', [2.0, np.array([3.0, 0.0, 1.5, 1.5])])
def test_traced_times_give_the_concrete_values(t):
    fn = predict.gradient_descent(loss, K, Y, learning_rate=0.5)
    call = lambda tt: fn(tt, np.zeros_like(Y), np.zeros((4, 2)), KT)  # noqa: E731
    concrete = call(t)
    traced = jax.jit(call)(jnp.asarray(t))
    for a, b in zip(traced, concrete):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    # t = 0 is the initial state
    if np.ndim(t):
        np.testing.assert_allclose(traced[0][1], 0, atol=1e-12)
