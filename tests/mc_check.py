"""Monte-Carlo agreement helper for the layer tests: analytic kernels vs the mean of empirical
kernels of finite networks built from the same net (`monte_carlo_kernel_stats`), per-entry
z-scores against a Bonferroni-corrected Student-t threshold (family-wise false-failure rate
`alpha` for correct rules, up to the O(1/width) finite-width bias)."""

import jax
import numpy as np
from scipy import stats

from ntc.runtime.monte_carlo import monte_carlo_kernel_stats


def assert_monte_carlo_agrees(net, x1, x2, n_samples, get=('nngp', 'ntk'), alpha=1e-3,
                              implementation=1, seed=1, **kwargs):
    """Raise AssertionError unless every entry of the analytic kernels `get` of `net` is within
    k standard errors of the Monte-Carlo mean; `kwargs` go to kernel_fn and (split as NT does:
    a pair (v1, v2) per input) to apply_fn.  Returns the largest |z|."""
    init_fn, apply_fn, kernel_fn = net
    analytic = kernel_fn(x1, x2, get, **kwargs)
    analytic = analytic if isinstance(analytic, tuple) else (analytic,)
    st = monte_carlo_kernel_stats(init_fn, apply_fn, jax.random.PRNGKey(seed), x1, x2,
                                  n_samples, get=get, implementation=implementation, **kwargs)
    m = sum(np.size(a) for a in analytic)
    k = float(stats.t.isf(alpha / (2 * m), df=n_samples - 1))
    worst = 0.0
    for g, a in zip(get, analytic):
        a = np.asarray(a)
        mean, err = np.asarray(st.mean[g]), np.asarray(st.stderr[g])
        assert a.shape == mean.shape, f'{g}: analytic shape {a.shape} != MC {mean.shape}'
        z = np.abs(a - mean) / np.maximum(err, 1e-9 * np.max(np.abs(a)))
        worst = max(worst, float(np.max(z)))
        i = int(np.argmax(z))
        assert np.max(z) <= k, (f'{g}: max |z| {np.max(z):.2f} > {k:.2f}; analytic '
                                f'{a.ravel()[i]:.5g}, MC {mean.ravel()[i]:.5g}')
    return worst
