"""`Conv(out_chan, filter_shape=())` on an input without spatial axes (after Flatten or global
pooling) is, as in neural_tangents, a fully connected layer over the channels: its kernel is
Dense's, in both parameterizations."""

import jax
import numpy as np
import pytest

from ntc import stax
from ntc.errors import ShapeError

X1 = np.random.RandomState(0).randn(3, 4, 4, 2)
X2 = np.random.RandomState(1).randn(2, 4, 4, 2)


def body(head):
    return stax.serial(stax.Conv(5, (2, 2), W_std=1.3, b_std=0.2), stax.Relu(), head)


@pytest.mark.parametrize('parameterization', ['ntk', 'standard'])
@pytest.mark.parametrize('head', [stax.Flatten(), stax.GlobalAvgPool()])
def test_kernel_equals_dense(head, parameterization):
    def net(layer):
        return stax.serial(body(head), layer(3, W_std=1.1, b_std=0.1,
                                             parameterization=parameterization),
                           stax.Relu(), layer(2, parameterization=parameterization))

    conv = net(lambda n, **kw: stax.Conv(n, (), **kw)).kernel_fn(X1, X2, ('nngp', 'ntk'))
    dense = net(lambda n, **kw: stax.Dense(n, **kw)).kernel_fn(X1, X2, ('nngp', 'ntk'))
    for a, b in zip(conv, dense):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_finite_network_maps_channels():
    init, apply, _ = stax.serial(body(stax.Flatten()), stax.Conv(3, ()))
    out_shape, params = init(jax.random.PRNGKey(0), X1.shape)
    y = apply(params, X1)
    assert out_shape == (3, 3) and y.shape == (3, 3)  # NT keeps the input's batch size


def test_a_spatial_filter_still_needs_spatial_axes():
    with pytest.raises(ShapeError, match=r"filter_shape=\(\)"):
        stax.serial(body(stax.Flatten()), stax.Conv(3, (2,))).kernel_fn(X1, None, 'nngp')
