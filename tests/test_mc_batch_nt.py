"""NT drop-in behaviour of Monte-Carlo estimates and of `ntc.batch` around any kernel function
(issue 15): multi-device Monte-Carlo of conv nets with ``vmap_axes``, argument forwarding of
batched foreign kernel functions, and paired keyword arguments."""

import jax
import numpy as np
import pytest

import ntc
from ntc import stax


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.fixture(scope='module')
def conv_net():
    init_fn, apply_fn, _ = stax.serial(stax.Conv(8, (3, 3)), stax.Relu(), stax.Flatten(),
                                       stax.Dense(1))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 6, 2))
    return init_fn, apply_fn, x


def test_monte_carlo_conv_two_devices_vmap_axes(conv_net):
    """Per-example Jacobians (vmap_axes=0) of a conv net, samples sharded over two devices,
    give the estimate of one device without vmap_axes (the same samples, so equal)."""
    init_fn, apply_fn, x = conv_net
    key = jax.random.PRNGKey(0)
    get = ('nngp', 'ntk')
    ref = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4, device_count=1)(x, None, get)
    for device_count, vmap_axes in ((2, 0), (1, 0), (2, None)):
        out = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4, device_count=device_count,
                                        vmap_axes=vmap_axes)(x, None, get)
        _close(out.nngp, ref.nngp)
        _close(out.ntk, ref.ntk)
