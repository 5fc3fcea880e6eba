"""Value checks of the predict API and its linear algebra: finite inputs, positive
hyper-parameters, finite results, and whether the conditioning of a solve leaves any correct
digit (Higham 2002, sec. 10.1).  Checks on concrete values only; under `jax.jit` they are
skipped.  Errors are `InputError` (a bad argument) or `NumericalError` (bad numbers), warnings
`AccuracyWarning`."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import is_concrete
from ..errors import AccuracyWarning, InputError, NumericalError

# The hint of every numerical failure of a solve.
FIX_HINT = ('pass diag_reg > 0 (e.g. diag_reg=1e-6) to regularise the kernel, or compute it in '
            "float64 (jax.config.update('jax_enable_x64', True))")

# A solve with a matrix of condition number κ in a precision of machine epsilon ε can carry a
# relative error of about κ·ε (Higham 2002, sec. 10.1).  Above _WARN_AT ntc warns, above _RAISE_AT
# (no correct digit left) it refuses.
_WARN_AT = 1e-2
_RAISE_AT = 1.0


def check_finite(m, what: str):
    """Refuse (`NumericalError`) a concrete matrix with NaN or infinite entries."""
    if not is_concrete(m):
        return
    with jax.ensure_compile_time_eval():
        ok = bool(jnp.all(jnp.isfinite(m)))
    if not ok:
        raise NumericalError(f'{what} contains NaN or infinite entries', hint=FIX_HINT)


def check_input(x, what: str):
    """Refuse NaN / infinite entries in a concrete argument (skipped when traced)."""
    if x is None or not is_concrete(x):
        return
    with jax.ensure_compile_time_eval():    # a constant inside a jit trace stays concrete
        a = jnp.asarray(x)
        ok = not jnp.issubdtype(a.dtype, jnp.inexact) or bool(jnp.all(jnp.isfinite(a)))
        bad = 0 if ok else int(jnp.sum(~jnp.isfinite(a)))
    if not ok:
        raise InputError(f'{what} has {bad} NaN or infinite entr{"y" if bad == 1 else "ies"}',
                         hint=f'pass a finite {what}')


def check_positive(x, what: str):
    """A concrete scalar hyper-parameter must be finite and > 0 (skipped when traced)."""
    if not is_concrete(x):
        return
    v = np.asarray(x)
    if v.size != 1 or not np.isfinite(v).all() or not float(v.reshape(())) > 0:
        raise InputError(f'{what} must be a finite number > 0, got {x!r}')


def check_results(out, what: str):
    """Concrete predictions must be finite: else NumericalError naming the output."""
    leaves = [x for x in jax.tree_util.tree_leaves(out) if x is not None]
    if not is_concrete(*leaves):
        return
    for x in leaves:
        with jax.ensure_compile_time_eval():
            bad = int(jnp.sum(~jnp.isfinite(x)))
        if bad:
            raise NumericalError(f'{what} is not finite: {bad} NaN or infinite entries in the '
                                 'result', hint=FIX_HINT)


def check_accuracy(cond: float, dtype, what: str):
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
        raise NumericalError(f'{text}: its solution has no correct digit', hint=FIX_HINT)
    warnings.warn(AccuracyWarning(f'{text}: results may carry relative errors up to about '
                                  f'{loss:.2g} ({FIX_HINT})'), stacklevel=4)


def check_phi_accuracy(lam, tau, dtype, what: str):
    """Test predictions at time τ apply φ(λ, τ) = (1 - exp(-λτ)) / λ to the eigenvalues λ of the
    train kernel; their sensitivity to rounding is that of a solve with the effective condition
    number λ_max · min(τ, 1 / λ_min), checked like a Cholesky solve (concrete values only)."""
    if not is_concrete(lam, tau):
        return
    with jax.ensure_compile_time_eval():
        top, low = float(jnp.max(lam)), float(jnp.min(lam))
        t_max = float(jnp.max(tau)) if jnp.size(tau) else 0.
    if top <= 0 or t_max <= 0:
        return
    reach = t_max if low <= 0 else min(t_max, 1. / low)
    check_accuracy(top * reach, dtype, what)
