"""ntc.runtime.monte_carlo: Monte-Carlo NNGP / NTK estimates and their standard errors.

A one-hidden-layer network's empirical kernels are unbiased estimates of the infinite-width
kernels at any width (the hidden units are i.i.d. with exactly the limiting Gaussian
pre-activations), so the sample means must match the closed forms within their standard
errors - no finite-width allowance is needed."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc.errors import InputError
from ntc.runtime import monte_carlo
from ntc.runtime.empirical import empirical_kernel_fn
from ntc.runtime.monte_carlo import monte_carlo_kernel_fn, monte_carlo_kernel_stats

W_STD, B_STD, WIDTH = 1.3, 0.4, 48


def init_fn(key, input_shape):
    """One-hidden-layer ReLU network, NTK parameterisation, 2 outputs (stax-style init_fn).
    All weights come from one `normal` draw (each draw is a sizeable program to compile)."""
    d = input_shape[-1]
    sizes = {'w1': (d, WIDTH), 'b1': (WIDTH,), 'w2': (WIDTH, 2), 'b2': (2,)}
    flat = jax.random.normal(key, (sum(math.prod(s) for s in sizes.values()),))
    params, start = {}, 0
    for name, shape in sizes.items():
        params[name] = flat[start:start + math.prod(shape)].reshape(shape)
        start += math.prod(shape)
    return input_shape[:-1] + (2,), params


def _add_bias(z, b):
    """z + b on the trailing axes, b's leading axes explicit (rank promotion raises)."""
    return z + b.reshape((1,) * (z.ndim - b.ndim) + b.shape)


def apply_fn(params, x, **kwargs):
    h = jax.nn.relu(_add_bias(W_STD * x @ params['w1'] / math.sqrt(x.shape[-1]),
                              B_STD * params['b1']))
    return _add_bias(W_STD * h @ params['w2'] / math.sqrt(WIDTH), B_STD * params['b2'])


def relu_kernels(x1, x2):
    """Closed-form NNGP and NTK of `apply_fn` (arc-cosine kernel, Cho & Saul 2009)."""
    d = x1.shape[1]

    def q(a, b):
        return W_STD ** 2 * a @ b.T / d + B_STD ** 2

    k12, k11, k22 = q(x1, x2), np.diag(q(x1, x1)), np.diag(q(x2, x2))
    norm = np.sqrt(np.outer(k11, k22))
    theta = np.arccos(np.clip(k12 / norm, -1, 1))
    nngp = W_STD ** 2 * norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) \
        + B_STD ** 2
    ntk = nngp + W_STD ** 2 * (np.pi - theta) / (2 * np.pi) * k12
    return nngp, ntk


RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(4, 3), RNG.randn(6, 3)
KEY = jax.random.PRNGKey(7)


EMPIRICAL = jax.jit(empirical_kernel_fn(apply_fn), static_argnames='get')


def manual_samples(n, x1, x2):
    """The per-sample empirical kernels, drawn one at a time with NT's key schedule."""
    kf = EMPIRICAL
    key, out = KEY, []
    for _ in range(n):
        key, k = jax.random.split(key)
        init_key, _ = jax.random.split(k)
        out.append(kf(x1, x2, None, init_fn(init_key, x1.shape)[1]))
    return np.array([o.nngp for o in out]), np.array([o.ntk for o in out])


def test_estimate_is_the_average_of_independently_drawn_samples():
    nngp, ntk = manual_samples(9, X1, X2)
    est = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 9)(X1, X2)
    assert est._fields == ('nngp', 'ntk')
    np.testing.assert_allclose(est.nngp, nngp.mean(0), rtol=1e-12)
    np.testing.assert_allclose(est.ntk, ntk.mean(0), rtol=1e-12)
    # the generator yields the running estimates at the requested counts, in increasing order
    gen = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, [9, 1, 4])(X1, X2)
    for n, got in zip((1, 4, 9), gen):
        np.testing.assert_allclose(got.ntk, ntk[:n].mean(0), rtol=1e-12)


def test_blocks_devices_and_host_storage_do_not_change_the_estimate():
    want = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 5, device_count=0)(X1, None)
    # 2x2 blocks (x2 = None on the diagonal ones), each sharded over all 4 simulated devices
    blocked = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 5, batch_size=2)(X1, None)
    host = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 5, device_count=0,
                                 store_on_device=False)(X1, None)
    assert isinstance(host.ntk, np.ndarray)
    for g in ('nngp', 'ntk'):
        np.testing.assert_allclose(getattr(blocked, g), getattr(want, g), rtol=1e-12)
        np.testing.assert_allclose(getattr(host, g), getattr(want, g), rtol=1e-12)
    # a diagonal batch axis: only the diagonal blocks
    diag = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 5, batch_size=2, device_count=0,
                                 diagonal_axes=(0,))(X1, None, 'nngp')
    np.testing.assert_allclose(diag, np.diag(want.nngp), rtol=1e-12)


def test_stats_mean_and_standard_error_equal_direct_computation():
    nngp, ntk = manual_samples(10, X1, X2)
    # chunks of 3 (the last one padded) exercise the pairwise merge of running sums
    stats = monte_carlo_kernel_stats(init_fn, apply_fn, KEY, X1, X2, 10, chunk_size=3)
    assert stats.n_samples == 10
    for name, s in (('nngp', nngp), ('ntk', ntk)):
        np.testing.assert_allclose(stats.mean[name], s.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.stderr[name], s.std(0, ddof=1) / math.sqrt(10),
                                   rtol=1e-9)
    est = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 10)(X1, X2)
    np.testing.assert_allclose(stats.mean['ntk'], est.ntk, rtol=1e-12)


def test_estimates_match_closed_forms_within_standard_errors():
    """Unbiased at width 48: every entry within 5 standard errors of the closed form; the test
    has power (a kernel 25 % off is rejected)."""
    stats = monte_carlo_kernel_stats(init_fn, apply_fn, jax.random.PRNGKey(1), X1, X2, 1000)
    nngp, ntk = relu_kernels(X1, X2)
    for name, want in (('nngp', nngp), ('ntk', ntk)):
        z = np.abs(stats.mean[name] - want) / stats.stderr[name]
        assert z.max() < 5, (name, z.max())
        wrong = np.abs(1.25 * stats.mean[name] - want) / stats.stderr[name]
        assert wrong.max() > 5


def test_network_without_closed_form_and_error_scaling():
    """Any apply function works; the standard error falls as 1/sqrt(n)."""
    def init(key, shape):
        flat = jax.random.normal(key, (shape[-1] * 32 + 48,))
        return None, (flat[:-48].reshape(shape[-1], 32), flat[-48:].reshape(16, 3))

    def apply(params, x):
        h = x @ params[0] / math.sqrt(x.shape[-1])
        h = jnp.sin(h) * jax.nn.softplus(h)
        h = jnp.max(h.reshape(h.shape[:-1] + (16, 2)), axis=-1)     # max-pool pairs
        return h @ params[1] / 4.

    small = monte_carlo_kernel_stats(init, apply, KEY, X1, X2, 64, chunk_size=32)
    large = monte_carlo_kernel_stats(init, apply, jax.random.PRNGKey(3), X1, X2, 256,
                                     chunk_size=32)
    for g in ('nngp', 'ntk'):
        ratio = np.median(small.stderr[g] / large.stderr[g])
        assert 1.6 < ratio < 2.5, (g, ratio)
        gap = np.abs(small.mean[g] - large.mean[g])
        assert np.all(gap < 5 * np.hypot(small.stderr[g], large.stderr[g]))
    square = monte_carlo_kernel_fn(init, apply, KEY, 32)(X1, None, 'nngp')
    assert np.linalg.eigvalsh(square).min() > -1e-10


def test_bad_arguments_raise_input_error():
    for bad in (0, [-1, 2], 'ten', [2.5]):
        with pytest.raises(InputError, match='n_samples'):
            monte_carlo_kernel_fn(init_fn, apply_fn, KEY, bad)
    with pytest.raises(InputError, match='divide'):
        monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 2, batch_size=3)(X1, X2)
    with pytest.raises(InputError, match='n_samples >= 2'):
        monte_carlo_kernel_stats(init_fn, apply_fn, KEY, X1, X2, 1)
    with pytest.raises(InputError, match='rng'):
        monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 2)(X1, X2, rng=KEY)
    with pytest.raises(InputError, match='device_count'):
        monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 2, device_count=10 ** 6)


# parameter names and defaults of neural_tangents 0.6.5 (`inspect.signature`)
NT_MONTE_CARLO = [('init_fn', 'REQUIRED'), ('apply_fn', 'REQUIRED'), ('key', 'REQUIRED'),
                  ('n_samples', 'REQUIRED'), ('batch_size', 0), ('device_count', -1),
                  ('store_on_device', True), ('trace_axes', (-1,)), ('diagonal_axes', ()),
                  ('vmap_axes', None), ('implementation', 1), ('_j_rules', True),
                  ('_s_rules', True), ('_fwd', None)]


def test_signature_matches_neural_tangents():
    got = [(p.name, 'REQUIRED' if p.default is p.empty else p.default)
           for p in inspect.signature(monte_carlo.monte_carlo_kernel_fn).parameters.values()]
    assert got == NT_MONTE_CARLO
    kernel_fn = monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 2)
    names = list(inspect.signature(kernel_fn).parameters)
    assert names == ['x1', 'x2', 'get', 'apply_fn_kwargs']
