"""`ntc.batch` of kernel functions that take NT's arguments positionally, as NT's `batch` does:
an empirical NTK function called as `batched(x1, x2, params)` (no `get`: `params` comes third)
gives the un-tiled kernel, whatever output axes its `trace_axes` / `diagonal_axes` leave."""

import jax
import numpy as np
import pytest

import ntc
from ntc import stax


@pytest.fixture(scope='module')
def net():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(5), stax.Relu(), stax.Dense(3))
    x1 = jax.random.normal(jax.random.PRNGKey(1), (7, 4, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (5, 4, 2))
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    return apply_fn, params, x1, x2


@pytest.mark.parametrize('trace_axes, diagonal_axes, shape', [
    ((-1,), (1,), (4,)),          # (N1, N2, 4): one diagonal axis left
    ((), (1, -1), (4, 3)),        # two diagonal axes
    ((1, -1), (), ()),            # every non-batch axis traced: (N1, N2)
])
@pytest.mark.parametrize('same', [True, False])
def test_empirical_ntk_with_positional_params(net, trace_axes, diagonal_axes, shape, same):
    apply_fn, params, x1, x2 = net
    x2 = None if same else x2
    ntk_fn = ntc.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                                  vmap_axes=0)
    expected = ntk_fn(x1, x2, params)
    got = ntc.batch(ntk_fn, batch_size=3, device_count=0)(x1, x2, params)
    n2 = x1.shape[0] if same else x2.shape[0]
    assert got.shape == (x1.shape[0], n2) + shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_empirical_kernel_with_positional_get_and_params(net):
    """An empirical kernel_fn's `get` in third place is still read as `get`."""
    apply_fn, params, x1, x2 = net
    kernel_fn = ntc.empirical_kernel_fn(apply_fn, vmap_axes=0)
    expected = kernel_fn(x1, x2, 'ntk', params)
    got = ntc.batch(kernel_fn, batch_size=2)(x1, x2, 'ntk', params)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
