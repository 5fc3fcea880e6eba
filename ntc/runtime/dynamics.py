"""Gradient-descent dynamics in function space: the spectral factors of closed-form gradient
flow on the MSE loss (`decay`, `phi` on the eigenvalues of the train kernel, times scaled by
the learning rate), and ODE integration of the flow for any loss (`integrate`), up to a steady
state for infinite time.  Used by `ntc.runtime.predict`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import ode

from ..checks import is_concrete
from ..errors import InputError, NumericalError

# ---------------------------------------------------------------------------------------------
# closed-form gradient flow on the MSE loss


def scaled_times(t, scale, dtype):
    """Times `t` (checked: no NaN, non-negative) as a `dtype` array multiplied by `scale`."""
    t = jnp.asarray(t, dtype)
    if is_concrete(t):
        if bool(jnp.any(jnp.isnan(t))):
            raise InputError(f'time t must not be NaN, got {t}')
        if bool(jnp.any(t < 0)):
            raise InputError(f'time t must be non-negative, got {t}')
    return t * scale


def decay(lam, tau):
    """exp(-lam * tau) with the convention exp(-0 * inf) = 1 (an untrained mode stays put)."""
    return jnp.where(lam > 0, jnp.exp(-lam * tau), 1.)


def phi(lam, tau):
    """(1 - exp(-lam * tau)) / lam: tau at lam = 0 (0 when also tau = inf: pseudo-inverse)."""
    safe = jnp.where(lam > 0, lam, 1.)
    zero = jnp.where(jnp.isinf(tau), 0., tau)
    return jnp.where(lam > 0, -jnp.expm1(-lam * tau) / safe, zero)


# ---------------------------------------------------------------------------------------------
# ODE integration for any loss


def integrate(rhs, state0, times, k_td, max_doublings: int = 64):
    """States at `times` (any shape, non-negative, possibly inf) of the ODE from state0 at 0."""
    if not is_concrete(times):
        return _integrate_traced(rhs, state0, times, k_td)
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


def _integrate_traced(rhs, state0, times, k_td):
    """`integrate` for times traced by `jax.jit`: one ODE solve over 0 and the sorted times
    (finite times only: the steady state of t = inf needs concrete values)."""
    dtype = jax.tree_util.tree_leaves(state0)[0].dtype
    flat = jnp.ravel(jnp.asarray(times, dtype))
    order = jnp.argsort(flat)
    grid = jnp.concatenate([jnp.zeros((1,), dtype), flat[order]])
    traj = ode.odeint(rhs, state0, grid, k_td)
    back = jnp.argsort(order)
    shape = tuple(jnp.shape(times))
    at_zero = flat == 0  # odeint interpolates 0/0 at a target equal to the start: use state0

    def pick(x, x0):
        x = x[1:][back]
        x = jnp.where(at_zero.reshape((-1,) + (1,) * (x.ndim - 1)), x0[None], x)
        return x.reshape(shape + x.shape[1:])

    return jax.tree_util.tree_map(pick, traj, state0)


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
