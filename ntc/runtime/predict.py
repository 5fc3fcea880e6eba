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

This module is the API; the checks live in `predict_checks`, the factorisations and conjugate
gradients in `linalg`, and the spectral factors and ODE integration of the dynamics in
`dynamics`.
"""

from __future__ import annotations

import math
import os
from collections import namedtuple
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from ..checks import is_concrete
from ..errors import InputError, NumericalError
from .dynamics import decay, integrate, phi, scaled_times
from .linalg import (
    CGFactor,
    CGInfo,
    DenseOperator,
    Factor,
    TileOperator,
    as_matrix,
    cg_default_tol,
    cg_solve,
    cholesky,
    from_matrix,
    regularize,
)
from .predict_checks import (
    check_finite,
    check_input,
    check_phi_accuracy,
    check_positive,
    check_results,
)
from .store import TileStore

__all__ = ['Gaussian', 'ODEState', 'CGInfo', 'cg_solve', 'cg_default_tol', 'gp_inference',
           'gradient_descent_mse', 'gradient_descent_mse_ensemble', 'gradient_descent',
           'max_learning_rate', 'marginal_log_likelihood']


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
# arguments: kernels as arrays or kernel objects, the layout of the targets, their checks


def _canon_axes(axes, ndim: int, what: str = 'trace_axes') -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise InputError(f'{what}={axes} is out of range for outputs with {ndim} axes')
        out.append(a % ndim)
    return tuple(sorted(set(out)))  # an axis named twice is traced once, as in NT


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
        y = jnp.moveaxis(y, tuple(lead + a for a in self.trace),
                         tuple(range(-len(self.trace), 0)))
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
    if k.ndim % 2:  # () when every axis, the batch axis too, is traced: a 1 × 1 kernel
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


def _dtype(*xs):
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


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
    check_input(y_train, 'y_train')
    check_positive(learning_rate, 'learning_rate')
    dtype = _dtype(k_train_train, y_train)
    y = y_train.astype(dtype)
    n = y_train.size
    fac = Factor(k_train_train, dtype, diag_reg, diag_reg_absolute_scale, 'train-train kernel')

    def predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None):
        """Outputs on the train [and test] set after training for time[s] `t`."""
        _check_inputs(fx_train_0, fx_test_0, k_test_train)
        if fx_test_0 is not None:
            check_input(k_test_train, 'k_test_train')
            k_td = jnp.asarray(k_test_train)
            test_rest = _check_test_kernel(k_td, layout)
            k_td = as_matrix(k_td).astype(dtype)
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
            tau = scaled_times(t, learning_rate / n, dtype)
            lam, v = fac.eig()
            lam_t = lam.reshape((1,) * tau.ndim + lam.shape)
            tau_e = tau[..., None]
            coef = v.T @ r                                               # (P, C)
            if fx_train_0 is not None:
                d = jnp.einsum('pi,...i,ic->...pc', v, decay(lam_t, tau_e) - 1., coef)
                fx_train_t = _lead(fx_train_0, tau.ndim) + layout.unflat(d, layout.rest_shape)
            if fx_test_0 is not None:
                check_phi_accuracy(lam, tau, dtype, fac.what)
                d = jnp.einsum('qp,pi,...i,ic->...qc', k_td, v, phi(lam_t, tau_e), coef)
                fx_test_t = _lead(fx_test_0, tau.ndim) - layout.unflat(d, test_rest)

        if fx_test_0 is None:
            out = fx_train_t
        elif fx_train_0 is None:
            out = fx_test_t
        else:
            out = fx_train_t, fx_test_t
        check_results(out, 'gradient_descent_mse prediction')
        return out

    return predict_fn


def _lead(x, n: int):
    """`x` with `n` leading axes of size 1, to broadcast against arrays with `n` time axes."""
    return x.reshape((1,) * n + x.shape)


def _check_inputs(fx_train_0, fx_test_0, k_test_train):
    check_input(fx_train_0, 'fx_train_0')
    check_input(fx_test_0, 'fx_test_0')
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
    check_input(k_train_train, 'k_train_train')
    check_input(y_train, 'y_train')
    check_positive(learning_rate, 'learning_rate')
    if momentum is not None and is_concrete(momentum) and not np.isfinite(momentum):
        raise InputError(f'momentum must be finite, got {momentum!r}')
    dtype = _dtype(k_train_train, y_train)
    k_dd = as_matrix(k_train_train).astype(dtype)
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
            check_input(k_test_train, 'k_test_train')
            k_td = jnp.asarray(k_test_train)
            test_rest = _check_test_kernel(k_td, layout)
            test_shape = layout.out_shape(test_rest)
            k_td = as_matrix(k_td).astype(dtype)
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

        times = scaled_times(jnp.inf if t is None else t, time_scale, dtype)
        states = integrate(rhs, state0, times, k_td)
        check_results(states, 'gradient_descent prediction')
        if is_state:
            return states
        if not train_out:
            return states.fx_test
        if states.fx_test is None:
            return states.fx_train
        return states.fx_train, states.fx_test

    return predict_fn


def _cg_operator(k_train_train, g, layout):
    """The operator of kernel `g` for conjugate gradients: a tile store (path) or an array."""
    if isinstance(k_train_train, (TileStore, str, os.PathLike)):
        op = TileOperator(k_train_train, g)
    elif hasattr(k_train_train, 'array') and hasattr(k_train_train, 'n'):  # ShardedKernel
        op = DenseOperator(k_train_train.array, k_train_train.n)
        if layout.rest_shape != (op.n,):
            raise InputError(f'y_train has {layout.rest_shape} rows but the sharded kernel is '
                             f'{op.n}x{op.n}: the number of training targets must match it')
    else:
        k = _attr(k_train_train, g, 'k_train_train')
        _check_train_kernel(k, layout)
        op = DenseOperator(k if k.ndim == 2 else as_matrix(k))
    if isinstance(op, TileOperator) and layout.rest_shape != (op.n,):
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
    check_input(y_train, 'y_train')
    factors: dict[str, Any] = {}
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
            factors[g] = CGFactor(_cg_operator(k_train_train, g, layout), diag_reg,
                                   diag_reg_absolute_scale, f'train-train {g} kernel', cg_tol,
                                   cg_maxiter, preconditioner)
            predict_fn.solver_info[g] = factors[g].infos
        if g not in factors:
            with jax.ensure_compile_time_eval():    # a concrete kernel stays concrete in a trace
                k = _attr(k_train_train, g, 'k_train_train')
            _check_train_kernel(k, layout)
            dtype = _dtype(k, y_train)
            factors[g] = Factor(k, dtype, diag_reg, diag_reg_absolute_scale,
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
                check_input(k_td, 'k_test_train')
                test_rest = _check_test_kernel(k_td, layout)
                k_td = as_matrix(k_td).astype(dtype)
                mean = layout.unflat(k_td @ fac.solve(layout.flat(y)), test_rest)
                cov = None
                if k_test_test is not None:
                    cov = from_matrix(_posterior_cov(g, fac, k_td, k_train_train, k_test_train,
                                                      k_test_test, dtype), test_rest, test_rest)
            out[g] = mean if cov is None else Gaussian(mean, cov)
            check_results(out[g], f'gp_inference {g!r} posterior')
        return _package(out, names, single, 'Gaussians')

    predict_fn.solver_info = {}
    return predict_fn


def _posterior_cov(g, fac, k_td, k_train_train, k_test_train, k_test_test, dtype):
    if g in ('nngp', 'ntkgp'):
        prior = 'nngp' if g == 'nngp' else 'ntk'
        k_tt = _attr(k_test_test, prior, 'k_test_test')
        check_input(k_tt, 'k_test_test')
        k_tt = as_matrix(k_tt).astype(dtype)
        return k_tt - k_td @ fac.solve(k_td.T)
    # ntk: needs the NNGP too (the prior covariance of the initial outputs)
    for k, what in ((k_train_train, 'k_train_train'), (k_test_train, 'k_test_train')):
        if _is_array(k) or _attr_or_none(k, 'nngp') is None:
            raise InputError(f'the NTK posterior covariance needs the NNGP as well: pass {what} '
                             'as a kernel object / namedtuple with both .nngp and .ntk')
    k_dd = as_matrix(_attr(k_train_train, 'nngp', 'k_train_train')).astype(dtype)
    kn_td = _attr(k_test_train, 'nngp', 'k_test_train')
    k_tt = _attr(k_test_test, 'nngp', 'k_test_test')
    check_input(kn_td, 'k_test_train')
    check_input(k_tt, 'k_test_test')
    kn_td, k_tt = as_matrix(kn_td).astype(dtype), as_matrix(k_tt).astype(dtype)
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
    check_input(y_train, 'y_train')
    check_positive(learning_rate, 'learning_rate')
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
                bad = is_concrete(out[g]) and not bool(jnp.all(jnp.isfinite(out[g])))
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

    factors: dict[str, Factor] = {}
    posteriors: dict[tuple, Callable] = {}

    def factor(g):
        if g not in factors:
            k = train_kernels((g,))[g]
            dtype = _dtype(k, y_train)
            factors[g] = Factor(k, dtype, diag_reg, diag_reg_absolute_scale,
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
            check_results(res, 'gradient_descent_mse_ensemble prediction')
            return res[0] if single else res

        out = {}
        for g in names:
            fac = factor(g)
            dtype = fac.mat.dtype
            tau = scaled_times(t, learning_rate / n, dtype)
            lam, v = fac.eig()
            lam_t = lam.reshape((1,) * tau.ndim + lam.shape)
            tau_e = tau[..., None]
            coef = v.T @ layout.flat(y_train.astype(dtype))            # (P, C)
            if k_td is None:
                rest = layout.rest_shape
                mean = jnp.einsum('pi,...i,ic->...pc', v, 1. - decay(lam_t, tau_e), coef)
            else:
                rest = _check_test_kernel(k_td[g], layout)
                check_phi_accuracy(lam, tau, dtype, fac.what)
                g_td = as_matrix(k_td[g]).astype(dtype)
                mean = jnp.einsum('qi,...i,ic->...qc', g_td @ v, phi(lam_t, tau_e), coef)
            mean = layout.unflat(mean, rest)
            if not compute_cov:
                out[g] = mean
                continue
            k_nngp = as_matrix(k_dd['nngp']).astype(dtype)
            if k_td is None:
                if g == 'nngp':
                    cov = jnp.einsum('pi,...i,qi->...pq', v,
                                     lam_t * decay(lam_t, 2 * tau_e), v)
                else:
                    e = jnp.einsum('pi,...i,qi->...pq', v, decay(lam_t, tau_e), v)
                    cov = e @ k_nngp @ e
            else:
                g_td = as_matrix(k_td[g]).astype(dtype)
                n_td = as_matrix(k_td['nngp']).astype(dtype)
                n_tt = _lead(as_matrix(k_tt).astype(dtype), tau.ndim)
                gv = g_td @ v                                          # (Q, P)
                if g == 'nngp':
                    cov = n_tt - jnp.einsum('qi,...i,ri->...qr', gv, phi(lam_t, 2 * tau_e), gv)
                else:
                    nv = n_td @ v
                    a = jnp.einsum('pi,...i,qi->...pq', v, phi(lam_t, tau_e), gv)   # φ Θ_dt
                    b = jnp.einsum('qi,...i,ri->...qr', gv, phi(lam_t, tau_e), nv)  # Θ_td φ K_dt
                    cov = (n_tt + jnp.swapaxes(a, -1, -2) @ k_nngp @ a
                           - b - jnp.swapaxes(b, -1, -2))
            out[g] = Gaussian(mean, from_matrix(cov, rest, rest, n_lead=tau.ndim))
        check_results(out, 'gradient_descent_mse_ensemble prediction')
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
            if not _same_value(v_dd, v_tt):
                raise InputError(f'kernel_fn keyword {k!r} is {v_dd!r} for the train set but '
                                 f'{v_tt!r} for the test set; they must agree')
            kw_td[k] = v_tt
        kw_tt[k] = v_tt
    return kw_td, kw_tt


def _same_value(a, b) -> bool:
    """Whether two keyword values are the same: the same object, or pytrees of one structure
    whose leaves are equal (concrete arrays compared by value, e.g. two copies of `params`;
    traced ones cannot be, and count as different)."""
    if a is b:
        return True
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    if tree_a != tree_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if x is y:
            continue
        if _is_array(x) or _is_array(y):
            if not (is_concrete(x) and is_concrete(y) and np.array_equal(x, y)):
                return False
            continue
        try:
            if not bool(x == y):
                return False
        except Exception:  # noqa: BLE001 - incomparable values are different
            return False
    return True


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
    k = as_matrix(k)
    factor = k.shape[0] if y_train_size is None else y_train_size
    check_positive(factor, 'y_train_size')
    if is_concrete(momentum) and not np.isfinite(momentum):
        raise InputError(f'momentum must be finite, got {momentum!r}')
    check_finite(k, 'ntk_train_train')
    evals = jnp.linalg.eigvalsh(k)
    top = evals[-1]
    if is_concrete(evals):
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
    check_input(y_train, 'y_train')
    dtype = _dtype(k, y_train)
    mat = regularize(as_matrix(k).astype(dtype), diag_reg, diag_reg_absolute_scale)
    low = cholesky(mat, f'train-train {get} kernel')
    y = layout.flat(y_train.astype(dtype))
    alpha = jsl.solve_triangular(low, y, lower=True)
    n_rows, n_cols = y.shape
    out = (-0.5 * jnp.sum(alpha ** 2) - n_cols * jnp.sum(jnp.log(jnp.diag(low)))
           - 0.5 * n_rows * n_cols * jnp.log(2 * jnp.pi))
    check_results(out, 'marginal_log_likelihood')
    return out
