"""ntc.batch reads the output layout and the batch axis from the plan, never guesses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.runtime.batching import batch
from ntc.runtime.empirical import empirical_kernel_fn

RNG = np.random.RandomState(0)
LOCAL = stax.serial(stax.ConvLocal(2, (2, 2), padding='SAME', W_std=1.3, b_std=0.2), stax.Relu(),
                    stax.ConvLocal(1, (2, 2)))


@pytest.mark.parametrize('hw', [(4, 3), (3, 3)])
def test_diag_spatial_output_is_mirrored_by_batch_axes_only(hw):
    # ConvLocal keeps a DIAG spatial covariance: the output is (N1, N2, H', W'), no pairs.
    # Mirroring it as pairs crashed for H != W and swapped H' and W' silently for H = W.
    x = RNG.randn(5, *hw, 2)
    plan = ntc.compile(LOCAL, x.shape, ('nngp', 'ntk'))
    assert plan.graph.node(plan.graph.output).cov.spatial == 'DIAG'
    want = LOCAL.kernel_fn(x, None, ('nngp', 'ntk'))
    fn = batch(LOCAL.kernel_fn, 2, progress=False)
    got = fn(x, None, ('nngp', 'ntk'))
    assert fn.stats.tiles_skipped_symmetric == 3  # still symmetric: 6 of 9 tiles computed
    for g, w in zip(got, want):
        assert g.shape == w.shape == (5, 5, hw[0] - 1, hw[1] - 1)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-15)
    # the same kernel from x2 = a copy of x (the full grid, nothing mirrored)
    full = batch(LOCAL.kernel_fn, 2, progress=False)(x, x.copy(), 'nngp')
    np.testing.assert_allclose(np.asarray(got.nngp), np.asarray(full), rtol=1e-12, atol=1e-15)


def _dense_nngp(x, w_std, b_std):
    """Closed form of Dense(1, w_std, b_std) on x (N, d): w² x xᵀ / d + b²."""
    return w_std ** 2 * x @ x.T / x.shape[1] + b_std ** 2


def test_batch_axis_one_works_through_kernel_fn_batch_and_store(tmp_path):
    # NT's Dense(batch_axis=1, channel_axis=0) takes inputs of shape (features, N)
    net = stax.Dense(1, 1.5, 0.3, batch_axis=1, channel_axis=0)
    x1, x2 = RNG.randn(6, 9), RNG.randn(6, 5)  # 9 and 5 examples of 6 features
    want11, want12 = _dense_nngp(x1.T, 1.5, 0.3), x1.T @ x2 * 1.5 ** 2 / 6 + 0.3 ** 2
    np.testing.assert_allclose(net.kernel_fn(x1, None, 'nngp'), want11, rtol=1e-12)
    np.testing.assert_allclose(net.kernel_fn(x1, x2, 'nngp'), want12, rtol=1e-12)
    np.testing.assert_allclose(batch(net.kernel_fn, 2, progress=False)(x1, x2, 'nngp'), want12,
                               rtol=1e-12)
    fn = batch(net.kernel_fn, 4, progress=False, store=tmp_path / 's')
    np.testing.assert_allclose(fn(x1, None, 'nngp'), want11, rtol=1e-12)
    assert fn.stats.grid == (3, 3)  # tiled along the 9 examples, not the 6 features
    again = batch(net.kernel_fn, 4, progress=False, store=tmp_path / 's', resume=True)
    np.testing.assert_allclose(again(x1, None, 'nngp'), want11, rtol=1e-12)
    assert again.stats.tiles_resumed == 6 and again.stats.tiles_computed == 0


def test_deep_net_with_batch_axis_one_matches_the_transposed_default_net():
    kw = dict(batch_axis=1, channel_axis=0)
    t_net = stax.serial(stax.Dense(8, 1.2, 0.1, **kw), stax.Erf(), stax.Dense(1, **kw))
    net = stax.serial(stax.Dense(8, 1.2, 0.1), stax.Erf(), stax.Dense(1))
    x = RNG.randn(4, 7)  # (features, N)
    want = net.kernel_fn(x.T, None, ('nngp', 'ntk'))
    got = batch(t_net.kernel_fn, 3, progress=False)(x, None, ('nngp', 'ntk'))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12)


def test_foreign_kernels_of_unknown_layout_are_never_mirrored():
    # a kernel function without a plan whose (N1, N2, 2) result is not symmetric per channel:
    # mirroring would be wrong (and crashed before), so every tile is computed
    def two_channel(x1, x2=None, get=None):
        x2 = x1 if x2 is None else x2
        return jnp.stack([x1 @ x2.T, x1 @ (x2 ** 2).T], axis=-1)

    x = RNG.randn(7, 3)
    fn = batch(two_channel, 3, progress=False)
    got = np.asarray(fn(x, None, 'nngp'))
    want = np.stack([x @ x.T, x @ (x ** 2).T], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert fn.stats.tiles_skipped_symmetric == 0 and fn.stats.tiles_computed == 9

    def linear(x1, x2=None, get=None):  # 2-D: mirroring is a transpose, half the tiles
        x2 = x1 if x2 is None else x2
        return x1 @ x2.T

    fn = batch(linear, 3, progress=False)
    np.testing.assert_allclose(np.asarray(fn(x, None, 'nngp')), x @ x.T, rtol=1e-12)
    assert fn.stats.tiles_skipped_symmetric == 3


def test_empirical_kernel_with_params_batches():
    # documented use: ntc.batch(empirical_kernel_fn(f))(x1, x2, get, params=params) used to
    # fail with "unhashable type: 'dict'"
    def f(params, x):
        return jnp.tanh(x @ params['w']) @ params['v']

    params = {'w': jnp.asarray(RNG.randn(3, 5)), 'v': jnp.asarray(RNG.randn(5, 1))}
    kfn = empirical_kernel_fn(f)
    x = RNG.randn(7, 3)
    want = kfn(x, None, 'nngp', params)
    got = batch(kfn, 3, progress=False)(x, None, 'nngp', params=params)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)
    # independent: the NNGP of one sample is f(x) f(x)ᵀ (one output, trace over it)
    fx = np.tanh(x @ np.asarray(params['w'])) @ np.asarray(params['v'])
    np.testing.assert_allclose(np.asarray(got), fx @ fx.T, rtol=1e-10)
    # other parameters give another kernel (the step is not cached on the first params)
    params2 = jax.tree_util.tree_map(lambda a: 2 * a, params)
    got2 = batch(kfn, 3, progress=False)(x, None, 'nngp', params=params2)
    fx2 = np.tanh(x @ np.asarray(params2['w'])) @ np.asarray(params2['v'])
    np.testing.assert_allclose(np.asarray(got2), fx2 @ fx2.T, rtol=1e-10)
