"""Layer cases NT 0.6.5 accepts that ntc used to refuse (found by NT's own suite, numbers
checked against NT with the bench kit's side_by_side): `pattern=(None, None)`, a `Conv` with
`filter_shape=()` after `Flatten` on an image input, and global pooling of an input without
spatial axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc import stax

X1 = jnp.asarray(np.sin(np.arange(2 * 5 * 6 * 3).reshape(2, 5, 6, 3) * 0.37))
X2 = jnp.asarray(np.cos(np.arange(3 * 5 * 6 * 3).reshape(3, 5, 6, 3) * 0.21))
GET = ('nngp', 'ntk', 'cov1')


def close(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('x2', [None, X2])
def test_pattern_none_pair_is_no_aggregation(x2):
    net = stax.serial(stax.Conv(3, (2, 2), padding='SAME'), stax.Aggregate(), stax.Abs())
    kernel_fn = stax.serial(net, net).kernel_fn
    close(kernel_fn(X1, x2, GET, pattern=(None, None)), kernel_fn(X1, x2, GET))
    params = stax.Aggregate().init_fn(jax.random.PRNGKey(0), X1.shape)[1]
    np.testing.assert_array_equal(stax.Aggregate().apply_fn(params, X1, pattern=None), X1)


@pytest.mark.parametrize('x2', [None, X2])
@pytest.mark.parametrize('diagonal_batch', [True, False])
def test_conv_without_filter_after_flatten_of_an_image(x2, diagonal_batch):
    """The input's axes come from the layers reading it up to Flatten, not from a Conv after
    it: Conv(c, ()) on the flattened (N, C) is a Dense layer."""
    def net(affine):
        return stax.serial(stax.Flatten(), affine(1.3), stax.Relu(), affine(0.8), stax.Erf())

    conv = net(lambda w: stax.Conv(1, (), W_std=w, b_std=0.1, padding='SAME'))
    dense = net(lambda w: stax.Dense(1, W_std=w, b_std=0.1))
    close(conv.kernel_fn(X1, x2, GET, diagonal_batch=diagonal_batch),
          dense.kernel_fn(X1, x2, GET, diagonal_batch=diagonal_batch))


@pytest.mark.parametrize('pool', [stax.GlobalAvgPool, stax.GlobalSumPool])
def test_global_pool_without_spatial_axes_passes_through(pool):
    _, _, with_pool = stax.serial(stax.Flatten(), stax.Dense(2, 1.5, 0.1), pool(), stax.Relu())
    _, _, without = stax.serial(stax.Flatten(), stax.Dense(2, 1.5, 0.1), stax.Relu())
    close(with_pool(X1, X2, GET), without(X1, X2, GET))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    np.testing.assert_allclose(pool().apply_fn((), x), x)
