"""predict tells the truth about accuracy (issue 19, section 4): ill-conditioned train kernels
warn or raise instead of returning wrong numbers, NaN arguments are refused by name, results are
checked to be finite, and conjugate gradients use a tolerance the dtype can reach.  Expected
values come from float64 numpy solves of the same (float32-rounded) matrices."""

import warnings

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest

import ntc
from ntc.errors import AccuracyWarning, InputError, NumericalError
from ntc.runtime import linalg, predict
from ntc.runtime.predict import (
    gp_inference,
    gradient_descent,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    marginal_log_likelihood,
    max_learning_rate,
)

N = 20


def spectrum_kernel(cond, n=N, seed=0, dtype=np.float32):
    """Q diag(λ) Qᵀ with λ log-spaced from 1 down to 1/cond, rounded to `dtype`."""
    q, _ = np.linalg.qr(np.random.RandomState(seed).randn(n, n))
    lam = np.logspace(0, -np.log10(cond), n)
    return ((q * lam) @ q.T).astype(dtype)


RNG = np.random.RandomState(1)
Y = RNG.randn(N, 2)
KT = RNG.randn(3, N)
K_BAD = spectrum_kernel(9e7)        # κ·ε(float32) ≈ 11: no correct digit
K_FAIR = spectrum_kernel(3e5)       # κ·ε(float32) ≈ 0.04: a few digits lost
K_GOOD = spectrum_kernel(1e2)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def f32(x):
    return jnp.asarray(x, jnp.float32)


def mse(fx, y):
    return 0.5 * jnp.mean((fx - y) ** 2)


def kernel_fn_of(k_all, n_train):
    """A kernel_fn over index inputs: x holds row numbers into the joint kernel `k_all`."""
    def kernel_fn(x1, x2, get, **_):
        i = np.asarray(x1, int).ravel()
        j = i if x2 is None else np.asarray(x2, int).ravel()
        k = jnp.asarray(k_all[np.ix_(i, j)])
        names = (get,) if isinstance(get, str) else get
        return {g: k for g in names} if len(names) > 1 else k
    return kernel_fn


# ------------------------------------------------------------------------------------------
# 1. ill-conditioned train kernels


def test_the_33_percent_example_is_refused():
    exact64 = K_BAD.astype(np.float64)
    assert np.linalg.cond(exact64) > 5e7, 'the float32 matrix keeps a condition of ~9e7'
    want = KT @ np.linalg.solve(exact64, Y)
    # independently of ntc: a float32 Cholesky solve of this matrix is far off
    c = jsl.cho_factor(f32(K_BAD), lower=True)
    plain = f32(KT) @ jsl.cho_solve(c, f32(Y))
    assert rel_err(plain, want) > 0.05
    with pytest.raises(NumericalError, match='ill-conditioned for float32') as err:
        gp_inference(f32(K_BAD), f32(Y))('nngp', f32(KT))
    assert 'diag_reg' in str(err.value) and 'float64' in str(err.value)
    assert 'train-train nngp kernel' in str(err.value)
    # the fixes the message names: float64, or a diagonal regulariser
    got64 = gp_inference(exact64, Y)('nngp', KT)
    assert rel_err(got64, want) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter('error', AccuracyWarning)
        reg = gp_inference(f32(K_BAD), f32(Y), diag_reg=1e-3)('nngp', f32(KT))
    a = exact64 + 1e-3 * np.trace(exact64) / N * np.eye(N)
    assert rel_err(reg, KT @ np.linalg.solve(a, Y)) < 1e-3


def test_a_few_lost_digits_warn_and_a_good_kernel_is_silent():
    want = KT @ np.linalg.solve(K_FAIR.astype(np.float64), Y)
    with pytest.warns(AccuracyWarning, match='relative errors up to about') as rec:
        got = gp_inference(f32(K_FAIR), f32(Y))('nngp', f32(KT))
    assert 'diag_reg' in str(rec[0].message)
    assert ntc.AccuracyWarning is AccuracyWarning and issubclass(AccuracyWarning, UserWarning)
    assert rel_err(got, want) < 0.5     # within the warned bound, not silently exact
    with warnings.catch_warnings():
        warnings.simplefilter('error', AccuracyWarning)
        got = gp_inference(f32(K_GOOD), f32(Y))('nngp', f32(KT))
        assert rel_err(got, KT @ np.linalg.solve(K_GOOD.astype(np.float64), Y)) < 1e-4
        # the same ill-conditioned matrix in float64 is fine
        gp_inference(K_BAD.astype(np.float64), Y)('nngp', KT)


def test_condition_estimate_is_a_tight_lower_bound():
    for k in (K_BAD, K_FAIR, K_GOOD):
        a = f32(k)
        est = linalg._condition_lower_bound(jnp.linalg.cholesky(a), a)
        true = np.linalg.cond(k.astype(np.float64))
        assert 0.3 * true <= est <= 1.01 * true


@pytest.mark.parametrize('entry', ['gp_inference_ntk', 'gd_mse_inf_time', 'gd_mse_t_inf',
                                   'ensemble_t_none', 'ensemble_t_inf', 'mll', 'cg'])
def test_every_solving_entry_point_refuses_the_ill_conditioned_kernel(entry):
    k, y, kt = f32(K_BAD), f32(Y), f32(KT)
    k_all = np.zeros((N + 3, N + 3), np.float32)
    k_all[:N, :N], k_all[N:, :N], k_all[:N, N:] = K_BAD, KT, KT.T
    k_all[N:, N:] = np.eye(3)
    x_train, x_test = np.arange(N)[:, None], np.arange(N, N + 3)[:, None]
    calls = {
        'gp_inference_ntk': lambda: gp_inference(k, y)('ntk', kt),
        'gd_mse_inf_time': lambda: gradient_descent_mse(k, y)(None, None, 0., kt),
        'gd_mse_t_inf': lambda: gradient_descent_mse(k, y)(np.inf, None, 0., kt),
        'ensemble_t_none': lambda: gradient_descent_mse_ensemble(
            kernel_fn_of(k_all, N), x_train, y)(None, x_test, 'ntk'),
        'ensemble_t_inf': lambda: gradient_descent_mse_ensemble(
            kernel_fn_of(k_all, N), x_train, y)(np.inf, x_test, 'nngp'),
        'mll': lambda: marginal_log_likelihood(k, y),
        'cg': lambda: gp_inference(k, y, solver='cg')('nngp', kt),
    }
    with pytest.raises(NumericalError, match='diag_reg'):
        calls[entry]()


def test_finite_time_dynamics_are_well_conditioned():
    # exp / φ at a short time are insensitive to the small eigenvalues: no warning, and the
    # result matches the float64 eigen-solution of the same matrix
    k64 = K_BAD.astype(np.float64)
    t = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter('error', AccuracyWarning)
        got = gradient_descent_mse(f32(K_BAD), f32(Y))(t, None, 0., f32(KT))
    lam, v = np.linalg.eigh(k64)
    tau = t / Y.size
    phi = np.where(lam > 0, -np.expm1(-lam * tau) / np.where(lam > 0, lam, 1), tau)
    want = KT @ v @ (phi[:, None] * (v.T @ Y))
    assert rel_err(got, want) < 1e-3


# ------------------------------------------------------------------------------------------
# 2. NaN and out-of-range arguments


def nan_at(a, idx=(0, 0)):
    a = np.array(a, np.float64)
    a[idx] = np.nan
    return a


def test_nan_arguments_are_refused_by_name():
    k = K_GOOD.astype(np.float64)
    tt = np.eye(3)
    cases = [
        ('y_train', lambda: gp_inference(k, nan_at(Y))),
        ('k_test_train', lambda: gp_inference(k, Y)('nngp', nan_at(KT))),
        ('k_test_test', lambda: gp_inference(k, Y)('nngp', KT, nan_at(tt))),
        ('k_test_test', lambda: gp_inference({'nngp': k, 'ntk': k}, Y)(
            'ntk', {'nngp': KT, 'ntk': KT}, {'nngp': nan_at(tt)})),
        ('y_train', lambda: gradient_descent_mse(k, nan_at(Y))),
        ('k_test_train', lambda: gradient_descent_mse(k, Y)(1., None, 0., nan_at(KT))),
        ('fx_train_0', lambda: gradient_descent_mse(k, Y)(1., nan_at(Y))),
        ('learning_rate', lambda: gradient_descent_mse(k, Y, learning_rate=np.nan)),
        ('learning_rate', lambda: gradient_descent_mse(k, Y, learning_rate=-0.5)),
        ('learning_rate', lambda: gradient_descent(mse, k, Y, learning_rate=np.nan)),
        ('learning_rate', lambda: gradient_descent(mse, k, Y, learning_rate=-1.)),
        ('k_train_train', lambda: gradient_descent(mse, nan_at(k), Y)),
        ('y_train', lambda: gradient_descent(mse, k, nan_at(Y))),
        ('k_test_train', lambda: gradient_descent(mse, k, Y)(1., 0., 0., nan_at(KT))),
        ('momentum', lambda: gradient_descent(mse, k, Y, momentum=np.nan)),
        ('learning_rate', lambda: gradient_descent_mse_ensemble(
            kernel_fn_of(k, N), np.arange(N)[:, None], Y, learning_rate=-1.)),
        ('y_train', lambda: gradient_descent_mse_ensemble(
            kernel_fn_of(k, N), np.arange(N)[:, None], nan_at(Y))),
        ('y_train', lambda: marginal_log_likelihood(k, nan_at(Y))),
        ('time t', lambda: gradient_descent_mse(k, Y)(np.nan, 0.)),
        ('time t', lambda: gradient_descent(mse, k, Y)(np.array([1., np.nan]), 0.)),
        ('time t', lambda: gradient_descent_mse_ensemble(
            kernel_fn_of(k, N), np.arange(N)[:, None], Y)(np.nan)),
    ]
    for name, call in cases:
        with pytest.raises(InputError, match=name):
            call()


def test_nan_from_the_kernel_fn_of_an_ensemble_is_named():
    k_all = np.eye(N + 3)
    k_all[N, 0] = k_all[0, N] = np.nan
    fn = gradient_descent_mse_ensemble(kernel_fn_of(k_all, N), np.arange(N)[:, None], Y)
    with pytest.raises(NumericalError, match="kernel_fn returned a 'ntk' test-train kernel"):
        fn(1., np.arange(N, N + 3)[:, None], 'ntk')


def test_traced_arguments_are_not_checked_and_still_work():
    k = K_GOOD.astype(np.float64)
    eager = gp_inference(k, Y)('nngp', KT)
    traced = jax.jit(lambda y, kt: gp_inference(k, y)('nngp', kt))(Y, KT)
    np.testing.assert_allclose(traced, eager, rtol=1e-10)
    eager = gradient_descent_mse(k, Y, learning_rate=0.5)(3., None, 0., KT)
    traced = jax.jit(lambda lr, t: gradient_descent_mse(k, Y, learning_rate=lr)(t, None, 0., KT))(
        0.5, 3.)
    np.testing.assert_allclose(traced, eager, rtol=1e-10)


def test_max_learning_rate_refuses_kernels_that_are_not_psd():
    with pytest.raises(NumericalError, match='not positive semi-definite'):
        max_learning_rate(-np.eye(3))
    v = np.random.RandomState(0).randn(4, 4)
    with pytest.raises(NumericalError, match='not positive semi-definite'):
        max_learning_rate(v @ np.diag([2., 1., 0.5, -0.5]) @ v.T)
    with pytest.raises(InputError, match='y_train_size'):
        max_learning_rate(np.eye(3), y_train_size=0)
    with pytest.raises(InputError, match='momentum'):
        max_learning_rate(np.eye(3), momentum=np.nan)
    # a PSD kernel: 2 n / λ_max, and a rank-deficient (PSD) one is fine
    assert max_learning_rate(np.diag([1., 4.]), 2) == pytest.approx(2 * 2 / 4)
    assert max_learning_rate(np.outer([1., 2.], [1., 2.]), 2) == pytest.approx(2 * 2 / 5)


# ------------------------------------------------------------------------------------------
# 4. results must be finite


def test_non_finite_results_raise_numerical_error():
    big = np.full((2, 1), 3e38, np.float32)           # finite in float32, the sum is not
    with pytest.raises(NumericalError, match="gp_inference 'nngp' posterior is not finite"):
        gp_inference(f32(np.eye(2)), big)('nngp', f32([[10., 10.]]))
    with pytest.raises(NumericalError, match='gradient_descent_mse prediction is not finite'):
        gradient_descent_mse(f32(np.eye(2)), big)(None, None, 0., f32([[10., 10.]]))

    def explosive(fx, y):               # df/dt = 3 f² / n: blows up before t = 1
        return -jnp.sum(fx ** 3) + 0 * jnp.sum(y)
    with pytest.raises(NumericalError, match='gradient_descent prediction is not finite'):
        gradient_descent(explosive, np.eye(2), np.zeros((2, 1)))(5., np.ones((2, 1)))


# ------------------------------------------------------------------------------------------
# 3. conjugate gradients in float32


def test_cg_default_tolerance_follows_the_dtype():
    assert predict.cg_default_tol(jnp.float64) == 1e-10
    eps32 = float(jnp.finfo(jnp.float32).eps)
    assert predict.cg_default_tol(jnp.float32) == pytest.approx(100 * eps32)
    # the example: a float32 kernel of condition 4.6 is solved, not refused
    q, _ = np.linalg.qr(np.random.RandomState(1).randn(40, 40))
    a64 = (q * np.linspace(1, 4.6, 40)) @ q.T
    a = a64.astype(np.float32)
    y = np.random.RandomState(2).randn(40, 2)
    with warnings.catch_warnings():
        warnings.simplefilter('error', AccuracyWarning)
        fn = gp_inference(f32(a), f32(y), solver='cg')
        got = fn('nngp', f32(a64[:5]))
    want = a64[:5] @ np.linalg.solve(a.astype(np.float64), y)
    assert rel_err(got, want) < 1e-4
    info = fn.solver_info['nngp'][0]
    assert info.converged and info.residual <= 10 * 100 * eps32
    assert 4.0 < info.condition_estimate < 4.7
    # float64 keeps its 1e-10 target
    fn = gp_inference(a64, y, solver='cg')
    fn('nngp', a64[:5])
    assert fn.solver_info['nngp'][0].residual <= 1e-9
    assert fn.solver_info['nngp'][0].residuals[-1] <= 1e-10



def test_checks_inside_a_jit_trace_see_constants_and_skip_tracers():
    k_all = np.eye(N + 3) + 0.1
    x_train, x_test = np.arange(N)[:, None], np.arange(N, N + 3)[:, None]
    fn = kernel_fn_of(k_all, N)
    eager = gradient_descent_mse_ensemble(fn, x_train, Y)(2., x_test, 'nngp')
    traced = jax.jit(lambda y: gradient_descent_mse_ensemble(fn, x_train, y)(2., x_test, 'nngp'))
    np.testing.assert_allclose(traced(Y), eager, rtol=1e-10)
    # a predictor built outside jit factorises its (concrete) kernel eagerly: checked in a trace
    for k in (f32(K_BAD), K_BAD):
        bad = gp_inference(k, f32(Y))
        with pytest.raises(NumericalError, match='ill-conditioned for float32'):
            jax.jit(lambda kt, fn=bad: fn('nngp', kt))(f32(KT))
