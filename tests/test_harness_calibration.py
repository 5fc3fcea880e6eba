"""The Monte-Carlo tolerance is calibrated: on correct rules the family-wise false-failure rate
over 200 seeds stays below 1%, and the error shrinks as width x samples grows.
(`benchmarks/bench_calibration.py` runs the larger version of both.)"""

import jax.numpy as jnp
import numpy as np

from ntc import stax
from ntc.testing import check_against_monte_carlo, z_threshold
from ntc.testing.monte_carlo import relative_error

X = np.random.RandomState(0).randn(2, 3)


def test_false_failure_rate_over_200_seeds_is_below_one_percent():
    net = stax.serial(stax.Dense(8, 1.2, 0.3), stax.Erf(), stax.Dense(2))
    reports = [check_against_monte_carlo(net, X, None, width=512, n_samples=128, key=seed)
               for seed in range(200)]
    failures = sum(not r.ok for r in reports)
    assert failures < 2, f'{failures} of 200 seeds failed'
    # the z-scores behave like standard errors say: about unit spread, no systematic offset
    z = np.concatenate([np.ravel(r.z['ntk'][:X.shape[0] ** 2]) for r in reports])
    assert 0.7 < np.std(z) < 1.3 and abs(np.mean(z)) < 0.2


def test_error_shrinks_with_width_times_samples():
    """The NTK estimate averages over hidden units and samples (error ~ 1/sqrt(width x n));
    the NNGP's is dominated by the 2-unit readout, so it shrinks with the samples only."""
    net = stax.serial(stax.Dense(8, 1.2, 0.3), stax.Relu(), stax.Dense(2))

    def err(width, n, get):
        return np.mean([relative_error(check_against_monte_carlo(
            net, X, None, width=width, n_samples=n, key=s), get) for s in range(4)])

    small, large = err(32, 16, 'ntk'), err(512, 128, 'ntk')   # width x n: 64x apart
    assert large < small / 4, (small, large)
    assert err(512, 256, 'nngp') < err(512, 16, 'nngp') / 2


def test_threshold_grows_with_the_number_of_entries_and_shrinks_with_samples():
    assert z_threshold(100, 128) > z_threshold(10, 128) > 3
    assert z_threshold(10, 16) > z_threshold(10, 1000)
    # alpha / m two-sided: for m = 1 and many samples this is the normal quantile
    assert abs(z_threshold(1, 10 ** 6, 0.05) - 1.96) < 1e-2
    assert jnp.isfinite(z_threshold(1, 2))
