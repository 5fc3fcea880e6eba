"""The traced kernel against the Monte-Carlo kernel of the original module: Flax's own init and
apply at large width, within ntc.testing's Monte-Carlo tolerance (k standard errors, k the
Bonferroni-corrected Student-t quantile for a family-wise false-failure rate of 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc.runtime.monte_carlo import monte_carlo_kernel_stats
from ntc.testing.monte_carlo import DEFAULT_ALPHA, z_threshold

nn = pytest.importorskip('flax.linen')

WIDTH = 256
N_SAMPLES = 64


class WideMLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width, bias_init=nn.initializers.normal(0.1))(x))
        x = nn.gelu(nn.Dense(self.width)(x), approximate=False)
        return nn.Dense(1)(x)


def test_traced_flax_kernel_matches_monte_carlo_of_the_flax_module():
    module = WideMLP(WIDTH)
    x1 = np.random.default_rng(0).standard_normal((3, 4))
    x2 = np.random.default_rng(1).standard_normal((2, 4))
    net = ntc.from_flax(module, x1)  # standard parameterisation: the NTK scales with width

    def init_fn(key, input_shape):
        params = module.init(key, jnp.zeros((1,) + tuple(input_shape[1:])))['params']
        return (input_shape[0], 1), params

    def apply_fn(params, x):
        return module.apply({'params': params}, x)

    names = ('nngp', 'ntk')
    stats = monte_carlo_kernel_stats(init_fn, apply_fn, jax.random.PRNGKey(0), x1, x2,
                                     N_SAMPLES, get=names)
    analytic = net.kernel_fn(x1, x2, names)
    m = sum(np.size(a) for a in analytic)
    k = z_threshold(m, N_SAMPLES, DEFAULT_ALPHA)
    for g, want in zip(names, analytic):
        mean, err = np.asarray(stats.mean[g]), np.asarray(stats.stderr[g])
        z = (np.asarray(want) - mean) / err
        assert np.all(np.abs(z) < k), f'{g}: z = {z}, k = {k:.2f}'
