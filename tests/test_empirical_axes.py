"""`trace_axes` / `diagonal_axes` of the empirical kernels name a set of output axes: an axis
named twice (`(1, 1)`, or `(0, -3)` of a rank-3 output) is traced once, as in NT (which
accepts such tuples; ntc averages over each traced axis once, see docs/porting.md)."""

import jax.numpy as jnp
import numpy as np
import pytest

import ntc


def f(p, x):
    return jnp.tanh(x @ p)      # (N, 2, 3) inputs -> (N, 2, 4) outputs


@pytest.mark.parametrize('repeated, once', [((0, 0, -3), (0,)), ((1, 1), (1,)),
                                            ((-1, 2), (2,))])
@pytest.mark.parametrize('fn', [ntc.empirical_ntk_fn, ntc.empirical_nngp_fn])
def test_repeated_trace_axis_counts_once(repeated, once, fn):
    r = np.random.RandomState(0)
    p, x = jnp.asarray(r.randn(3, 4)), jnp.asarray(r.randn(5, 2, 3))
    got = fn(f, trace_axes=repeated)(x, None, p)
    np.testing.assert_allclose(got, fn(f, trace_axes=once)(x, None, p), rtol=1e-12)


def test_nngp_mean_over_a_traced_axis():
    """The NNGP traced over the channel axis is f(x1) f(x2)ᵀ / C, computed here by hand."""
    r = np.random.RandomState(1)
    p, x = jnp.asarray(r.randn(3, 4)), jnp.asarray(r.randn(5, 2, 3))
    out = np.tanh(np.asarray(x) @ np.asarray(p))
    expected = np.einsum('nhc,mhc->nm', out, out) / (2 * 4)
    got = ntc.empirical_nngp_fn(f, trace_axes=(1, 2, -1))(x, None, p)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.shape == (5, 5)
