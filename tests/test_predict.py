"""ntc.runtime.predict: GP inference, closed-form / ODE gradient-descent dynamics, infinite
ensembles (checked against finite Erf networks trained by gradient descent), likelihoods and
errors.  Reference values are computed independently in each test (explicit Kronecker matrices,
`jax.scipy.linalg.expm`, textbook solves)."""

import inspect
import math
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm
from jax.scipy.special import erf

from ntc.errors import InputError, NumericalError
from ntc.runtime import predict
from ntc.runtime.predict import (
    Gaussian,
    gp_inference,
    gradient_descent,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    marginal_log_likelihood,
    max_learning_rate,
)

Kern = namedtuple('Kern', 'nngp ntk')


def psd_kernels(n_train, n_test, seed=0, features=40, jitter=1e-3):
    """Random joint PSD kernels (NNGP, NTK) split into train-train / test-train / test-test."""
    rng = np.random.RandomState(seed)
    n = n_train + n_test
    out = []
    for _ in range(2):
        phi = rng.randn(n, features)
        k = phi @ phi.T / features + jitter * np.eye(n)
        out.append((k[:n_train, :n_train], k[n_train:, :n_train], k[n_train:, n_train:]))
    (n_dd, n_td, n_tt), (t_dd, t_td, t_tt) = out
    t_dd, t_td, t_tt = t_dd + n_dd, t_td + n_td, t_tt + n_tt   # NTK ⪰ NNGP, as for networks
    return Kern(n_dd, t_dd), Kern(n_td, t_td), Kern(n_tt, t_tt)


def mse(fx, y):
    return 0.5 * jnp.mean((fx - y) ** 2)


# ------------------------------------------------------------------------------------------
# GP inference


def test_gp_inference_nngp_equals_textbook_solve():
    k_dd, k_td, k_tt = psd_kernels(7, 4)
    y = np.random.RandomState(1).randn(7, 3)
    for reg in (0., 0.1):
        got = gp_inference(k_dd, y, diag_reg=reg)('nngp', k_td, k_tt)
        a = k_dd.nngp + reg * np.trace(k_dd.nngp) / 7 * np.eye(7)
        np.testing.assert_allclose(got.mean, k_td.nngp @ np.linalg.solve(a, y), rtol=1e-10)
        np.testing.assert_allclose(got.covariance,
                                   k_tt.nngp - k_td.nngp @ np.linalg.solve(a, k_td.nngp.T),
                                   rtol=1e-9, atol=1e-12)
    # absolute regularisation scale
    got = gp_inference(k_dd, y, diag_reg=0.3, diag_reg_absolute_scale=True)('nngp', k_td)
    np.testing.assert_allclose(got, k_td.nngp @ np.linalg.solve(k_dd.nngp + 0.3 * np.eye(7), y),
                               rtol=1e-10)
    # no test set: the train targets with zero covariance; get=None gives both kernels
    both = gp_inference(k_dd, y)(None, None, True)
    assert both._fields == ('nngp', 'ntk')
    np.testing.assert_array_equal(both.nngp.mean, y)
    np.testing.assert_array_equal(both.ntk.covariance, np.zeros((7, 7)))


def test_gp_inference_ntk_and_ntkgp_posteriors():
    k_dd, k_td, k_tt = psd_kernels(6, 5, seed=3)
    y = np.random.RandomState(2).randn(6, 2)
    out = gp_inference(k_dd, y)(('ntk', 'ntkgp'), k_td, k_tt)
    th_inv = np.linalg.inv(k_dd.ntk)
    mean = k_td.ntk @ th_inv @ y
    # Lee et al. 2019, eq. 16: K_tt + Θ_td Θ^-1 K Θ^-1 Θ_dt - (Θ_td Θ^-1 K_dt + h.c.)
    cross = k_td.ntk @ th_inv @ k_td.nngp.T
    cov = k_tt.nngp + k_td.ntk @ th_inv @ k_dd.nngp @ th_inv @ k_td.ntk.T - cross - cross.T
    np.testing.assert_allclose(out.ntk.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(out.ntk.covariance, cov, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out.ntkgp.covariance,
                               k_tt.ntk - k_td.ntk @ th_inv @ k_td.ntk.T, rtol=1e-8, atol=1e-10)


def test_kron_identity_path_equals_explicit_kronecker():
    """The N×N path with C right-hand sides equals the (N·C)×(N·C) computation with K ⊗ I."""
    n, n_test, c = 5, 3, 3
    k_dd, k_td, k_tt = psd_kernels(n, n_test, seed=5)
    rng = np.random.RandomState(4)
    y, f0, g0 = rng.randn(n, c), rng.randn(n, c), rng.randn(n_test, c)
    eye = np.eye(c)
    big_dd, big_td, big_tt = (np.kron(k, eye) for k in (k_dd.ntk, k_td.ntk, k_tt.ntk))
    # GP posterior
    gp = gp_inference(k_dd.ntk, y)('nngp', k_td.ntk, k_tt.ntk)
    mean = big_td @ np.linalg.solve(big_dd, y.reshape(-1))
    cov = big_tt - big_td @ np.linalg.solve(big_dd, big_td.T)
    np.testing.assert_allclose(gp.mean.reshape(-1), mean, rtol=1e-9)
    np.testing.assert_allclose(np.kron(gp.covariance, eye), cov, rtol=1e-8, atol=1e-10)
    # MSE dynamics: f(t) = y + expm(-lr t K/|y|)(f0 - y) with the explicit Kronecker kernel
    lr, t = 0.7, 2.5
    tr, te = gradient_descent_mse(k_dd.ntk, y, lr)(t, f0, g0, k_td.ntk)
    decay = expm(-lr * t * big_dd / y.size)
    want_tr = y.reshape(-1) + decay @ (f0 - y).reshape(-1)
    want_te = g0.reshape(-1) - big_td @ np.linalg.solve(big_dd, (np.eye(n * c) - decay)
                                                         @ (f0 - y).reshape(-1))
    np.testing.assert_allclose(tr.reshape(-1), want_tr, rtol=1e-9)
    np.testing.assert_allclose(te.reshape(-1), want_te, rtol=1e-9)
    # trace_axes=(): the same dynamics from the full (N, N, C, C) kernel
    full_dd = np.einsum('ab,cd->abcd', k_dd.ntk, eye)
    full_td = np.einsum('ab,cd->abcd', k_td.ntk, eye)
    tr2, te2 = gradient_descent_mse(full_dd, y, lr, trace_axes=())(t, f0, g0, full_td)
    np.testing.assert_allclose(tr2, tr, rtol=1e-9)
    np.testing.assert_allclose(te2, te, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# closed-form and ODE dynamics


def test_gradient_descent_mse_times_and_limits():
    k_dd, k_td, _ = psd_kernels(6, 4, seed=7)
    rng = np.random.RandomState(0)
    y, f0, g0 = rng.randn(6, 2), rng.randn(6, 2), rng.randn(4, 2)
    fn = gradient_descent_mse(k_dd.ntk, y, learning_rate=0.5)
    ts = np.array([[0., 1.], [10., 100.]])
    tr, te = fn(ts, f0, g0, k_td.ntk)
    assert tr.shape == (2, 2, 6, 2) and te.shape == (2, 2, 4, 2)
    np.testing.assert_allclose(tr[0, 0], f0, atol=1e-12)
    np.testing.assert_allclose(te[0, 0], g0, atol=1e-12)
    for i, t in np.ndenumerate(ts):
        np.testing.assert_allclose(fn(float(t), f0, g0, k_td.ntk)[1], te[i], rtol=1e-12)
    # t = inf (eigenbasis) equals t = None (Cholesky) equals the textbook limit
    te_inf = fn(np.inf, f0, g0, k_td.ntk)[1]
    te_none = fn(None, f0, g0, k_td.ntk)[1]
    np.testing.assert_allclose(te_inf, te_none, rtol=1e-9)
    np.testing.assert_allclose(te_none, g0 + k_td.ntk @ np.linalg.solve(k_dd.ntk, y - f0),
                               rtol=1e-9)
    # test-set only
    np.testing.assert_allclose(fn(ts, None, g0, k_td.ntk)[1, 0],
                               fn(10., 0., g0, k_td.ntk)[1], rtol=1e-12)


def test_closed_form_mse_equals_ode_integration():
    k_dd, k_td, _ = psd_kernels(6, 3, seed=11)
    rng = np.random.RandomState(1)
    y, f0, g0 = rng.randn(6, 2), rng.randn(6, 2), rng.randn(3, 2)
    ts = np.array([0., 0.3, 2., 15.])
    closed = gradient_descent_mse(k_dd.ntk, y, learning_rate=0.8)
    ode = gradient_descent(mse, k_dd.ntk, y, learning_rate=0.8)
    for a, b in zip(closed(ts, f0, g0, k_td.ntk), ode(ts, f0, g0, k_td.ntk)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)     # odeint rtol = 1.4e-8
    for a, b in zip(closed(None, f0, g0, k_td.ntk), ode(None, f0, g0, k_td.ntk)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_momentum_dynamics_and_limit():
    """Heavy-ball ODE df/ds = q, dq/ds = -K ∇loss + (m - 1)/sqrt(lr) q, s = sqrt(lr) t, against
    the matrix exponential of the linear system; its t=inf limit is the MSE minimiser."""
    k_dd, k_td, _ = psd_kernels(5, 3, seed=2)
    rng = np.random.RandomState(3)
    y, f0, g0 = rng.randn(5, 1), rng.randn(5, 1), rng.randn(3, 1)
    lr, m = 0.5, 0.9
    fn = gradient_descent(mse, k_dd.ntk, y, learning_rate=lr, momentum=m)
    t = 3.
    state = fn(np.array([t]), predict.ODEState(f0, g0), None, k_td.ntk)
    s = math.sqrt(lr) * t
    a = np.block([[np.zeros((5, 5)), np.eye(5)],
                  [-k_dd.ntk / y.size, (m - 1) / math.sqrt(lr) * np.eye(5)]])
    z = expm(a * s) @ np.concatenate([(f0 - y)[:, 0], np.zeros(5)])
    np.testing.assert_allclose(state.fx_train[0, :, 0], y[:, 0] + z[:5], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.qx_train[0, :, 0], z[5:], rtol=1e-6, atol=1e-7)
    # the limit equals the momentum-free one, and the closed form
    lim_m = fn(None, f0, g0, k_td.ntk)
    lim = gradient_descent_mse(k_dd.ntk, y)(None, f0, g0, k_td.ntk)
    for a_, b_ in zip(lim_m, lim):
        np.testing.assert_allclose(a_, b_, rtol=1e-5, atol=1e-6)
    # ... while at finite time momentum changes the trajectory
    plain = gradient_descent(mse, k_dd.ntk, y, learning_rate=lr)(t, f0)
    assert np.max(np.abs(fn(t, f0) - plain)) > 1e-2


def test_ode_without_finite_minimiser_raises():
    k_dd, _, _ = psd_kernels(4, 1, seed=1)
    labels = np.eye(2)[[0, 1, 0, 1]]

    def cross_entropy(fx, y):
        return -jnp.mean(jax.nn.log_softmax(fx) * y)

    fn = gradient_descent(cross_entropy, k_dd.ntk, labels, learning_rate=1.)
    finite = fn(np.array([1., 5.]), 0.)
    assert finite.shape == (2, 4, 2) and np.all(np.isfinite(finite))
    with pytest.raises(NumericalError, match='steady state'):
        fn(None, 0.)


# ------------------------------------------------------------------------------------------
# infinite ensembles


W_STD, B_STD = 1.5, 0.5


def erf_kernel_fn(x1, x2=None, get=None):
    """Closed-form NNGP / NTK of x -> W_STD/sqrt(n) erf(W_STD x·W/sqrt(d) + B_STD b)·v + B_STD b'
    in NTK parameterisation (Williams 1997's arcsin formula; Jacot et al. 2018)."""
    x2 = x1 if x2 is None else x2
    d = x1.shape[1]

    def q(a, b):
        return W_STD ** 2 * a @ b.T / d + B_STD ** 2

    k12, k11, k22 = q(x1, x2), jnp.diag(q(x1, x1)), jnp.diag(q(x2, x2))
    den = jnp.sqrt(jnp.outer(1 + 2 * k11, 1 + 2 * k22))
    nngp = W_STD ** 2 * 2 / jnp.pi * jnp.arcsin(2 * k12 / den) + B_STD ** 2
    ntk = nngp + W_STD ** 2 * 4 / jnp.pi / jnp.sqrt(den ** 2 - 4 * k12 ** 2) * k12
    names = ('nngp', 'ntk') if get is None else ((get,) if isinstance(get, str) else get)
    vals = {'nngp': nngp, 'ntk': ntk}
    if isinstance(get, str):
        return vals[get]
    return namedtuple('Kernel', names)(*(vals[g] for g in names))


def sin_data(seed=0):
    """NT's sin regression: 5 noisy samples of sin on [-π, π] (one per fifth of the interval,
    so no two points nearly coincide), and a test grid."""
    rng = np.random.RandomState(seed)
    x = (-np.pi + (np.arange(5) + rng.uniform(0.2, 0.8, 5)) * 2 * np.pi / 5)[:, None]
    y = np.sin(x) + 0.1 * rng.randn(5, 1)
    return x, y, np.linspace(-np.pi, np.pi, 16)[:, None]


def test_ensemble_equals_explicit_formulas():
    x, y, xt = sin_data()
    k_dd, k_td, k_tt = erf_kernel_fn(x), erf_kernel_fn(xt, x), erf_kernel_fn(xt)
    lr, t = 0.5, 7.
    fn = gradient_descent_mse_ensemble(erf_kernel_fn, x, y, learning_rate=lr)
    out = fn(np.array([t]), xt, None, compute_cov=True)
    tau = lr * t / y.size
    # NTK regime (Lee et al. 2019, eqs. 14-15) with an independent matrix exponential
    th, k = np.asarray(k_dd.ntk), np.asarray(k_dd.nngp)
    phi = np.linalg.solve(th, np.eye(5) - np.asarray(expm(-tau * th)))
    mean = k_td.ntk @ phi @ y
    cross = k_td.ntk @ phi @ k_td.nngp.T
    cov = k_tt.nngp + k_td.ntk @ phi @ k @ phi.T @ k_td.ntk.T - cross - cross.T
    np.testing.assert_allclose(out.ntk.mean[0], mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out.ntk.covariance[0], cov, rtol=1e-7, atol=1e-9)
    # NNGP regime: K_tt - K_td K^-1 (I - exp(-2τK)) K_dt
    cov_n = k_tt.nngp - k_td.nngp @ np.linalg.solve(k, np.eye(5) - np.asarray(
        expm(-2 * tau * k))) @ k_td.nngp.T
    np.testing.assert_allclose(out.nngp.covariance[0], cov_n, rtol=1e-7, atol=1e-9)
    # train set: mean y - exp(-τΘ) y, covariance exp(-τΘ) K exp(-τΘ)
    tr = fn(t, None, 'ntk', compute_cov=True)
    e = np.asarray(expm(-tau * th))
    np.testing.assert_allclose(tr.mean, y - e @ y, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(tr.covariance, e @ k @ e, rtol=1e-7, atol=1e-10)
    # t = inf (eigenbasis) agrees with t = None (gp_inference)
    a, b = fn(np.inf, xt, 'ntk', True), fn(None, xt, 'ntk', True)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-6, atol=1e-8)
    # a string get returns the bare array
    assert fn(t, xt, 'nngp').shape == (16, 1)


def _erf_net_init(key, width, n_nets):
    ks = jax.random.split(key, 4)
    f32 = jnp.float32
    return dict(w1=jax.random.normal(ks[0], (n_nets, 1, width), f32),
                b1=jax.random.normal(ks[1], (n_nets, width), f32),
                w2=jax.random.normal(ks[2], (n_nets, width, 1), f32),
                b2=jax.random.normal(ks[3], (n_nets, 1), f32))


def _erf_net_apply(p, x):
    width = p['w1'].shape[-1]
    h = erf(W_STD * x @ p['w1'] / math.sqrt(x.shape[1]) + B_STD * p['b1'][None])
    return W_STD * h @ p['w2'] / math.sqrt(width) + B_STD * p['b2'][None]


def test_ensemble_of_finite_erf_networks_matches_infinite_ensemble():
    """512 networks of width 512 trained by full-batch gradient descent on MSE follow the
    infinite ensemble's mean and variance at t = 1, 10, 100 and (trained to convergence) inf.

    Training is plain gradient descent ``θ -= h ∇ 0.5 mean((f - y)²)`` whose step size grows
    from 0.002 as ``h = 0.02 (t + 0.1)`` up to ``0.9 |y| / λ_max(Θ)`` (stable): gradient flow's
    discretisation error in a mode λ is at most ~0.14·0.02 relative, uniformly in t.  The
    networks run in float32 (6x faster on CPU; round-off ~1e-6 is far below the tolerances);
    theory is float64.

    Tolerance per test point: |ensemble - theory| <= 4.5 standard errors of the ensemble
    statistic (the mean's SE is s/sqrt(M); the variance's is the SE of the mean of (f - f̄)²),
    plus a finite-width allowance.  Ensemble averages of finite-width corrections to NTK
    dynamics are O(1/width) (Dyer & Gur-Ari 2020, "Asymptotics of wide networks from Feynman
    diagrams").  Measured with M = 1024 on this setup, the mean's largest bias was 3.9/width
    (widths 256 and 512; none resolvable at 1024), so we allow 8/width; no variance bias was
    resolvable above the noise (~9% relative at 2 SE), so we allow 25/width relative to the
    predicted variance (5% at width 512) - relative, because late-time variances near the
    training points are ~1e-4.
    """
    x, y, xt = sin_data()
    width, n_nets = 512, 512
    lam = np.linalg.eigvalsh(np.asarray(erf_kernel_fn(x).ntk))
    t_conv = 12 * y.size / lam[0]           # exp(-12) of the slowest mode left
    h_max = 0.9 * y.size / lam[-1]
    times = [0., 1., 10., 100., t_conv]

    x32, y32, xt32 = (jnp.asarray(a, jnp.float32) for a in (x, y, xt))
    grad = jax.vmap(jax.grad(lambda p: 0.5 * jnp.mean((_erf_net_apply(p, x32) - y32) ** 2)))

    @jax.jit
    def train(p, steps):
        def step(p, h):
            return jax.tree_util.tree_map(lambda a, g: a - h * g, p, grad(p)), None
        return jax.lax.scan(step, p, steps)[0]

    outputs = jax.jit(jax.vmap(_erf_net_apply, (0, None)))
    params = _erf_net_init(jax.random.PRNGKey(1), width, n_nets)
    samples = []
    for t0, t1 in zip([0.] + times[:-1], times):
        steps, t = [], t0
        while t < t1 - 1e-9:
            steps.append(min(0.02 * (t + 0.1), h_max, t1 - t))
            t += steps[-1]
        if steps:
            params = train(params, jnp.asarray(steps, jnp.float32))
        samples.append(np.asarray(outputs(params, xt32), np.float64)[..., 0])

    predict_fn = gradient_descent_mse_ensemble(erf_kernel_fn, x, y)

    def worst_excess(learning_rate=1.):
        fn = predict_fn if learning_rate == 1. else \
            gradient_descent_mse_ensemble(erf_kernel_fn, x, y, learning_rate=learning_rate)
        excess = []
        for t, s in zip(times, samples):
            g = fn(None if t == t_conv else t, xt, 'ntk', compute_cov=True)
            mean_th, var_th = np.asarray(g.mean)[:, 0], np.diag(np.asarray(g.covariance))
            mean, var = s.mean(0), s.var(0, ddof=1)
            se_mean = s.std(0, ddof=1) / math.sqrt(n_nets)
            se_var = ((s - mean) ** 2).std(0, ddof=1) / math.sqrt(n_nets)
            excess.append(np.max(np.abs(mean - mean_th) - 4.5 * se_mean - 8 / width))
            excess.append(np.max(np.abs(var - var_th) - 4.5 * se_var - 25 / width * var_th))
        return max(excess)

    assert worst_excess() <= 0
    # the tolerance has power: the same ensemble contradicts a time scale off by 2x
    assert worst_excess(learning_rate=2.) > 0
    assert worst_excess(learning_rate=0.5) > 0


def test_ensemble_kernel_fn_kwargs_and_missing_kernel():
    x, y, xt = sin_data()
    seen = []

    def kernel_fn(x1, x2, get, scale=1., pair=None):
        seen.append((get, scale, pair))
        return Kern(nngp=scale * erf_kernel_fn(x1, x2).nngp, ntk=None)

    fn = gradient_descent_mse_ensemble(kernel_fn, x, y, scale=2., pair=('a', 'b'))
    got = fn(3., xt, 'nngp', compute_cov=True, scale=2., pair=('c', 'd'))
    # a kernel twice as large trains twice as fast and has twice the prior covariance
    ref = gradient_descent_mse_ensemble(erf_kernel_fn, x, y)(6., xt, 'nngp', compute_cov=True)
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.covariance, 2 * ref.covariance, rtol=1e-8, atol=1e-11)
    assert ('nngp', 2., ('c', 'a')) in seen                       # test-train pair split
    with pytest.raises(InputError, match="did not compute the 'ntk'"):
        fn(3., xt, 'ntk')
    with pytest.raises(InputError, match='agree'):
        fn(3., xt, 'nngp', scale=3.)


# ------------------------------------------------------------------------------------------
# learning rate and likelihood


def test_max_learning_rate_is_the_stability_edge():
    k_dd, _, _ = psd_kernels(6, 1, seed=9)
    y = np.random.RandomState(0).randn(6, 2)
    lr = max_learning_rate(k_dd.ntk, y_train_size=y.size)
    np.testing.assert_allclose(lr, 2 * y.size / np.linalg.eigvalsh(k_dd.ntk)[-1], rtol=1e-10)
    np.testing.assert_allclose(max_learning_rate(k_dd.ntk),
                               2 * 6 / np.linalg.eigvalsh(k_dd.ntk)[-1], rtol=1e-10)

    def residual(rate, momentum=0., steps=400):
        f, prev = np.zeros_like(y), np.zeros_like(y)
        for _ in range(steps):
            nxt = f - rate * k_dd.ntk @ (f - y) / y.size + momentum * (f - prev)
            f, prev = nxt, f
        return np.abs(f - y).max()

    assert residual(0.98 * lr) < 1e3 and residual(1.02 * lr) > 1e3
    lr_m = max_learning_rate(k_dd.ntk, y.size, momentum=0.5)
    np.testing.assert_allclose(lr_m, 1.5 * lr, rtol=1e-10)
    assert residual(0.98 * lr_m, 0.5) < 1e3 and residual(1.02 * lr_m, 0.5, 2000) > 1e3


def test_marginal_log_likelihood_equals_direct_computation():
    k_dd, _, _ = psd_kernels(7, 1, seed=4)
    y = np.random.RandomState(5).randn(7, 3)
    got = marginal_log_likelihood(k_dd.nngp, y)
    sign, logdet = np.linalg.slogdet(k_dd.nngp)
    assert sign > 0
    direct = sum(-0.5 * y[:, c] @ np.linalg.solve(k_dd.nngp, y[:, c]) - 0.5 * logdet
                 - 3.5 * math.log(2 * math.pi) for c in range(3))
    np.testing.assert_allclose(got, direct, rtol=1e-10)
    # as one Gaussian over all N·C outputs with covariance K ⊗ I
    big = np.kron(k_dd.nngp, np.eye(3))
    v = y.reshape(-1)
    dense = -0.5 * v @ np.linalg.solve(big, v) - 0.5 * np.linalg.slogdet(big)[1] \
        - 0.5 * v.size * math.log(2 * math.pi)
    np.testing.assert_allclose(got, dense, rtol=1e-10)
    # regularised, and picked from a kernel object
    reg = marginal_log_likelihood(k_dd, y, diag_reg=0.1, get='ntk')
    a = k_dd.ntk + 0.1 * np.trace(k_dd.ntk) / 7 * np.eye(7)
    direct = sum(-0.5 * y[:, c] @ np.linalg.solve(a, y[:, c]) - 0.5 * np.linalg.slogdet(a)[1]
                 - 3.5 * math.log(2 * math.pi) for c in range(3))
    np.testing.assert_allclose(reg, direct, rtol=1e-10)


# ------------------------------------------------------------------------------------------
# errors


def test_bad_inputs_raise_input_error():
    k_dd, k_td, _ = psd_kernels(5, 2)
    y = np.zeros((5, 1))
    with pytest.raises(InputError, match='rows'):
        gradient_descent_mse(k_dd.ntk, np.zeros((7, 1)))
    with pytest.raises(InputError, match='rows'):
        gp_inference(k_dd, np.zeros((4, 2)))
    with pytest.raises(InputError, match='square'):
        gradient_descent_mse(np.ones((5, 4)), y)
    with pytest.raises(InputError, match='square'):
        max_learning_rate(np.ones((5, 4)))
    with pytest.raises(InputError, match='non-negative'):
        gradient_descent_mse(k_dd.ntk, y)(-1., 0.)
    with pytest.raises(InputError, match='non-negative'):
        gradient_descent_mse(k_dd.ntk, y)(np.array([1., -2.]), 0.)
    with pytest.raises(InputError, match='non-negative'):
        gradient_descent(mse, k_dd.ntk, y)(-0.5, 0.)
    with pytest.raises(InputError, match='k_test_train'):
        gradient_descent_mse(k_dd.ntk, y)(1., 0., np.zeros((2, 1)))
    with pytest.raises(InputError, match='ntkgp'):
        gp_inference(k_dd, y)('nngpp', k_td)
    with pytest.raises(InputError, match="no 'ntk' kernel"):
        gp_inference(Kern(k_dd.nngp, None), y)('ntk', k_td)
    with pytest.raises(InputError, match='NNGP as well'):
        gp_inference(k_dd.ntk, y)('ntk', k_td.ntk, np.eye(2))
    with pytest.raises(InputError, match='trace_axes'):
        gradient_descent_mse(k_dd.ntk, y, trace_axes=(3,))


def test_numerical_failures_raise_numerical_error():
    y = np.ones((4, 1))
    rng = np.random.RandomState(0)
    v = rng.randn(4, 4)
    indefinite = v @ np.diag([2., 1., 0.5, -0.5]) @ v.T
    for call in (lambda: gp_inference(indefinite, y)('nngp', np.ones((1, 4))),
                 lambda: gradient_descent_mse(indefinite, y)(None, 0., 0., np.ones((1, 4))),
                 lambda: gradient_descent_mse(indefinite, y)(1., 0.),
                 lambda: marginal_log_likelihood(indefinite, y)):
        with pytest.raises(NumericalError, match='diag_reg') as err:
            call()
        assert 'float64' in str(err.value)
    # a rank-deficient PSD kernel fails Cholesky, and diag_reg fixes it
    low_rank = np.outer(np.arange(1., 5.), np.arange(1., 5.))
    with pytest.raises(NumericalError, match='Cholesky'):
        gp_inference(low_rank, y)('nngp', np.ones((1, 4)))
    assert np.isfinite(gp_inference(low_rank, y, diag_reg=1e-3)('nngp', np.ones((1, 4)))).all()
    with pytest.raises(NumericalError, match='NaN'):
        gp_inference(np.full((4, 4), np.nan), y)('nngp', np.ones((1, 4)))


# ------------------------------------------------------------------------------------------
# NT signature parity

# parameter names and defaults of neural_tangents 0.6.5 (`inspect.signature`)
NT_SIGNATURES = {
    'gp_inference': [('k_train_train', 'REQUIRED'), ('y_train', 'REQUIRED'), ('diag_reg', 0.),
                     ('diag_reg_absolute_scale', False), ('trace_axes', (-1,))],
    'gradient_descent_mse': [('k_train_train', 'REQUIRED'), ('y_train', 'REQUIRED'),
                             ('learning_rate', 1.), ('diag_reg', 0.),
                             ('diag_reg_absolute_scale', False), ('trace_axes', (-1,))],
    'gradient_descent_mse_ensemble': [('kernel_fn', 'REQUIRED'), ('x_train', 'REQUIRED'),
                                      ('y_train', 'REQUIRED'), ('learning_rate', 1.),
                                      ('diag_reg', 0.), ('diag_reg_absolute_scale', False),
                                      ('trace_axes', (-1,)),
                                      ('kernel_fn_train_train_kwargs', 'VAR_KEYWORD')],
    'gradient_descent': [('loss', 'REQUIRED'), ('k_train_train', 'REQUIRED'),
                         ('y_train', 'REQUIRED'), ('learning_rate', 1.), ('momentum', None),
                         ('trace_axes', (-1,))],
    'max_learning_rate': [('ntk_train_train', 'REQUIRED'), ('y_train_size', None),
                          ('momentum', 0.), ('eps', 1e-12)],
}


def signature_of(fn):
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.KEYWORD_ONLY:  # ntc's own extensions (e.g. solver='cg'), not in NT
            continue
        if p.kind == p.VAR_KEYWORD:
            out.append((p.name, 'VAR_KEYWORD'))
        else:
            out.append((p.name, 'REQUIRED' if p.default is p.empty else p.default))
    return out


@pytest.mark.parametrize('name', sorted(NT_SIGNATURES))
def test_signatures_match_neural_tangents(name):
    assert signature_of(getattr(predict, name)) == NT_SIGNATURES[name]


def test_gaussian_namedtuple():
    assert Gaussian._fields == ('mean', 'covariance')
    assert predict.ODEState._fields == ('fx_train', 'fx_test', 'qx_train', 'qx_test')
