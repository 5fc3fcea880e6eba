"""Inference with NNGP / NTK kernels: GP posteriors, gradient-descent dynamics, likelihoods.

Drop-in for `neural_tangents.predict` (same names, arguments, defaults and return conventions):

- `gp_inference`: exact GP posterior with the NNGP, the infinite-time NTK ensemble, or the
  NTK-GP (Rasmussen & Williams 2006, ch. 2; Lee et al. 2019, "Wide neural networks of any
  depth evolve as linear models under gradient descent", eqs. 15-16; He et al. 2020, "Bayesian
  deep ensembles via the neural tangent kernel").
- `gradient_descent_mse`: closed-form function-space gradient flow on the MSE loss
  (Jacot et al. 2018; Lee et al. 2019, eq. 9).
- `gradient_descent_mse_ensemble`: mean and covariance of an infinite ensemble of infinitely
  wide networks trained by gradient flow, at any time (Lee et al. 2019, eqs. 13-16).
- `gradient_descent`: function-space dynamics for an arbitrary loss, optionally with
  momentum, by ODE integration (Lee et al. 2019, eq. 6; Qian 1999 for the momentum ODE).
- `max_learning_rate`, `marginal_log_likelihood`.

Conventions, as in NT: the MSE loss is ``0.5 * mean((f - y) ** 2)``, i.e. normalised by
``y_train.size``, so gradient flow reads ``df/dt = -lr * K (f - y) / y_train.size``; ``diag_reg`` is
multiplied by the mean of the diagonal of the train kernel unless ``diag_reg_absolute_scale``;
kernels lack the pairs of ``trace_axes`` and stand for ``K ⊗ I`` along them (``trace_axes=(-1,)``:
an N×N kernel is shared by all C output channels).  Everything here works on the N×N blocks with
C right-hand sides; the (N·C)×(N·C) matrix is never formed.  The train kernel is factorised once
(Cholesky for ``t=None``, one eigendecomposition for finite times) and cached.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections import namedtuple
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.experimental import ode

from ..errors import AccuracyWarning, InputError, NumericalError

__all__ = ['Gaussian', 'ODEState', 'CGInfo', 'cg_solve', 'cg_default_tol', 'gp_inference',
           'gradient_descent_mse', 'gradient_descent_mse_ensemble', 'gradient_descent',
           'max_learning_rate', 'marginal_log_likelihood']

_FIX = ('pass diag_reg > 0 (e.g. diag_reg=1e-6) to regularise the kernel, or compute it in '
        "float64 (jax.config.update('jax_enable_x64', True))")

# A solve with a matrix of condition number κ in a precision of machine epsilon ε can carry a
# relative error of about κ·ε (Higham 2002, sec. 10.1).  Above _WARN_AT ntc warns, above _RAISE_AT
# (no correct digit left) it refuses.
_WARN_AT = 1e-2
_RAISE_AT = 1.0


class Gaussian(NamedTuple):
    """A ``(mean, covariance)`` pair: mean shaped like the outputs, covariance like the kernel."""

    mean: Any
    covariance: Any


class ODEState(NamedTuple):
    """State of the `gradient_descent` ODE: outputs and, with momentum, their velocities."""

    fx_train: Any = None
    fx_test: Any = None
    qx_train: Any = None
    qx_test: Any = None


# ---------------------------------------------------------------------------------------------
# helpers


def _concrete(*xs) -> bool:
    """True when no argument is a tracer, i.e. values can be inspected (checks are skipped
    under `jax.jit`)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def _canon_axes(axes, ndim: int, what: str = 'trace_axes') -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise InputError(f'{what}={axes} is out of range for outputs with {ndim} axes')
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise InputError(f'{what}={axes} repeats an axis')
    return tuple(sorted(out))


def _canon_get(get, allowed, default=('nngp', 'ntk')):
    """(names, single): `get` as a tuple of lower-case names, and whether it was a string."""
    if get is None:
        return tuple(default), False
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    if not names:
        raise InputError('get must name at least one kernel, got an empty tuple')
    names = tuple(str(g).lower() for g in names)
    if len(set(names)) != len(names):
        raise InputError(f'get={get!r} repeats a name')
    for g in names:
        if g not in allowed:
            raise InputError(f'get={get!r}: {g!r} is not one of {allowed}')
    return names, single


def _package(out: dict, names, single, type_name):
    if single:
        return out[names[0]]
    return namedtuple(type_name, names)(*(out[g] for g in names))


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) or (hasattr(x, 'shape') and hasattr(x, 'dtype')
                                                      and not hasattr(x, 'nngp'))


def _attr(k, g: str, what: str):
    """Kernel `g` from an array, a dict, or an object / namedtuple with `.nngp` / `.ntk`."""
    if k is None:
        return None
    if _is_array(k):
        return jnp.asarray(k)
    v = k.get(g) if isinstance(k, dict) else getattr(k, g, None)
    if v is None:
        raise InputError(f'{what} has no {g!r} kernel: compute it with get including {g!r}')
    return jnp.asarray(v)


def _first(k, what: str):
    if _is_array(k):
        return jnp.asarray(k)
    for g in ('nngp', 'ntk'):
        v = k.get(g) if isinstance(k, dict) else getattr(k, g, None)
        if v is not None:
            return jnp.asarray(v)
    raise InputError(f'{what} is neither an array nor holds an nngp / ntk kernel')


def _as_matrix(k):
    """A kernel with axes (a0, b0, a1, b1, ...) as the matrix (a0·a1·..., b0·b1·...)."""
    n = k.ndim // 2
    k = jnp.transpose(k, tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2)))
    return k.reshape(math.prod(k.shape[:n]), math.prod(k.shape[n:]))


def _from_matrix(m, shape_a, shape_b, n_lead: int = 0):
    """Inverse of `_as_matrix` on the last two axes of `m` (leading axes kept)."""
    lead = m.shape[:n_lead]
    m = m.reshape(lead + tuple(shape_a) + tuple(shape_b))
    n = len(shape_a)
    perm = list(range(n_lead)) + [n_lead + i + s * n for i in range(n) for s in (0, 1)]
    return jnp.transpose(m, perm)


class _Layout:
    """Where the traced (channel) axes of the targets are: moves them to the end and back."""

    def __init__(self, y_train, trace_axes):
        self.ndim = y_train.ndim
        self.trace = _canon_axes(trace_axes, self.ndim)
        self.neg = tuple(a - self.ndim for a in self.trace)
        self.rest = tuple(a for a in range(self.ndim) if a not in self.trace)
        self.trace_shape = tuple(y_train.shape[a] for a in self.trace)
        self.rest_shape = tuple(y_train.shape[a] for a in self.rest)
        self.n_cols = math.prod(self.trace_shape)

    def flat(self, y):
        """Targets-shaped array (plus leading axes) -> (..., rows, channels)."""
        lead = y.ndim - self.ndim
        y = jnp.moveaxis(y, tuple(lead + a for a in self.trace), self.neg)
        return y.reshape(y.shape[:lead] + (-1, self.n_cols))

    def unflat(self, z, rest_shape):
        """(..., rows, channels) -> outputs with `rest_shape` rows and the channel axes put back."""
        lead = z.shape[:-2]
        z = z.reshape(lead + tuple(rest_shape) + self.trace_shape)
        return jnp.moveaxis(z, tuple(range(-len(self.trace), 0)), self.neg)

    def out_shape(self, rest_shape):
        shape = list(rest_shape)
        for a in self.trace:
            shape.insert(a, None)
        it = iter(self.trace_shape)
        return tuple(next(it) if s is None else s for s in shape)


def _check_train_kernel(k, layout: _Layout, what: str = 'k_train_train'):
    if k.ndim % 2 or k.ndim == 0:
        raise InputError(f'{what} must have an even number of axes (pairs (x1, x2) per output '
                         f'axis), got shape {k.shape}')
    if k.shape[::2] != k.shape[1::2]:
        raise InputError(f'{what} must be square (the train-train kernel), got shape {k.shape}')
    if k.shape[::2] != layout.rest_shape:
        raise InputError(
            f'y_train has {layout.rest_shape} rows (shape {layout.ndim}-D with trace_axes='
            f'{layout.trace}) but {what} has shape {k.shape}, i.e. {k.shape[::2]} rows: the '
            'number of training targets must match the train kernel')


def _check_test_kernel(k, layout: _Layout, what: str = 'k_test_train'):
    if k.ndim != 2 * len(layout.rest) or k.shape[1::2] != layout.rest_shape:
        raise InputError(f'{what} must have shape zip(test shape, {layout.rest_shape}) (x_test '
                         f'first, x_train second), got {k.shape}')
    return k.shape[::2]


def _check_finite(m, what: str):
    if not _concrete(m):
        return
    with jax.ensure_compile_time_eval():
        ok = bool(jnp.all(jnp.isfinite(m)))
    if not ok:
        raise NumericalError(f'{what} contains NaN or infinite entries', hint=_FIX)


def _check_input(x, what: str):
    """Refuse NaN / infinite entries in a concrete argument (skipped when traced)."""
    if x is None or not _concrete(x):
        return
    with jax.ensure_compile_time_eval():    # a constant inside a jit trace stays concrete
        a = jnp.asarray(x)
        ok = not jnp.issubdtype(a.dtype, jnp.inexact) or bool(jnp.all(jnp.isfinite(a)))
        bad = 0 if ok else int(jnp.sum(~jnp.isfinite(a)))
    if not ok:
        raise InputError(f'{what} has {bad} NaN or infinite entr{"y" if bad == 1 else "ies"}',
                         hint=f'pass a finite {what}')


def _check_positive(x, what: str):
    """A concrete scalar hyper-parameter must be finite and > 0 (skipped when traced)."""
    if not _concrete(x):
        return
    v = np.asarray(x)
    if v.size != 1 or not np.isfinite(v).all() or not float(v.reshape(())) > 0:
        raise InputError(f'{what} must be a finite number > 0, got {x!r}')


def _check_results(out, what: str):
    """Concrete predictions must be finite: else NumericalError naming the output."""
    leaves = [x for x in jax.tree_util.tree_leaves(out) if x is not None]
    if not _concrete(*leaves):
        return
    for x in leaves:
        with jax.ensure_compile_time_eval():
            bad = int(jnp.sum(~jnp.isfinite(x)))
        if bad:
            raise NumericalError(f'{what} is not finite: {bad} NaN or infinite entries in the '
                                 'result', hint=_FIX)


def _check_accuracy(cond: float, dtype, what: str):
    """Warn (`AccuracyWarning`) or raise (`NumericalError`) when a solve with a matrix of
    condition number at least `cond` cannot be trusted in `dtype` (κ·ε above _WARN_AT or
    _RAISE_AT)."""
    eps = float(jnp.finfo(dtype).eps)
    loss = cond * eps
    if not loss > _WARN_AT:          # also catches NaN estimates, which the callers rule out
        return
    text = (f'the {what} is ill-conditioned for {jnp.dtype(dtype).name} (condition number '
            f'at least {cond:.3g}, machine epsilon {eps:.3g})')
    if loss >= _RAISE_AT:
        raise NumericalError(f'{text}: its solution has no correct digit', hint=_FIX)
    warnings.warn(AccuracyWarning(f'{text}: results may carry relative errors up to about '
                                  f'{loss:.2g} ({_FIX})'), stacklevel=4)


def _condition_lower_bound(low, a, steps: int = 8) -> float:
    """A cheap lower bound on the condition number of ``a = low lowᵀ`` (concrete): the larger of
    ``(max L_ii / min L_ii)²`` (the L_ii are the eigenvalues of the triangular factor) and the
    ratio of Rayleigh-quotient estimates of λ_max (power iteration) and λ_min (inverse iteration
    with the factor), which approach the extreme eigenvalues from inside.  O(steps·n²)."""
    d = jnp.abs(jnp.diagonal(low))
    if float(jnp.min(d)) == 0:
        return math.inf
    diag_bound = float(jnp.max(d) / jnp.min(d)) ** 2
    v0 = np.random.default_rng(0).standard_normal(a.shape[0])
    v = jnp.asarray(v0 / np.linalg.norm(v0), a.dtype)
    w = v
    for _ in range(steps):
        v = a @ v
        v = v / jnp.linalg.norm(v)
        w = jsl.cho_solve((low, True), w)
        w = w / jnp.linalg.norm(w)
    top = float(v @ (a @ v))
    inv = float(w @ jsl.cho_solve((low, True), w))   # ≤ 1 / λ_min
    if not (math.isfinite(top) and math.isfinite(inv)) or inv <= 0 or top <= 0:
        return math.inf
    return max(diag_bound, top * inv)


def _regularize(a, diag_reg, absolute):
    n = a.shape[0]
    scale = diag_reg if absolute else diag_reg * jnp.trace(a) / n
    return a + scale * jnp.eye(n, dtype=a.dtype)


def _cholesky(a, what: str):
    """Lower Cholesky factor; a NaN factor (the matrix is not positive definite) raises."""
    _check_finite(a, what)
    low = jnp.linalg.cholesky(a)
    if _concrete(low) and not bool(jnp.all(jnp.isfinite(low))):
        lo = float(jnp.linalg.eigvalsh(a)[0])
        raise NumericalError(f'Cholesky factorisation of the {a.shape[0]}x{a.shape[0]} {what} '
                             f'failed: it is not positive definite (smallest eigenvalue {lo:.3g})',
                             hint=_FIX)
    if _concrete(low):
        _check_accuracy(_condition_lower_bound(low, a), a.dtype, what)
    return low


def _eigh(a, what: str):
    """Eigendecomposition of a PSD matrix; eigenvalues clipped at 0, clearly negative ones raise."""
    _check_finite(a, what)
    evals, evecs = jnp.linalg.eigh(a)
    if _concrete(evals):
        if not bool(jnp.all(jnp.isfinite(evals))) or not bool(jnp.all(jnp.isfinite(evecs))):
            raise NumericalError(f'eigendecomposition of the {what} failed', hint=_FIX)
        top = float(jnp.max(jnp.abs(evals)))
        tol = 10 * max(a.shape[0], 10) * float(jnp.finfo(a.dtype).eps) * top
        if float(evals[0]) < -tol:
            raise NumericalError(f'the {what} is not positive semi-definite: smallest eigenvalue '
                                 f'{float(evals[0]):.3g}, largest {float(evals[-1]):.3g}',
                                 hint=_FIX)
    return jnp.maximum(evals, 0.), evecs


def _times(t, scale, dtype):
    t = jnp.asarray(t, dtype)
    if _concrete(t):
        if bool(jnp.any(jnp.isnan(t))):
            raise InputError(f'time t must not be NaN, got {t}')
        if bool(jnp.any(t < 0)):
            raise InputError(f'time t must be non-negative, got {t}')
    return t * scale


def _decay(lam, tau):
    """exp(-lam * tau) with the convention exp(-0 * inf) = 1 (an untrained mode stays put)."""
    return jnp.where(lam > 0, jnp.exp(-lam * tau), 1.)


def _phi(lam, tau):
    """(1 - exp(-lam * tau)) / lam: tau at lam = 0 (0 when also tau = inf: pseudo-inverse)."""
    safe = jnp.where(lam > 0, lam, 1.)
    zero = jnp.where(jnp.isinf(tau), 0., tau)
    return jnp.where(lam > 0, -jnp.expm1(-lam * tau) / safe, zero)


def _check_phi_accuracy(lam, tau, dtype, what: str):
    """Test predictions at time τ apply φ(λ, τ) = (1 - exp(-λτ)) / λ to the eigenvalues λ of the
    train kernel; their sensitivity to rounding is that of a solve with the effective condition
    number λ_max · min(τ, 1 / λ_min), checked like a Cholesky solve (concrete values only)."""
    if not _concrete(lam, tau):
        return
    with jax.ensure_compile_time_eval():
        top, low = float(jnp.max(lam)), float(jnp.min(lam))
        t_max = float(jnp.max(tau)) if jnp.size(tau) else 0.
    if top <= 0 or t_max <= 0:
        return
    reach = t_max if low <= 0 else min(t_max, 1. / low)
    _check_accuracy(top * reach, dtype, what)


def _dtype(*xs):
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


class _Factor:
    """Lazily computed and cached Cholesky / eigendecomposition of a regularised train kernel."""

    def __init__(self, k, dtype, diag_reg, absolute, what):
        # built eagerly, so a concrete kernel stays concrete inside a `jax.jit` trace
        with jax.ensure_compile_time_eval():
            self.raw = _as_matrix(jnp.asarray(k)).astype(dtype)
            self.mat = _regularize(self.raw, diag_reg, absolute)
        self.dtype = self.mat.dtype
        self.what = what
        self._chol = None
        self._eig = None

    # The factorisations are computed eagerly even when first needed inside a `jax.jit` trace
    # of a predict_fn (the kernel is a constant there), so the cache never holds a tracer.

    def solve(self, b):
        if self._chol is None:
            with jax.ensure_compile_time_eval():
                self._chol = _cholesky(self.mat, self.what)
        return jsl.cho_solve((self._chol, True), b)

    def eig(self):
        if self._eig is None:
            with jax.ensure_compile_time_eval():
                self._eig = _eigh(self.mat, self.what)
        return self._eig


# ---------------------------------------------------------------------------------------------
# closed-form MSE dynamics


def gradient_descent_mse(k_train_train, y_train, learning_rate: float = 1.,
                         diag_reg: float = 0., diag_reg_absolute_scale: bool = False,
                         trace_axes=(-1,)):
    """Closed-form gradient flow on the MSE loss in function space.

    With ``K`` the (regularised) train kernel and ``n = y_train.size``,
    ``f_train(t) = y + exp(-lr t K / n) (f_train(0) - y)`` and
    ``f_test(t) = f_test(0) - K_td K^{-1} (I - exp(-lr t K / n)) (f_train(0) - y)``
    (Jacot et al. 2018; Lee et al. 2019, eq. 9), evaluated in the eigenbasis of ``K``.

    Returns ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` giving
    ``fx_train_t``, ``fx_test_t`` or both (a tuple), with leading axes ``t.shape`` when ``t`` is
    an array.  ``t=None`` is infinite time, computed with a Cholesky solve.
    """
    y_train = jnp.asarray(y_train)
    k_train_train = jnp.asarray(k_train_train)
    layout = _Layout(y_train, trace_axes)
    _check_train_kernel(k_train_train, layout)
    _check_input(y_train, 'y_train')
    _check_positive(learning_rate, 'learning_rate')
    dtype = _dtype(k_train_train, y_train)
    y = y_train.astype(dtype)
    n = y_train.size
    fac = _Factor(k_train_train, dtype, diag_reg, diag_reg_absolute_scale, 'train-train kernel')

    def predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None):
        """Outputs on the train [and test] set after training for time[s] `t`."""
        _check_inputs(fx_train_0, fx_test_0, k_test_train)
        if fx_test_0 is not None:
            _check_input(k_test_train, 'k_test_train')
            k_td = jnp.asarray(k_test_train)
            test_rest = _check_test_kernel(k_td, layout)
            k_td = _as_matrix(k_td).astype(dtype)
            fx_test_0 = jnp.broadcast_to(jnp.asarray(fx_test_0, dtype),
                                         layout.out_shape(test_rest))
        if fx_train_0 is not None:
            fx_train_0 = jnp.broadcast_to(jnp.asarray(fx_train_0, dtype), y.shape)
        r = layout.flat(-y if fx_train_0 is None else fx_train_0 - y)   # (P, C)

        if t is None:
            fx_train_t = y
            if fx_test_0 is not None:
                fx_test_t = fx_test_0 + layout.unflat(k_td @ fac.solve(-r), test_rest)
        else:
            tau = _times(t, learning_rate / n, dtype)
            lam, v = fac.eig()
            lam_t = lam.reshape((1,) * tau.ndim + lam.shape)
            tau_e = tau[..., None]
            coef = v.T @ r                                               # (P, C)
            if fx_train_0 is not None:
                d = jnp.einsum('pi,...i,ic->...pc', v, _decay(lam_t, tau_e) - 1., coef)
                fx_train_t = fx_train_0 + layout.unflat(d, layout.rest_shape)
            if fx_test_0 is not None:
                _check_phi_accuracy(lam, tau, dtype, fac.what)
                d = jnp.einsum('qp,pi,...i,ic->...qc', k_td, v, _phi(lam_t, tau_e), coef)
                fx_test_t = fx_test_0 - layout.unflat(d, test_rest)

        if fx_test_0 is None:
            out = fx_train_t
        elif fx_train_0 is None:
            out = fx_test_t
        else:
            out = fx_train_t, fx_test_t
        _check_results(out, 'gradient_descent_mse prediction')
        return out

    return predict_fn


def _check_inputs(fx_train_0, fx_test_0, k_test_train):
    _check_input(fx_train_0, 'fx_train_0')
    _check_input(fx_test_0, 'fx_test_0')
    if fx_train_0 is None and fx_test_0 is None:
        raise InputError('fx_train_0 and fx_test_0 are both None: nothing to predict')
    if fx_test_0 is not None and k_test_train is None:
        raise InputError('predictions on the test set (fx_test_0 given) need k_test_train')


# ---------------------------------------------------------------------------------------------
# ODE dynamics for any loss


def gradient_descent(loss: Callable, k_train_train, y_train, learning_rate: float = 1.,
                     momentum: float | None = None, trace_axes=(-1,)):
    """Function-space gradient flow for an arbitrary loss, by ODE integration.

    Integrates ``df/dt = -K ∇_f loss(f, y)`` (Lee et al. 2019, eq. 6) with time in units of
    ``learning_rate``.  With ``momentum`` (heavy ball, not Nesterov) it integrates the
    continuous-time limit ``df/ds = q``, ``dq/ds = -K ∇_f loss + (momentum - 1) / sqrt(lr) q``
    with ``s = sqrt(lr) t`` (Qian 1999), as NT does.

    Returns ``predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None)``;
    pass an `ODEState` to get one back (with the momentum variables).  ``t`` may be any array
    of non-negative times (leading output axes ``t.shape``); ``t=None`` or ``inf`` integrates
    until the state stops changing and raises `NumericalError` if it never does (e.g. a
    cross-entropy loss on separable data has no finite minimiser).
    """
    y_train = jnp.asarray(y_train)
    k_train_train = jnp.asarray(k_train_train)
    layout = _Layout(y_train, trace_axes)
    _check_train_kernel(k_train_train, layout)
    _check_input(k_train_train, 'k_train_train')
    _check_input(y_train, 'y_train')
    _check_positive(learning_rate, 'learning_rate')
    if momentum is not None and _concrete(momentum) and not np.isfinite(momentum):
        raise InputError(f'momentum must be finite, got {momentum!r}')
    dtype = _dtype(k_train_train, y_train)
    k_dd = _as_matrix(k_train_train).astype(dtype)
    y = y_train.astype(dtype)
    grad_loss = jax.grad(lambda fx: loss(fx, y))
    if momentum is None:
        time_scale, friction = learning_rate, None
    else:
        time_scale = learning_rate ** 0.5
        friction = (momentum - 1.) / time_scale

    def rhs(state, _t, k_td):
        """Time derivative of the ODE state (defined once, so odeint's compilation is reused)."""
        g = layout.flat(grad_loss(state.fx_train))
        d_tr = -layout.unflat(k_dd @ g, layout.rest_shape)
        d_te = None
        if state.fx_test is not None:
            test_rest = tuple(n for i, n in enumerate(state.fx_test.shape)
                              if i not in layout.trace)
            d_te = -layout.unflat(k_td @ g, test_rest)
        if momentum is None:
            return ODEState(d_tr, d_te)
        d_tr = d_tr + friction * state.qx_train
        if d_te is not None:
            d_te = d_te + friction * state.qx_test
        return ODEState(state.qx_train, state.qx_test, d_tr, d_te)

    def predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None):
        """Outputs (or the full `ODEState`) on the train [and test] set at time[s] `t`."""
        is_state = isinstance(fx_train_or_state_0, ODEState)
        if is_state:
            if fx_test_0 is not None:
                raise InputError('fx_test_0 is part of the ODEState passed; leave it None')
            s0 = fx_train_or_state_0
            fx_train_0, fx_test_0, q_train_0, q_test_0 = s0
        else:
            fx_train_0, q_train_0, q_test_0 = fx_train_or_state_0, None, None
        _check_inputs(fx_train_0, fx_test_0, k_test_train)
        if momentum is None and (q_train_0 is not None or q_test_0 is not None):
            raise InputError('the ODEState has momentum variables but momentum is None')

        k_td, test_shape = None, None
        if k_test_train is not None:
            _check_input(k_test_train, 'k_test_train')
            k_td = jnp.asarray(k_test_train)
            test_rest = _check_test_kernel(k_td, layout)
            test_shape = layout.out_shape(test_rest)
            k_td = _as_matrix(k_td).astype(dtype)
        train_out = fx_train_0 is not None
        fx_tr = (jnp.zeros(y.shape, dtype) if fx_train_0 is None else
                 jnp.broadcast_to(jnp.asarray(fx_train_0, dtype), y.shape))
        fx_te = (None if fx_test_0 is None else
                 jnp.broadcast_to(jnp.asarray(fx_test_0, dtype), test_shape))
        if momentum is None:
            q_tr = q_te = None
        else:
            q_tr = (jnp.zeros(y.shape, dtype) if q_train_0 is None else
                    jnp.broadcast_to(jnp.asarray(q_train_0, dtype), y.shape))
            q_te = (None if fx_te is None else jnp.zeros(test_shape, dtype) if q_test_0 is None
                    else jnp.broadcast_to(jnp.asarray(q_test_0, dtype), test_shape))
        state0 = ODEState(fx_tr, fx_te, q_tr, q_te)

        times = _times(jnp.inf if t is None else t, time_scale, dtype)
        states = _integrate(rhs, state0, times, k_td)
        _check_results(states, 'gradient_descent prediction')
        if is_state:
            return states
        if not train_out:
            return states.fx_test
        if states.fx_test is None:
            return states.fx_train
        return states.fx_train, states.fx_test

    return predict_fn


def _integrate(rhs, state0, times, k_td, max_doublings: int = 64):
    """States at `times` (any shape, non-negative, possibly inf) of the ODE from state0 at 0."""
    if not _concrete(times):
        raise InputError('gradient_descent needs concrete times t (it cannot be traced by jit)')
    flat = np.asarray(times, dtype=np.float64).reshape(-1)
    finite = np.unique(flat[np.isfinite(flat)])
    grid = np.concatenate([[0.], finite[finite > 0]])
    dtype = jax.tree_util.tree_leaves(state0)[0].dtype
    if len(grid) > 1:
        traj = ode.odeint(rhs, state0, jnp.asarray(grid, dtype), k_td)
    else:
        traj = jax.tree_util.tree_map(lambda x: x[None], state0)
    at = {float(s): i for i, s in enumerate(grid)}
    pick = [at.get(float(s), -1) for s in flat]
    if np.isinf(flat).any():
        last = jax.tree_util.tree_map(lambda x: x[-1], traj)
        limit = _steady_state(rhs, last, float(grid[-1]), k_td, max_doublings)
        traj = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), traj, limit)
        pick = [len(grid) if p < 0 else p for p in pick]
    idx = jnp.asarray(pick)
    shape = tuple(np.shape(times))
    return jax.tree_util.tree_map(lambda x: x[idx].reshape(shape + x.shape[1:]), traj)


def _steady_state(rhs, state, t0, k_td, max_doublings):
    """Integrate over doubling windows until the state stops changing."""
    leaves = jax.tree_util.tree_leaves(state)
    tol = 1e3 * float(jnp.finfo(leaves[0].dtype).eps) ** 0.5 if leaves else 0.
    span = max(1., t0)
    for _ in range(max_doublings):
        traj = ode.odeint(rhs, state, jnp.asarray([t0, t0 + span], leaves[0].dtype), k_td)
        new = jax.tree_util.tree_map(lambda x: x[-1], traj)
        change = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                     zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state)))
        size = max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(new))
        if not np.isfinite(change):
            break
        state, t0, span = new, t0 + span, 2 * span
        if change <= tol * (1. + size):
            return state
    raise NumericalError('gradient_descent: the dynamics did not reach a steady state for '
                         't=None/inf (the loss may have no finite minimiser)',
                         hint='ask for finite times t instead')


# ---------------------------------------------------------------------------------------------
# conjugate gradients on kernels too big for one device's Cholesky


class CGInfo(NamedTuple):
    """How a conjugate-gradient solve went: iterations, the largest relative residual
    ``‖b - A x‖ / ‖b‖`` over the right-hand sides after each iteration (recursive) and at the
    end (recomputed), whether it converged, and a Lanczos estimate of the condition number of
    the preconditioned matrix."""

    iterations: int
    residuals: np.ndarray
    residual: float
    converged: bool
    condition_estimate: float
    preconditioner: str
    seconds: float


class _DenseOperator:
    """A kernel matrix held as one (possibly row-block-sharded) `jax.Array`; products run as
    one jitted program, so a sharded matrix multiplies where its rows live and the vector is
    replicated on every device of the mesh (one process or several)."""

    def __init__(self, mat, n: int | None = None):
        self.mat = mat
        self.n = mat.shape[0] if n is None else n   # rows beyond n: an identity padding block
        self.pad = mat.shape[0] - self.n
        self.dtype = mat.dtype
        sharding = getattr(mat, 'sharding', None)
        mesh = getattr(sharding, 'mesh', None)
        if mesh is not None and hasattr(sharding, 'spec'):
            from jax.sharding import NamedSharding, PartitionSpec
            rep = NamedSharding(mesh, PartitionSpec())
            self.replicated = rep
            self._mv = jax.jit(lambda k, v: k @ v, out_shardings=rep)
            self._diag = jax.jit(jnp.diagonal, out_shardings=rep)
        else:
            self.replicated = None
            self._mv = jax.jit(lambda k, v: k @ v)
            self._diag = jax.jit(jnp.diagonal)
        self._row = None

    def put(self, v):
        v = jnp.asarray(v, self.dtype)
        if self.pad and v.ndim and v.shape[0] == self.n:
            v = jnp.concatenate([v, jnp.zeros((self.pad,) + v.shape[1:], v.dtype)])
        if self.replicated is not None and not self.replicated.is_fully_addressable:
            host = np.asarray(v)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda i: host[i])
        return v if self.replicated is None else jax.device_put(v, self.replicated)

    def diag(self):
        return self._diag(self.mat)

    def trace(self) -> float:
        return float(jnp.sum(self.diag())) - self.pad

    def host(self, v):
        """A replicated array as a local numpy array (on any process)."""
        if self.replicated is not None and not self.replicated.is_fully_addressable:
            return np.asarray(jax.jit(lambda a: a, out_shardings=self.replicated)(v)
                              .addressable_data(0))
        return np.asarray(v)

    def row(self, i: int):
        if self._row is None:
            self._row = jax.jit(lambda k, j: k[j], out_shardings=self.replicated)
        return self.host(self._row(self.mat, i))

    def matvec(self, v):
        return self._mv(self.mat, v)


class _TileOperator:
    """A symmetric 2-D kernel kept as tiles in a `TileStore`: each product streams the
    upper-triangle tiles from disk once (tile (i, j) contributes to rows i and, mirrored, j)."""

    def __init__(self, store, name):
        from .store import TileStore
        self.store = store if isinstance(store, TileStore) else TileStore(store)
        job = self.store.job
        self.store.refresh()
        if not job.symmetric:
            raise InputError(f'the tile store {self.store.path} holds a kernel between two '
                             'different inputs; a solve needs the train-train kernel (x2=None)')
        if name not in job.get:
            raise InputError(f'the tile store {self.store.path} holds {job.get}, not {name!r}: '
                             f'compute it with get including {name!r}')
        self.name, self.n, self.tile = name, job.n1, job.tile
        self.dtype = jnp.dtype(job.dtype) if jnp.issubdtype(jnp.dtype(job.dtype),
                                                           jnp.floating) else jnp.float64
        self.t = math.ceil(self.n / self.tile)
        self.replicated = None

    def _tiles(self):
        for i in range(self.t):
            for j in range(i, self.t):
                arrays = self.store.load(i, j)
                if arrays is None:
                    raise InputError(f'tile ({i}, {j}) is missing from {self.store.path}',
                                     hint='finish the kernel job (resume=True) first')
                k = arrays[self.name]
                if k.ndim != 2:
                    raise InputError(f'the {self.name} kernel in {self.store.path} has spatial '
                                     f'axes {k.shape[2:]}; a solve needs a 2-D kernel')
                r0, c0 = i * self.tile, j * self.tile
                rows, cols = min(self.tile, self.n - r0), min(self.tile, self.n - c0)
                yield i, j, r0, c0, k[:rows, :cols]

    def put(self, v):
        return np.asarray(v, self.dtype)

    def trace(self) -> float:
        return float(np.sum(self.diag()))

    def host(self, v):
        return np.asarray(v)

    def row(self, i: int):
        r = i // self.tile
        out = np.empty(self.n, self.dtype)
        for j in range(self.t):
            a, b = (r, j) if j >= r else (j, r)
            arrays = self.store.load(a, b)
            if arrays is None:
                raise InputError(f'tile ({a}, {b}) is missing from {self.store.path}',
                                 hint='finish the kernel job (resume=True) first')
            k = arrays[self.name] if (a, b) == (r, j) else arrays[self.name].T
            c0 = j * self.tile
            cols = min(self.tile, self.n - c0)
            out[c0:c0 + cols] = k[i - r * self.tile, :cols]
        return out

    def diag(self):
        d = np.empty(self.n, self.dtype)
        for i, j, r0, _, k in self._tiles():
            if i == j:
                d[r0:r0 + k.shape[0]] = np.diagonal(k)
        return d

    def matvec(self, v):
        v = np.asarray(v)
        out = np.zeros(v.shape, np.result_type(v, self.dtype))
        for i, j, r0, c0, k in self._tiles():
            out[r0:r0 + k.shape[0]] += k @ v[c0:c0 + k.shape[1]]
            if i != j:
                out[c0:c0 + k.shape[1]] += k.T @ v[r0:r0 + k.shape[0]]
        return out


def _lanczos_condition(alphas, betas) -> float:
    """Condition number of the Lanczos tridiagonal matrix built from CG's step sizes α_k and
    β_k (Golub & Van Loan 2013, sec. 11.3.5): its extreme eigenvalues approach those of the
    preconditioned matrix from inside, so this is a lower bound that tightens with iterations."""
    m = len(alphas)
    if m == 0:
        return 1.0
    a = np.asarray(alphas, np.float64)
    b = np.asarray(betas[:m - 1], np.float64)
    diag = 1.0 / a
    diag[1:] += b / a[:-1]
    off = np.sqrt(np.maximum(b, 0.0)) / a[:-1]
    t = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
    ev = np.linalg.eigvalsh(t)
    if not np.all(np.isfinite(ev)) or ev[0] <= 0:
        return math.inf
    return float(ev[-1] / ev[0])


@jax.jit
def _precondition(pc, r):
    """z = P⁻¹ r for P⁻¹ = diag(inv_d) - U W Uᵀ (Jacobi: U empty; low rank: Woodbury)."""
    inv_d, u, w = pc
    return r * inv_d - u @ (w @ (u.T @ r))


def _cg_update(x, r, p, q, rz, pc, bnorm):
    """One CG update after the product q = A p: new x, r, search direction, rᵀz, and the
    scalars the host looks at (min pᵀAp, max relative residual, α and β of column 0)."""
    pq = jnp.sum(p * q, axis=0)
    alpha = jnp.where(pq > 0, rz / jnp.where(pq > 0, pq, 1.0), 0.0)
    x = x + alpha * p
    r = r - alpha * q
    z = _precondition(pc, r)
    rz_new = jnp.sum(r * z, axis=0)
    beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
    rel = jnp.max(jnp.sqrt(jnp.sum(r * r, axis=0)) / bnorm)
    active = rz > 0  # columns not yet solved exactly (a zero column never is active)
    min_pq = jnp.min(jnp.where(active, pq, jnp.inf)) if pq.size else jnp.inf
    stats = jnp.stack([jnp.where(jnp.any(active), min_pq, 1.0), rel, alpha[0],
                       beta[0]]).astype(x.dtype)
    return x, r, z + beta * p, rz_new, stats


@functools.partial(jax.jit, static_argnums=(6, 7))
def _cg_device_loop(mat, shift, b, pc, bnorm, tol, maxiter, stall):
    """The CG iterations of `cg_solve` as one `lax.while_loop` (no host round trip per
    iteration): stops at relative residual `tol`, at a non-finite residual, at non-positive
    curvature, or after `stall` iterations without halving the best residual."""
    def cond(c):
        it, _, _, _, _, _, _, _, best_at, min_pq, rel = c
        return ((it < maxiter) & (rel > tol) & jnp.isfinite(rel) & (min_pq > 0)
                & (it - best_at <= stall))

    def body(c):
        it, x, r, p, rz, hist, ab, best, best_at, _, _ = c
        q = mat @ p + shift * p
        x, r, p, rz, stats = _cg_update(x, r, p, q, rz, pc, bnorm)
        pq, rel = stats[0], stats[1]
        improved = rel < 0.5 * best
        return (it + 1, x, r, p, rz, hist.at[it].set(rel), ab.at[it].set(stats[2:]),
                jnp.where(improved, rel, best), jnp.where(improved, it + 1, best_at), pq, rel)

    dt = b.dtype
    p = _precondition(pc, b)
    init = (0, b * 0, b, p, jnp.sum(b * p, axis=0), jnp.zeros(maxiter, dt),
            jnp.zeros((maxiter, 2), dt), jnp.asarray(jnp.inf, dt), 0, jnp.asarray(1.0, dt),
            jnp.asarray(1.0, dt))
    it, x, _, _, _, hist, ab, _, _, min_pq, _ = jax.lax.while_loop(cond, body, init)
    return x, it, hist, ab, min_pq


def _pivoted_cholesky(op, shift: float, rank: int):
    """Preconditioner P = L Lᵀ + σ I from a rank-`rank` pivoted Cholesky factor L of the kernel
    (Harbrecht, Peters & Schneider 2012; as a CG preconditioner: Gardner et al. 2018), with σ the
    shift plus the mean diagonal the factor leaves unexplained; applied by the Woodbury identity
    P⁻¹ = (I - L (σ I + LᵀL)⁻¹ Lᵀ) / σ.  Reads `rank` rows of the kernel."""
    diag = np.asarray(op.host(op.diag()), np.float64)
    n = diag.shape[0]
    low = np.zeros((n, rank))
    resid = diag.copy()
    total = float(np.sum(diag))
    m = 0
    while m < rank:
        i = int(np.argmax(resid))
        if resid[i] <= 1e-12 * total:
            break
        row = np.asarray(op.row(i), np.float64)
        col = (row - low[:, :m] @ low[i, :m]) / math.sqrt(resid[i])
        low[:, m] = col
        resid = np.maximum(resid - col ** 2, 0.0)
        m += 1
    low = low[:, :m]
    sigma = shift + float(np.mean(resid))
    sigma = sigma if sigma > 0 else 1e-12 * total / n
    w = np.linalg.inv(sigma * np.eye(m) + low.T @ low) / sigma
    return (op.put(np.full((n, 1), 1.0 / sigma, op.dtype)), op.put(low.astype(op.dtype)),
            op.put(w.astype(op.dtype)))


def cg_default_tol(dtype) -> float:
    """The default relative-residual target of `cg_solve` in `dtype`: 1e-10, but never below
    100 machine epsilons (the true residual of a solve in float32 cannot reach 1e-10)."""
    eps = float(jnp.finfo(dtype).eps)
    return min(1e-2, max(1e-10, 100 * eps))


def cg_solve(op, b, shift: float = 0., tol: float | None = None, maxiter: int | None = None,
             preconditioner: str | None = 'jacobi', what: str = 'kernel') -> tuple[Any, CGInfo]:
    """Solve ``(K + shift I) X = B`` for all columns of ``B`` at once by preconditioned
    conjugate gradients (Hestenes & Stiefel 1952; Saad 2003, alg. 9.1), where ``K`` is an
    operator with ``matvec`` and ``diag``.  ``preconditioner='jacobi'`` divides by the diagonal
    of ``K + shift I``; ``'pivchol'`` (``'pivchol<rank>'``, default rank 100) uses a low-rank
    pivoted-Cholesky factor plus a shift (`_pivoted_cholesky`), which pays off on kernels with
    fast-decaying spectra; None uses none.  Stops when every column's relative residual is below
    `tol` (None: `cg_default_tol` of the operator's dtype); raises `NumericalError` when the
    matrix is not positive definite, when the residual stagnates or `maxiter` runs out, or when
    the Lanczos estimate κ of the condition number says float arithmetic cannot deliver the
    solution (κ·ε ≥ 1); warns (`AccuracyWarning`) when κ·ε > 0.01."""
    t0 = time.perf_counter()
    dtype = op.dtype
    tol = cg_default_tol(dtype) if tol is None else float(tol)
    n = op.n
    maxiter = maxiter or max(100, min(10 * n, 20000))
    b = op.put(b)
    d = op.diag() + shift
    if preconditioner not in (None, 'none') and float(jnp.min(d)) <= 0:
        raise NumericalError(f'the {what} has a non-positive diagonal entry '
                             f'({float(jnp.min(d)):.3g}): it is not positive definite', hint=_FIX)
    no_u = (op.put(np.zeros((d.shape[0], 0), dtype)), op.put(np.zeros((0, 0), dtype)))
    if preconditioner in (None, 'none'):
        pc, pname = (jnp.ones_like(d)[:, None],) + no_u, 'none'
    elif preconditioner == 'jacobi':
        pc, pname = ((1.0 / d)[:, None],) + no_u, 'jacobi'
    elif isinstance(preconditioner, str) and preconditioner.startswith('pivchol') and \
            preconditioner[7:].isdigit() or preconditioner == 'pivchol':
        rank = int(preconditioner[7:] or 100)
        pc, pname = _pivoted_cholesky(op, shift, min(rank, d.shape[0])), preconditioner
    else:
        raise InputError("preconditioner must be 'jacobi', 'pivchol' (or 'pivchol<rank>', e.g. "
                         f"'pivchol50') or None, got {preconditioner!r}")

    def apply(v):
        return op.matvec(v) + shift * v

    bnorm = jnp.sqrt(jnp.sum(b * b, axis=0))
    bnorm = jnp.where(bnorm > 0, bnorm, 1.0)
    x, r = b * 0, b
    p = _precondition(pc, r)
    rz = jnp.sum(r * p, axis=0)
    stall = max(100, int(4 * math.sqrt(n)))
    if isinstance(op, _DenseOperator):  # the whole loop as one program on the mesh
        x, its, hist, ab, min_pq = _cg_device_loop(op.mat, shift, b, pc, bnorm, tol, maxiter,
                                                   stall)
        its = int(its)
        history = [float(v) for v in np.asarray(hist)[:its]]
        ab = np.asarray(ab)[:its]
        alphas, betas = list(ab[:, 0]), list(ab[:, 1])
        if float(min_pq) <= 0:
            raise NumericalError(
                f'conjugate gradients met a direction of non-positive curvature (pᵀAp = '
                f'{float(min_pq):.3g}) after {its} iterations: the {what} is not positive '
                'definite', hint=_FIX)
        converged = bool(history) and history[-1] <= tol
        its = maxiter + 1  # skip the host loop below
    else:
        history, alphas, betas = [], [], []
        converged = False
        its = 1
    best, best_at = math.inf, 0
    for it in range(its, maxiter + 1):
        q = apply(p)
        x, r, p, rz_new, stats = _cg_update(x, r, p, q, rz, pc, bnorm)
        min_pq, rel, alpha0, beta0 = (float(v) for v in np.asarray(stats))
        if min_pq <= 0:
            raise NumericalError(
                f'conjugate gradients met a direction of non-positive curvature (pᵀAp = '
                f'{min_pq:.3g}) after {it} iterations: the {what} is not positive definite',
                hint=_FIX)
        rz = rz_new
        history.append(rel)
        alphas.append(alpha0)
        betas.append(beta0)
        if not math.isfinite(rel):
            break
        if rel <= tol:
            converged = True
            break
        if rel < 0.5 * best:
            best, best_at = rel, it
        elif it - best_at > stall:
            break
    true = float(jnp.max(jnp.sqrt(jnp.sum((b - apply(x)) ** 2, axis=0)) / bnorm))
    cond = _lanczos_condition(alphas, betas)
    info = CGInfo(len(history), np.asarray(history), true, converged and true <= 10 * tol,
                  cond, pname, time.perf_counter() - t0)
    if not info.converged:
        raise NumericalError(
            f'conjugate gradients did not solve the {n}x{n} {what} system: relative residual '
            f'{true:.3g} after {info.iterations} iterations (target {tol:g}); estimated '
            f'condition number {cond:.3g}: the kernel is ill-conditioned',
            hint=_FIX + ', or raise cg_maxiter / loosen cg_tol')
    _check_accuracy(cond, dtype, f'{n}x{n} {what}')
    return x, info


class _CGFactor:
    """The `_Factor` interface (``solve``, ``dtype``) on top of conjugate gradients; every solve
    appends its `CGInfo` to ``infos``."""

    def __init__(self, op, diag_reg, absolute, what, tol, maxiter, preconditioner):
        self.op = op
        self.dtype = op.dtype
        self.what = what
        if absolute:
            self.shift = float(diag_reg)
        else:
            self.shift = float(diag_reg) * op.trace() / op.n if diag_reg else 0.
        self.tol, self.maxiter, self.preconditioner = tol, maxiter, preconditioner
        self.infos: list[CGInfo] = []

    def solve(self, b):
        x, info = cg_solve(self.op, b, self.shift, self.tol, self.maxiter, self.preconditioner,
                           self.what)
        self.infos.append(info)
        if self.op.replicated is not None and not self.op.replicated.is_fully_addressable:
            # gather the solution onto every device; each process takes its local copy
            x = np.asarray(jax.jit(lambda v: v, out_shardings=self.op.replicated)(x)
                           .addressable_data(0))
        return jnp.asarray(x[:self.op.n])


def _cg_operator(k_train_train, g, layout):
    """The operator of kernel `g` for conjugate gradients: a tile store (path) or an array."""
    from .store import TileStore
    if isinstance(k_train_train, (TileStore, str, os.PathLike)):
        op = _TileOperator(k_train_train, g)
    elif hasattr(k_train_train, 'array') and hasattr(k_train_train, 'n'):  # ShardedKernel
        op = _DenseOperator(k_train_train.array, k_train_train.n)
        if layout.rest_shape != (op.n,):
            raise InputError(f'y_train has {layout.rest_shape} rows but the sharded kernel is '
                             f'{op.n}x{op.n}: the number of training targets must match it')
    else:
        k = _attr(k_train_train, g, 'k_train_train')
        _check_train_kernel(k, layout)
        op = _DenseOperator(k if k.ndim == 2 else _as_matrix(k))
    if isinstance(op, _TileOperator) and layout.rest_shape != (op.n,):
        raise InputError(f'y_train has {layout.rest_shape} rows but the {g} kernel is '
                         f'{op.n}x{op.n}: the number of training targets must match it')
    return op


# ---------------------------------------------------------------------------------------------
# GP inference


def gp_inference(k_train_train, y_train, diag_reg: float = 0.,
                 diag_reg_absolute_scale: bool = False, trace_axes=(-1,), *,
                 solver: str = 'cholesky', cg_tol: float | None = None,
                 cg_maxiter: int | None = None, preconditioner: str | None = 'jacobi'):
    """Posterior of the NNGP, of the infinite-time NTK ensemble, or of the NTK-GP.

    ``nngp``: the Bayesian posterior ``N(K_td K^{-1} y, K_tt - K_td K^{-1} K_dt)``
    (Rasmussen & Williams 2006, eqs. 2.25-2.26).  ``ntk``: the infinite ensemble of infinitely
    wide networks trained to convergence, mean ``Θ_td Θ^{-1} y`` and covariance
    ``K_tt + Θ_td Θ^{-1} K Θ^{-1} Θ_dt - (Θ_td Θ^{-1} K_dt + h.c.)`` (Lee et al. 2019, eq. 16).
    ``ntkgp``: the GP posterior with the NTK as covariance (He et al. 2020).  Uses one cached
    Cholesky factorisation per kernel.

    ``k_train_train`` is an array or an object / namedtuple with ``.nngp`` / ``.ntk``.  Returns
    ``predict_fn(get=None, k_test_train=None, k_test_test=None)`` giving the posterior mean, or
    a `Gaussian` when ``k_test_test`` is given; a namedtuple over ``get`` unless it is a string.
    ``k_test_train=None`` gives the (noise-free) train-set posterior ``N(y_train, 0)``.

    ``solver='cg'`` replaces the Cholesky factor by preconditioned conjugate gradients
    (`cg_solve`; ``preconditioner='jacobi'`` by default, ``'pivchol<rank>'`` for a low-rank
    pivoted-Cholesky preconditioner), for kernels too big for one device's
    Cholesky: ``k_train_train`` may then also be a `jax.Array` sharded row-block-wise over a
    mesh of one or several processes (`ntc.runtime.distributed.row_sharded_kernel`), or a tile
    store (`TileStore` or its path) whose symmetric 2-D tiles are streamed from disk for every
    product.  Solves stop at relative residual ``cg_tol`` (None: 1e-10, or 100 machine epsilons
    when that is larger, as in float32; see `cg_default_tol`); ``predict_fn.solver_info[g]`` lists a
    `CGInfo` (iterations, residual history, condition estimate) per solve.

    Accuracy: every solve estimates the condition number κ of the train kernel (from the
    Cholesky factor, or CG's Lanczos coefficients) and warns with `ntc.AccuracyWarning` when
    κ·ε > 0.01 (ε the machine epsilon of the working dtype), and raises `NumericalError` when
    κ·ε ≥ 1 (no correct digit); NaN or infinite inputs raise `InputError` naming the argument, and
    non-finite results `NumericalError`.
    """
    if solver not in ('cholesky', 'cg'):
        raise InputError(f"solver must be 'cholesky' or 'cg', got {solver!r}")
    y_train = jnp.asarray(y_train)
    layout = _Layout(y_train, trace_axes)
    _check_input(y_train, 'y_train')
    factors: dict[str, Any] = {}
    from .store import TileStore
    on_disk = isinstance(k_train_train, (TileStore, str, os.PathLike))
    sharded = hasattr(k_train_train, 'array') and hasattr(k_train_train, 'n')
    if (on_disk or sharded) and solver != 'cg':
        raise InputError(f'a kernel {"kept in a tile store" if on_disk else "sharded over a mesh"}'
                         " can only be solved against with solver='cg'")
    if not (on_disk or sharded):
        k0 = _first(k_train_train, 'k_train_train')
        _check_train_kernel(k0, layout)

    def factor(g):
        if g not in factors and solver == 'cg':
            factors[g] = _CGFactor(_cg_operator(k_train_train, g, layout), diag_reg,
                                   diag_reg_absolute_scale, f'train-train {g} kernel', cg_tol,
                                   cg_maxiter, preconditioner)
            predict_fn.solver_info[g] = factors[g].infos
        if g not in factors:
            with jax.ensure_compile_time_eval():    # a concrete kernel stays concrete in a trace
                k = _attr(k_train_train, g, 'k_train_train')
            _check_train_kernel(k, layout)
            dtype = _dtype(k, y_train)
            factors[g] = _Factor(k, dtype, diag_reg, diag_reg_absolute_scale,
                                 f'train-train {g} kernel')
        return factors[g]

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        """Posterior mean (or `Gaussian`) on the test set for each kernel in `get`."""
        names, single = _canon_get(get, ('nngp', 'ntk', 'ntkgp'))
        out = {}
        for g in names:
            base = 'ntk' if g == 'ntkgp' else g
            fac = factor(base)
            dtype = fac.dtype
            y = y_train.astype(dtype)
            if k_test_train is None:
                mean = y
                cov = None if k_test_test is None else jnp.zeros_like(
                    _attr(k_train_train, base, 'k_train_train'), dtype)
            else:
                k_td = _attr(k_test_train, base, 'k_test_train')
                _check_input(k_td, 'k_test_train')
                test_rest = _check_test_kernel(k_td, layout)
                k_td = _as_matrix(k_td).astype(dtype)
                mean = layout.unflat(k_td @ fac.solve(layout.flat(y)), test_rest)
                cov = None
                if k_test_test is not None:
                    cov = _from_matrix(_posterior_cov(g, fac, k_td, k_train_train, k_test_train,
                                                      k_test_test, dtype), test_rest, test_rest)
            out[g] = mean if cov is None else Gaussian(mean, cov)
            _check_results(out[g], f'gp_inference {g!r} posterior')
        return _package(out, names, single, 'Gaussians')

    predict_fn.solver_info = {}
    return predict_fn


def _posterior_cov(g, fac, k_td, k_train_train, k_test_train, k_test_test, dtype):
    if g in ('nngp', 'ntkgp'):
        prior = 'nngp' if g == 'nngp' else 'ntk'
        k_tt = _attr(k_test_test, prior, 'k_test_test')
        _check_input(k_tt, 'k_test_test')
        k_tt = _as_matrix(k_tt).astype(dtype)
        return k_tt - k_td @ fac.solve(k_td.T)
    # ntk: needs the NNGP too (the prior covariance of the initial outputs)
    for k, what in ((k_train_train, 'k_train_train'), (k_test_train, 'k_test_train')):
        if _is_array(k) or _attr_or_none(k, 'nngp') is None:
            raise InputError(f'the NTK posterior covariance needs the NNGP as well: pass {what} '
                             'as a kernel object / namedtuple with both .nngp and .ntk')
    k_dd = _as_matrix(_attr(k_train_train, 'nngp', 'k_train_train')).astype(dtype)
    kn_td = _attr(k_test_train, 'nngp', 'k_test_train')
    k_tt = _attr(k_test_test, 'nngp', 'k_test_test')
    _check_input(kn_td, 'k_test_train')
    _check_input(k_tt, 'k_test_test')
    kn_td, k_tt = _as_matrix(kn_td).astype(dtype), _as_matrix(k_tt).astype(dtype)
    a = fac.solve(k_td.T)                         # Θ^{-1} Θ_dt          (P, Q)
    b = k_td @ fac.solve(kn_td.T)                 # Θ_td Θ^{-1} K_dt     (Q, Q)
    return k_tt + a.T @ k_dd @ a - b - b.T


def _attr_or_none(k, g):
    return k.get(g) if isinstance(k, dict) else getattr(k, g, None)


# ---------------------------------------------------------------------------------------------
# infinite ensembles


def gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, learning_rate: float = 1.,
                                  diag_reg: float = 0., diag_reg_absolute_scale: bool = False,
                                  trace_axes=(-1,), **kernel_fn_train_train_kwargs):
    """Mean and covariance of an infinite ensemble of infinitely wide networks trained by
    gradient flow on the MSE loss, at any time ``t``.

    Lee et al. 2019, eqs. 13-16: with ``Θ`` the NTK, ``K`` the NNGP, ``n = y_train.size`` and
    ``φ(t) = Θ^{-1} (I - exp(-lr t Θ / n))``, the test mean is ``Θ_td φ(t) y`` and the covariance
    ``K_tt + (φ Θ_dt)^T K (φ Θ_dt) - (Θ_td φ K_dt + h.c.)``.  ``get='nngp'`` trains only the
    readout (Θ replaced by K): covariance ``K_tt - K_td K^{-1} (I - exp(-2 lr t K / n)) K_dt``.
    One eigendecomposition per kernel is cached; ``t=None`` uses `gp_inference` (Cholesky).

    ``kernel_fn(x1, x2, get, **kwargs)`` must return an object / namedtuple with ``.nngp`` /
    ``.ntk`` (or an array for a single requested kernel).  Returns
    ``predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kernel_fn_test_test_kwargs)``
    giving means, or `Gaussian` s when ``compute_cov``, with leading axes ``t.shape``.
    """
    y_train = jnp.asarray(y_train)
    layout = _Layout(y_train, trace_axes)
    _check_input(y_train, 'y_train')
    _check_positive(learning_rate, 'learning_rate')
    n = y_train.size
    cache: dict[str, Any] = {}

    def call(x1, x2, names, kwargs, what):
        res = kernel_fn(x1, x2, names if len(names) > 1 else names[0], **kwargs)
        out = {}
        for g in names:
            if _is_array(res):
                if len(names) > 1:
                    raise InputError(f'kernel_fn returned a single array for get={names}')
                v = res
            else:
                v = _attr_or_none(res, g)
            if v is None:
                raise InputError(f'kernel_fn did not compute the {g!r} kernel ({what}); it must '
                                 f'return .{g} when called with get including {g!r}')
            out[g] = jnp.asarray(v)
            with jax.ensure_compile_time_eval():
                bad = _concrete(out[g]) and not bool(jnp.all(jnp.isfinite(out[g])))
            if bad:
                raise NumericalError(f'kernel_fn returned a {g!r} {what} kernel with NaN or '
                                     'infinite entries', hint='check x_train / x_test and the '
                                     "network's parameters")
        return out

    def train_kernels(names):
        missing = tuple(g for g in names if g not in cache)
        if missing:
            got = call(x_train, None, missing, kernel_fn_train_train_kwargs, 'train-train')
            for g, k in got.items():
                _check_train_kernel(k, layout, f'kernel_fn(x_train, None, {g!r})')
            cache.update(got)
        return {g: cache[g] for g in names}

    factors: dict[str, _Factor] = {}
    posteriors: dict[tuple, Callable] = {}

    def factor(g):
        if g not in factors:
            k = train_kernels((g,))[g]
            dtype = _dtype(k, y_train)
            factors[g] = _Factor(k, dtype, diag_reg, diag_reg_absolute_scale,
                                 f'train-train {g} kernel')
        return factors[g]

    def predict_fn(t=None, x_test=None, get=None, compute_cov: bool = False,
                   **kernel_fn_test_test_kwargs):
        """Ensemble mean (or `Gaussian`) on `x_test` (train set if None) at time[s] `t`."""
        names, single = _canon_get(get, ('nngp', 'ntk'))
        need = (('nngp',) if 'nngp' in names or compute_cov else ()) + \
            (('ntk',) if 'ntk' in names else ())
        k_dd = train_kernels(need)
        k_td = k_tt = None
        if x_test is not None:
            kw_td, kw_tt = _test_kwargs(kernel_fn_train_train_kwargs, kernel_fn_test_test_kwargs)
            k_td = call(x_test, x_train, need, kw_td, 'test-train')
            if compute_cov:
                k_tt = call(x_test, None, ('nngp',), kw_tt, 'test-test')['nngp']

        if t is None:
            if need not in posteriors:       # one cached factorisation per kernel set
                posteriors[need] = gp_inference(_KernelPair(**k_dd), y_train, diag_reg,
                                                diag_reg_absolute_scale, layout.trace)
            ktd_obj = None if k_td is None else _KernelPair(**k_td)
            ktt = None if not compute_cov else (True if x_test is None else k_tt)
            res = posteriors[need](names, ktd_obj, ktt)
            _check_results(res, 'gradient_descent_mse_ensemble prediction')
            return res[0] if single else res

        out = {}
        for g in names:
            fac = factor(g)
            dtype = fac.mat.dtype
            tau = _times(t, learning_rate / n, dtype)
            lam, v = fac.eig()
            lam_t = lam.reshape((1,) * tau.ndim + lam.shape)
            tau_e = tau[..., None]
            coef = v.T @ layout.flat(y_train.astype(dtype))            # (P, C)
            if k_td is None:
                rest = layout.rest_shape
                mean = jnp.einsum('pi,...i,ic->...pc', v, 1. - _decay(lam_t, tau_e), coef)
            else:
                rest = _check_test_kernel(k_td[g], layout)
                _check_phi_accuracy(lam, tau, dtype, fac.what)
                g_td = _as_matrix(k_td[g]).astype(dtype)
                mean = jnp.einsum('qi,...i,ic->...qc', g_td @ v, _phi(lam_t, tau_e), coef)
            mean = layout.unflat(mean, rest)
            if not compute_cov:
                out[g] = mean
                continue
            k_nngp = _as_matrix(k_dd['nngp']).astype(dtype)
            if k_td is None:
                if g == 'nngp':
                    cov = jnp.einsum('pi,...i,qi->...pq', v,
                                     lam_t * _decay(lam_t, 2 * tau_e), v)
                else:
                    e = jnp.einsum('pi,...i,qi->...pq', v, _decay(lam_t, tau_e), v)
                    cov = e @ k_nngp @ e
            else:
                g_td = _as_matrix(k_td[g]).astype(dtype)
                n_td = _as_matrix(k_td['nngp']).astype(dtype)
                n_tt = _as_matrix(k_tt).astype(dtype)
                gv = g_td @ v                                          # (Q, P)
                if g == 'nngp':
                    cov = n_tt - jnp.einsum('qi,...i,ri->...qr', gv, _phi(lam_t, 2 * tau_e), gv)
                else:
                    nv = n_td @ v
                    a = jnp.einsum('pi,...i,qi->...pq', v, _phi(lam_t, tau_e), gv)   # φ Θ_dt
                    b = jnp.einsum('qi,...i,ri->...qr', gv, _phi(lam_t, tau_e), nv)  # Θ_td φ K_dt
                    cov = (n_tt + jnp.swapaxes(a, -1, -2) @ k_nngp @ a
                           - b - jnp.swapaxes(b, -1, -2))
            out[g] = Gaussian(mean, _from_matrix(cov, rest, rest, n_lead=tau.ndim))
        _check_results(out, 'gradient_descent_mse_ensemble prediction')
        return _package(out, names, single, 'Gaussians')

    return predict_fn


class _KernelPair(NamedTuple):
    nngp: Any = None
    ntk: Any = None


def _test_kwargs(train_kw: dict, test_kw: dict):
    """Keyword arguments of the test-train and test-test kernel calls.

    Values given for the test set override the train-set ones for the test-test call.  For the
    test-train call, a pair ``(a, b)`` (values for the two inputs of a kernel call) becomes
    ``(test value, train value)``; other values must agree between train and test."""
    kw_td, kw_tt = dict(train_kw), dict(train_kw)
    for k, v_tt in test_kw.items():
        if k not in train_kw:
            kw_td[k] = kw_tt[k] = v_tt
            continue
        v_dd = train_kw[k]
        if isinstance(v_dd, tuple) and len(v_dd) == 2 and isinstance(v_tt, tuple) \
                and len(v_tt) == 2:
            kw_td[k] = (v_tt[0], v_dd[0])
        elif _is_array(v_dd) and _is_array(v_tt):
            kw_td[k] = v_tt
        else:
            same = v_dd is v_tt
            if not same:
                try:
                    same = bool(v_dd == v_tt)
                except Exception:  # noqa: BLE001 - incomparable values are different
                    same = False
            if not same:
                raise InputError(f'kernel_fn keyword {k!r} is {v_dd!r} for the train set but '
                                 f'{v_tt!r} for the test set; they must agree')
            kw_td[k] = v_tt
        kw_tt[k] = v_tt
    return kw_td, kw_tt


# ---------------------------------------------------------------------------------------------
# learning rate and likelihood


def max_learning_rate(ntk_train_train, y_train_size: int | None = None, momentum=0.,
                      eps: float = 1e-12) -> float:
    """Largest stable learning rate of (momentum) gradient descent on the MSE loss of a wide
    network: ``2 (1 + momentum) n / λ_max(Θ)`` with ``n = y_train_size`` (the loss is normalised
    by ``y_train.size``); see Lee et al. 2019, sec. 2.3, and Goh 2017, "Why momentum really
    works", for the momentum factor.  ``y_train_size=None`` means the kernel's row count
    (``trace_axes=()``)."""
    k = jnp.asarray(ntk_train_train)
    if k.ndim % 2 or k.ndim == 0 or k.shape[::2] != k.shape[1::2]:
        raise InputError(f'ntk_train_train must be a square train-train kernel, got {k.shape}')
    k = _as_matrix(k)
    factor = k.shape[0] if y_train_size is None else y_train_size
    _check_positive(factor, 'y_train_size')
    if _concrete(momentum) and not np.isfinite(momentum):
        raise InputError(f'momentum must be finite, got {momentum!r}')
    _check_finite(k, 'ntk_train_train')
    evals = jnp.linalg.eigvalsh(k)
    top = evals[-1]
    if _concrete(evals):
        tol = 10 * max(k.shape[0], 10) * float(jnp.finfo(evals.dtype).eps) * float(
            jnp.max(jnp.abs(evals)))
        if not float(top) > 0 or float(evals[0]) < -tol:
            raise NumericalError(
                'ntk_train_train is not positive semi-definite (eigenvalues from '
                f'{float(evals[0]):.3g} to {float(top):.3g}), so it is not an NTK and has no '
                'stable learning rate', hint='pass the train-train NTK (kernel_fn(x, None, '
                "'ntk')), or regularise a rounding-level indefinite one with a small diagonal")
    return 2 * (1 + momentum) * factor / (top + eps)


def marginal_log_likelihood(k_train_train, y_train, diag_reg: float = 0.,
                            diag_reg_absolute_scale: bool = False, trace_axes=(-1,),
                            get: str = 'nngp'):
    """Log evidence ``log N(y; 0, K ⊗ I)`` of the targets under the GP prior with kernel ``K``
    (Rasmussen & Williams 2006, eq. 2.30), summed over the ``C`` channel columns:
    ``-½ Σ_c y_c^T K^{-1} y_c - (C/2) log|K| - (N C / 2) log 2π``, via one Cholesky factor.
    ``k_train_train`` is an array or a kernel object (then ``get`` picks the kernel)."""
    y_train = jnp.asarray(y_train)
    layout = _Layout(y_train, trace_axes)
    k = _attr(k_train_train, get, 'k_train_train')
    _check_train_kernel(k, layout)
    _check_input(y_train, 'y_train')
    dtype = _dtype(k, y_train)
    mat = _regularize(_as_matrix(k).astype(dtype), diag_reg, diag_reg_absolute_scale)
    low = _cholesky(mat, f'train-train {get} kernel')
    y = layout.flat(y_train.astype(dtype))
    alpha = jsl.solve_triangular(low, y, lower=True)
    n_rows, n_cols = y.shape
    out = (-0.5 * jnp.sum(alpha ** 2) - n_cols * jnp.sum(jnp.log(jnp.diag(low)))
           - 0.5 * n_rows * n_cols * jnp.log(2 * jnp.pi))
    _check_results(out, 'marginal_log_likelihood')
    return out
