"""Kernel and finite-network rules of every elementwise nonlinearity.

The math of each nonlinearity lives in `activations.ACTIVATIONS`: a function giving
E[φ(u)φ(v)] and E[φ'(u)φ'(v)] for jointly Gaussian (u, v), written once against an array
namespace so that it runs numerically and symbolically.  The rule applies it to the cross kernel
(NNGP), scales the NTK by the derivative kernel (Θ' = E[φ'φ']·Θ, Jacot et al. 2018), and maps the
marginals with their own variances.
"""

from __future__ import annotations

from ..errors import NtcError
from ..ir import ops
from .activations import ACTIVATIONS
from .registry import finite_rule, kernel_rule

NONLINEARITY_KINDS = tuple(cls.model_fields['op'].default for cls in ops.OP_CLASSES
                           if issubclass(cls, ops.Nonlinearity))


def activation_kernel(ctx, node, k):
    """K' = E[φ(u)φ(v)], Θ' = E[φ'(u)φ'(v)]·Θ, cov' = E[φ(u)²]-style map of each marginal."""
    math = ACTIVATIONS[node.op.kind].kernel
    q1, q2 = k.cross_vars()
    nngp, kdot = math(ctx.xp, node.op, k.nngp, q1, q2)
    ntk = None if (k.ntk is None or not ctx.want_ntk) else k.ntk * kdot

    def marginal(cov):
        if cov is None:
            return None
        qa, qb = k.marginal_vars(cov)
        return math(ctx.xp, node.op, cov, qa, qb)[0]

    return k.replace(nngp=nngp, ntk=ntk, cov1=marginal(k.cov1), cov2=marginal(k.cov2))


def activation_apply(op, params, inputs, ctx):
    phi = ACTIVATIONS[op.kind].phi
    if phi is None:
        raise NtcError(f'{op.kind} defines a kernel only and has no finite-network form',
                       hint='use it with kernel_fn, not apply_fn')
    return phi(op, inputs[0])


kernel_rule(*(k for k in NONLINEARITY_KINDS if k in ACTIVATIONS))(activation_kernel)
finite_rule(*(k for k in NONLINEARITY_KINDS if k in ACTIVATIONS))(activation_apply)
