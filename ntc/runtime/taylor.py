"""Taylor expansions of a function in its parameters: `linearize` and `taylor_expand`.

Drop-in for `neural_tangents.linearize` / `neural_tangents.taylor_expand`.  A wide network
trained by gradient descent stays close to its first-order expansion around the initial
parameters (Lee et al. 2019, "Wide neural networks of any depth evolve as linear models under
gradient descent", eq. 5); higher orders capture the leading finite-width corrections (Dyer &
Gur-Ari 2020; Huang & Yau 2020).
"""

from __future__ import annotations

import math

import jax

from ..errors import InputError

__all__ = ['linearize', 'taylor_expand']

_tree = jax.tree_util


def _delta(p, params):
    try:
        return _tree.tree_map(lambda a, b: a - b, p, params)
    except ValueError as e:
        raise InputError(f'the parameters passed do not have the structure of those the '
                         f'expansion was taken at: {e}') from e


def linearize(f, params):
    """First-order expansion ``f_lin(p, *args, **kw) = f(params, ...) + J(params) (p - params)``
    (Lee et al. 2019, eq. 5), computed with one forward-mode JVP per call."""
    def f_lin(p, *args, **kwargs):
        """`f` linearised around the expansion point, evaluated at parameters `p`."""
        dparams = _delta(p, params)
        f0, df = jax.jvp(lambda q: f(q, *args, **kwargs), (params,), (dparams,))
        return _tree.tree_map(lambda a, b: a + b, f0, df)

    return f_lin


def taylor_expand(f, params, degree: int):
    """Degree-``degree`` Taylor polynomial of ``f`` in its parameters around ``params``:
    ``f_tayl(p, *args, **kw) = Σ_{k<=degree} D^k f(params)[p - params]^k / k!``, the k-th
    directional derivatives obtained by nesting forward-mode JVPs along ``p - params``."""
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
        raise InputError(f'degree must be a non-negative integer, got {degree!r}')

    def f_tayl(p, *args, **kwargs):
        """`f` expanded to the requested degree around the expansion point, evaluated at `p`."""
        dparams = _delta(p, params)

        def g(q):
            return f(q, *args, **kwargs)

        def derivatives(fn, order):
            """q -> [fn(q), D fn(q)[dp], ..., D^order fn(q)[dp]^order]."""
            if order == 0:
                return lambda q: [fn(q)]
            lower = derivatives(fn, order - 1)

            def with_next(q):
                values, tangents = jax.jvp(lower, (q,), (dparams,))
                return values + [tangents[-1]]

            return with_next

        terms = derivatives(g, degree)(params)
        scaled = [_tree.tree_map(lambda t, k=k: t / math.factorial(k), term)
                  for k, term in enumerate(terms)]
        return _tree.tree_map(lambda *ts: sum(ts[1:], ts[0]), *scaled)

    return f_tayl
