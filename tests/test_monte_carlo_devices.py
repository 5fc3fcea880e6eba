"""Monte-Carlo estimates with samples sharded over devices (4 simulated host devices here):
the results live on one device, the sharded program has no collective, and repeated runs in
one process work (NT's `MaskingTest.test_mask_fc0` then `fc1` aborted the process: an
all-reduce of the sample sums waited more than XLA:CPU's 40 s for the other host device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc import stax
from ntc.runtime import monte_carlo
from ntc.runtime.monte_carlo import monte_carlo_kernel_fn, monte_carlo_kernel_stats

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all')


@pytest.fixture(scope='module')
def masked_net():
    """Flatten, FanOut, parallel Dense branches, FanInSum, Relu, Dense(1) on inputs with
    masked entries (the shape of NT's masking test, much narrower)."""
    init_fn, apply_fn, _ = stax.serial(
        stax.Flatten(), stax.FanOut(2),
        stax.parallel(stax.serial(stax.Dense(16), stax.Abs(), stax.Dense(16)),
                      stax.serial(stax.Dense(16), stax.Erf(), stax.Dense(16))),
        stax.FanInSum(), stax.Relu(), stax.Dense(1))
    key = jax.random.PRNGKey(1)
    x1 = jax.random.normal(key, (4, 3, 5))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 5))
    x1 = jnp.where(jax.random.bernoulli(key, 0.3, x1.shape), 10., x1)
    return init_fn, stax.unmask_fn(apply_fn), x1, x2


def _estimate(net, device_count, vmap_axes=0, n_samples=8):
    init_fn, apply_fn, x1, x2 = net
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), n_samples,
                               device_count=device_count, vmap_axes=vmap_axes)
    return mc(x1, x2, get='ntk', mask_constant=10.)


def test_sharded_estimates_twice_in_one_process_live_on_one_device(masked_net):
    """Two sharded estimates in a row (other samples, other vmap_axes), each followed by
    NT's checks on it (a mean, a norm of a difference with a one-device array): every result
    is an ordinary one-device array equal to the one-device estimate."""
    for vmap_axes, n_samples in ((0, 8), (None, 6)):
        one = _estimate(masked_net, 0, vmap_axes, n_samples)
        out = _estimate(masked_net, -1, vmap_axes, n_samples)
        assert len(out.devices()) == 1 and len(jax.devices()) == 4
        assert float(jnp.linalg.norm(out - one)) <= 1e-10 * float(jnp.linalg.norm(one))
        assert np.isfinite(float(jnp.mean(out)))


def test_sharded_sampling_program_has_no_collective(masked_net):
    """The compiled program that draws a chunk of samples on 4 devices sums each device's
    share locally: no all-reduce or other collective, which XLA:CPU aborts on after 40 s."""
    init_fn, apply_fn, x1, x2 = masked_net
    monte_carlo._CHUNK_CACHE.clear()
    _estimate(masked_net, 4)
    (sample, _), = monte_carlo._CHUNK_CACHE.values()
    text = sample.lower(jax.random.PRNGKey(1), np.int32(8), x1, x2,
                        {'mask_constant': 10.}).compile().as_text()
    assert 'sharding' in text       # the program does run on the 4 devices
    assert not [c for c in COLLECTIVES if c in text]


def test_device_shares_with_no_samples_merge_exactly(masked_net):
    """5 samples in a chunk of 8 on 4 devices (2, 2, 1 and 0 real samples each): the mean and
    the standard error equal the one-device ones (Chan et al.'s merge skips empty shares)."""
    init_fn, apply_fn, x1, x2 = masked_net
    stats = [monte_carlo_kernel_stats(init_fn, apply_fn, jax.random.PRNGKey(1), x1, x2, 5,
                                      device_count=d, chunk_size=8, mask_constant=10.)
             for d in (0, 4)]
    for g in ('nngp', 'ntk'):
        np.testing.assert_allclose(stats[1].mean[g], stats[0].mean[g], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats[1].stderr[g], stats[0].stderr[g], rtol=1e-8,
                                   atol=1e-12)
        assert len(stats[1].mean[g].devices()) == 1
