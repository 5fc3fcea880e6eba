"""Elementwise nonlinearities: the op models and their closed-form kernels.

For (u, v) zero-mean jointly Gaussian with Var u = q1, Var v = q2 and Cov(u, v) = c12, each
rule's `kernel(xp, op, c12, q1, q2)` returns

    k12 = E[φ(u) φ(v)]       (the NNGP map, K' = k12)
    kdot12 = E[φ'(u) φ'(v)]  (the NTK factor, Θ' = kdot12 · Θ)

written once against the namespace `xp` (`xp.JNP` for arrays, `xp.SYM` for sympy expressions).
The same call maps the marginal variances (c12 = q1 = q2); every formula is exact and finite
there.  q1 and q2 are typically per-row arrays, (N, 1) and (1, N), against an (N, N) c12.  The
closed forms use D = q1·q2 - c12² (≥ 0, exactly 0 when c12 = q1 = q2) instead of a correlation,
so they need no division by √(q1 q2) and no clipping, and the diagonal is exact to round-off;
`xp.safe_sqrt(D)` keeps their derivatives finite at D = 0 (its coefficient vanishes there).
Only ExpNormalized and ElementwiseNumerical form ρ, from per-row 1/√q.

By Price's theorem kdot12 = ∂k12/∂c12 for every φ whose derivative is a function; φ with jumps
(Sign, RectifiedMonomial(0)) follow neural-tangents and the finite network's autodiff: φ' = 0.

`phi(op, x)` is φ itself in jax.numpy, for the finite network (None for ExpNormalized).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Annotated, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from ..errors import NoClosedFormError, NtcError
from ..ir.op import Op, PosInt, max_spatial
from ..ir.registry import finite_rule, kernel_rule, register_op


class Nonlinearity(Op):
    """An elementwise nonlinearity φ.  Its kernel rule maps (K12, K11, K22) to E[φ(u)φ(v)]
    and E[φ'(u)φ'(v)] for (u, v) Gaussian with that covariance."""

    needs_gaussian: ClassVar[bool] = True
    flops_per_entry: ClassVar[float] = 20.0

    def marginal_need(self, out, in_type):
        # reads the variance at every position, whatever its consumers need
        return max_spatial(out, 'DIAG' if in_type.spatial_axes else 'NONE')


@register_op
class ABRelu(Nonlinearity):
    """φ(x) = a·min(x, 0) + b·max(x, 0)."""

    op: Literal['ABRelu'] = 'ABRelu'
    a: float
    b: float
    do_stabilize: bool = False


@register_op
class Relu(Nonlinearity):
    op: Literal['Relu'] = 'Relu'
    do_stabilize: bool = False


@register_op
class LeakyRelu(Nonlinearity):
    op: Literal['LeakyRelu'] = 'LeakyRelu'
    alpha: float
    do_stabilize: bool = False


@register_op
class Abs(Nonlinearity):
    op: Literal['Abs'] = 'Abs'
    do_stabilize: bool = False


@register_op
class Erf(Nonlinearity):
    """φ(x) = a·erf(b·x) + c."""

    op: Literal['Erf'] = 'Erf'
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


@register_op
class Sigmoid_like(Nonlinearity):  # noqa: N801 (NT's name)
    """φ(x) = erf(x / 2.4020563531719796) / 2 + 1/2, a sigmoid-like function with an Erf kernel."""

    op: Literal['Sigmoid_like'] = 'Sigmoid_like'


@register_op
class Gelu(Nonlinearity):
    """φ(x) = x·Φ(x); `approximate` uses the tanh form in the finite network only."""

    op: Literal['Gelu'] = 'Gelu'
    approximate: bool = False


@register_op
class Sin(Nonlinearity):
    """φ(x) = a·sin(b·x + c)."""

    op: Literal['Sin'] = 'Sin'
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


@register_op
class Cos(Nonlinearity):
    """φ(x) = a·cos(b·x + c)."""

    op: Literal['Cos'] = 'Cos'
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


@register_op
class Exp(Nonlinearity):
    """φ(x) = a·exp(b·x)."""

    op: Literal['Exp'] = 'Exp'
    a: float = 1.0
    b: float = 1.0


@register_op
class ExpNormalized(Nonlinearity):
    """The "Gaussian normalised kernel" of Shankar et al. 2020 ("Neural Kernels Without
    Tangents", p. 6), applied to the covariance; it has no finite-network form."""

    op: Literal['ExpNormalized'] = 'ExpNormalized'
    gamma: float = 1.0
    shift: float = -1.0
    do_clip: bool = False


@register_op
class Gaussian(Nonlinearity):
    """φ(x) = a·exp(b·x²)."""

    op: Literal['Gaussian'] = 'Gaussian'
    a: float = 1.0
    b: float = -1.0


@register_op
class Rbf(Nonlinearity):
    """φ(x) = sqrt(2)·sin(sqrt(2γ)·x + π/4), whose kernel is exp(-γ‖x1 - x2‖²)."""

    op: Literal['Rbf'] = 'Rbf'
    gamma: Annotated[float, Field(gt=0)] = 1.0


@register_op
class Sign(Nonlinearity):
    op: Literal['Sign'] = 'Sign'


@register_op
class Gabor(Nonlinearity):
    """φ(x) = exp(-x²)·sin(x)."""

    op: Literal['Gabor'] = 'Gabor'


@register_op
class Monomial(Nonlinearity):
    """φ(x) = x**degree."""

    op: Literal['Monomial'] = 'Monomial'
    degree: Annotated[int, Field(ge=0)]


@register_op
class RectifiedMonomial(Nonlinearity):
    """φ(x) = max(x, 0)**degree (the arc-cosine kernel of that order)."""

    op: Literal['RectifiedMonomial'] = 'RectifiedMonomial'
    degree: Annotated[int, Field(ge=0)]


@register_op
class Polynomial(Nonlinearity):
    """φ(x) = Σ_i coef[i]·x**i."""

    op: Literal['Polynomial'] = 'Polynomial'
    coef: tuple[float, ...]


@register_op
class Hermite(Nonlinearity):
    """φ(x) = He_degree(x)/sqrt(degree!), the normalised probabilists' Hermite polynomial."""

    op: Literal['Hermite'] = 'Hermite'
    degree: Annotated[int, Field(ge=0)]


@register_op
class Elementwise(Nonlinearity):
    """A user nonlinearity `fn` with its NNGP map `nngp_fn(cov12, var1, var2)` and, optionally,
    `d_nngp_fn` for the NTK (otherwise ∂nngp_fn/∂cov12 by autodiff, Price's theorem)."""

    op: Literal['Elementwise'] = 'Elementwise'
    in_specs: ClassVar[bool] = False
    fn: Callable | None = None
    nngp_fn: Callable | None = None
    d_nngp_fn: Callable | None = None

    def no_kernel(self, ins):
        if self.nngp_fn is not None:
            return None
        return ('Elementwise was given no nngp_fn, so it has no kernel',
                'pass nngp_fn=..., use ElementwiseNumerical(fn, deg) for a numerical kernel, or '
                'estimate the kernel with ntc.monte_carlo_kernel_fn')


@register_op
class ElementwiseNumerical(Nonlinearity):
    """A user nonlinearity whose kernel is computed by `deg`-point Gauss-Hermite quadrature."""

    op: Literal['ElementwiseNumerical'] = 'ElementwiseNumerical'
    in_specs: ClassVar[bool] = False
    fn: Callable
    deg: PosInt
    df: Callable | None = None
    flops_per_entry: ClassVar[float] = 200.0


SIGMOID_LIKE_SCALE = 2.4020563531719796


SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class ActivationRule:
    """`kernel(xp, op, c12, q1, q2) -> (k12, kdot12)`, `phi(op, x) -> φ(x)` (or None) and
    `variance(xp, op, q) -> E[φ(u)²]` for u ~ N(0, q) (or None: `kernel` at c12 = q1 = q2)."""

    kernel: Callable
    phi: Callable | None
    variance: Callable | None = None


ACTIVATIONS: dict[str, ActivationRule] = {}


def register(kind: str, phi: Callable | None = None, variance: Callable | None = None):
    """Register the decorated `(xp, op, c12, q1, q2) -> (k12, kdot12)` as `kind`'s rule.  The
    table's kernel broadcasts both results to the inputs' common shape (and float dtype).
    `variance(xp, op, q)`, when given, is the same map on the diagonal in closed form: the
    per-position marginals then skip the off-diagonal arithmetic."""
    def deco(fn):
        def kernel(xp, op, c12, q1, q2):
            k12, kdot12 = fn(xp, op, c12, q1, q2)
            return xp.broadcast(k12, c12, q1, q2), xp.broadcast(kdot12, c12, q1, q2)

        kernel.__name__, kernel.__doc__, kernel.__wrapped__ = fn.__name__, fn.__doc__, fn
        ACTIVATIONS[kind] = ActivationRule(kernel=kernel, phi=phi, variance=variance)
        kernel_rule(kind)(activation_kernel)
        finite_rule(kind)(activation_apply)
        return fn
    return deco


def activation_kernel(ctx, node, k):
    """K' = E[φ(u)φ(v)], Θ' = E[φ'(u)φ'(v)]·Θ, cov' = E[φ(u)²]-style map of each marginal.
    A marginal of per-position variances (DIAG or no spatial axes) maps through the rule's
    closed-form `variance` where it has one: the same values (the kernel at c12 = q1 = q2), but
    a few multiplies instead of the arc-cosine, so XLA emits no kernels of its own for it."""
    rule = ACTIVATIONS[node.op.kind]
    q1, q2 = k.cross_vars()
    nngp, kdot = rule.kernel(ctx.xp, node.op, k.nngp, q1, q2)
    ntk = None if (k.ntk is None or not ctx.want_ntk) else k.ntk * kdot
    variances_only = k.layout.marginal != 'FULL'

    def marginal(cov):
        if cov is None:
            return None
        if rule.variance is not None and variances_only:
            return rule.variance(ctx.xp, node.op, cov)
        qa, qb = k.marginal_vars(cov)
        return rule.kernel(ctx.xp, node.op, cov, qa, qb)[0]

    return k.replace(nngp=nngp, ntk=ntk, cov1=marginal(k.cov1), cov2=marginal(k.cov2))


def activation_apply(op, params, inputs, ctx):
    phi = ACTIVATIONS[op.kind].phi
    if phi is None:
        raise NtcError(f'{op.kind} defines a kernel only and has no finite-network form',
                       hint='use it with kernel_fn, not apply_fn')
    return phi(op, inputs[0])


def _gap(c12, q1, q2):
    """D = q1·q2 - c12² = det Σ ≥ 0 (exactly 0 when c12 = q1 = q2; √D = √(q1 q2)·sinθ)."""
    return q1 * q2 - c12 * c12


def _sine(xp, c12, qq):
    """√D = √(q1 q2)·sinθ for the kernels with a square-root singularity at |ρ| = 1.  D below
    its own rounding error counts as 0, so a pair that is the same input up to a few ulps (an
    x1-with-itself entry computed by different reductions) stays exactly on the diagonal instead
    of being pushed off it by √ε."""
    return xp.safe_sqrt(xp.drop_roundoff(qq - c12 * c12, qq))


def _abrelu(xp, a, b, c12, q1, q2):
    """φ = a·min(x, 0) + b·max(x, 0) (Cho & Saul 2009, first-order arc-cosine kernel):
    with θ = arccos(c12/√(q1 q2)) = atan2(√D, c12),

        kdot12 = (a² + b²)/2 - (a - b)²·θ/(2π),    k12 = (a - b)²·√D/(2π) + c12·kdot12.
    """
    a, b = xp.const(a), xp.const(b)
    root = _sine(xp, c12, q1 * q2)
    theta = xp.arctan2(root, c12)
    spread = (a - b) ** 2 / (2 * xp.pi)
    kdot = (a * a + b * b) / 2 - spread * theta
    return spread * root + c12 * kdot, kdot


def _abrelu_variance(a, b):
    """E[φ(u)²] = (a² + b²)/2 · q for φ = a·min(x, 0) + b·max(x, 0), u ~ N(0, q): `_abrelu` at
    c12 = q1 = q2 (√D = θ = 0), bitwise."""
    def variance(xp, op, q):
        aa, bb = xp.const(a(op)), xp.const(b(op))
        return q * ((aa * aa + bb * bb) / 2)
    return variance


def _min_max(a, b):
    return lambda x: a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)


@register('ABRelu', phi=lambda op, x: _min_max(op.a, op.b)(x),
          variance=_abrelu_variance(lambda op: op.a, lambda op: op.b))
def abrelu(xp, op, c12, q1, q2):
    """a·min(x, 0) + b·max(x, 0); `do_stabilize` is a numerical option of NT with no effect
    here (the formula has no division)."""
    return _abrelu(xp, op.a, op.b, c12, q1, q2)


@register('Relu', phi=lambda op, x: jnp.maximum(x, 0),
          variance=_abrelu_variance(lambda op: 0, lambda op: 1))
def relu(xp, op, c12, q1, q2):
    """max(x, 0): ABRelu(0, 1)."""
    return _abrelu(xp, 0, 1, c12, q1, q2)


@register('LeakyRelu', phi=lambda op, x: _min_max(op.alpha, 1.0)(x),
          variance=_abrelu_variance(lambda op: op.alpha, lambda op: 1))
def leaky_relu(xp, op, c12, q1, q2):
    """alpha·min(x, 0) + max(x, 0): ABRelu(alpha, 1)."""
    return _abrelu(xp, op.alpha, 1, c12, q1, q2)


@register('Abs', phi=lambda op, x: jnp.abs(x),
          variance=_abrelu_variance(lambda op: -1, lambda op: 1))
def abs_(xp, op, c12, q1, q2):
    """|x|: ABRelu(-1, 1)."""
    return _abrelu(xp, -1, 1, c12, q1, q2)


@register('Sign', phi=lambda op, x: jnp.sign(x))
def sign(xp, op, c12, q1, q2):
    """sign(x): k12 = (2/π)·arcsin(c12/√(q1 q2)) = (2/π)·atan2(c12, √D) (Cho & Saul 2009,
    order 0, shifted); 0 when a variance is 0.  kdot12 = 0: sign' = 2δ is not a function, and
    0 is what neural-tangents and the finite network's autodiff use."""
    root = _sine(xp, c12, q1 * q2)
    return (2 / xp.pi) * xp.arctan2(c12, root), 0


def _padd(p, r):
    n = max(len(p), len(r))
    return [(p[i] if i < len(p) else 0) + (r[i] if i < len(r) else 0) for i in range(n)]


def _pderiv(p):
    return [i * p[i] for i in range(1, len(p))]


def _pmul_1m_rho2(p):
    return _padd(p, [0, 0] + [-x for x in p])


@cache
def arccos_polys(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Integer polynomials (a_n, b_n) in ρ, coefficients ascending, with the arc-cosine kernel

        J_n(θ) = (-1)^n sin^{2n+1}θ (1/sinθ · ∂/∂θ)^n ((π - θ)/sinθ)   (Cho & Saul 2009)
               = (π - θ)·a_n(ρ) + sinθ·b_n(ρ),   ρ = cosθ.

    In ρ the operator is d/dρ, and writing (d/dρ)^n[(π - θ)/sinθ] = (π - θ) a_n/sin^{2n+1}θ
    + b_n/sin^{2n}θ gives a_0 = 1, b_0 = 0 and
    a_{n+1} = (1 - ρ²) a_n' + (2n + 1) ρ a_n,  b_{n+1} = (1 - ρ²) b_n' + 2n ρ b_n + a_n.
    a_n has the parity of n, b_n the opposite one, and a_n(1) = b_n(1) = (2n - 1)!!.
    """
    a, b = [1], [0]
    for k in range(n):
        a, b = (_padd(_pmul_1m_rho2(_pderiv(a)), [0] + [(2 * k + 1) * x for x in a]),
                _padd(_padd(_pmul_1m_rho2(_pderiv(b)), [0] + [2 * k * x for x in b]), a))
    return tuple(a), tuple(b)


def _homogeneous(xp, coeffs, c12, qq, degree):
    """Σ_j coeffs[j]·c12^j·qq^((degree - j)/2) for a polynomial of parity `degree`: p^degree
    times the polynomial at ρ = c12/p, with p² = qq.  Exact in c12 and q1·q2, no square root."""
    out = 0
    for j, w in enumerate(coeffs):
        if w == 0:
            continue
        term = xp.const(w)
        if j:
            term = term * c12 ** j
        k = (degree - j) // 2
        if k:
            term = term * qq ** k
        out = out + term
    return out


def _rectified_phi(op, x):
    return jnp.where(x >= 0, x ** op.degree, 0.0)


@register('RectifiedMonomial', phi=_rectified_phi)
def rectified_monomial(xp, op, c12, q1, q2):
    """max(x, 0)^n (step function for n = 0): the arc-cosine kernel of order n
    (Cho & Saul 2009), E = (q1 q2)^{n/2} J_n(θ)/(2π), with J_n = (π - θ)a_n(ρ) + sinθ b_n(ρ)
    from `arccos_polys`.  Multiplied out, p^n a_n(ρ) and p^{n-1} b_n(ρ) are polynomials in
    c12 and q1·q2, so

        k12 = [(π - θ)·A_n + √D·B_{n-1}] / (2π),   π - θ = atan2(√D, -c12),
        kdot12 = n²·(k12 of order n - 1)  (φ' = n·max(x, 0)^{n-1}; 0 for n = 0),

    where A_n = p^n a_n(ρ), B_{n-1} = p^{n-1} b_n(ρ), p = √(q1 q2).  Finite for every
    correlation in [-1, 1] (neural-tangents divides by sinθ: NaN at ρ = ±1, and its autodiff
    NTK is wrong near there); the diagonal is (2n - 1)!!·q^n/2."""
    n = op.degree
    qq = q1 * q2
    root = _sine(xp, c12, qq)
    t = xp.arctan2(root, -c12)

    def j(m):
        a, b = arccos_polys(m)
        val = t * _homogeneous(xp, a, c12, qq, m)
        if m:
            val = val + root * _homogeneous(xp, b, c12, qq, m - 1)
        return val / (2 * xp.pi)

    kdot = n * n * j(n - 1) if n else 0
    return j(n), kdot


def _monomial_in_hermite(i: int, l: int) -> int:
    """α_{i,l}: x^i = Σ_l α_{i,l} He_l(x), α = i!/(l!·m!·2^m) for i - l = 2m ≥ 0."""
    m, r = divmod(i - l, 2)
    if r or m < 0:
        return 0
    return math.factorial(i) // (math.factorial(l) * math.factorial(m) * 2 ** m)


def _poly_kernel(xp, coef, c12, q1, q2, scale=1):
    """E[p(u) p(v)] and E[p'(u) p'(v)] for p(x) = Σ_i coef[i]·x^i, exactly (Mehler; Han et al.
    2022, "Fast Neural Kernel Embeddings for General Activations", §4).  In the Hermite basis
    p(√q·x) = Σ_l A_l(q)·He_l(x) with the per-row polynomials A_l(q) = Σ_i coef[i]·α_{i,l}·
    q^{(i-l)/2} (i ≡ l mod 2), and E[He_l(x) He_m(y)] = δ_lm·l!·ρ^l gives

        k12 = Σ_l l!·c12^l·A_l(q1)·A_l(q2),   kdot12 = Σ_{l≥1} l·l!·c12^{l-1}·A_l(q1)·A_l(q2)

    (the second is ∂k12/∂c12, and equals the same sum for p'), i.e. the bivariate moments
    E[u^i v^j] = Σ_l α_{i,l} α_{j,l} l! c12^l q1^{(i-l)/2} q2^{(j-l)/2}.  `scale` multiplies both.
    """
    deg = len(coef) - 1
    k12, kdot = 0, 0
    for l in range(deg + 1):
        cs = [coef[i] * _monomial_in_hermite(i, l) for i in range(l, deg + 1, 2)]
        if not any(cs):
            continue
        a1, a2 = (_horner(xp, cs, q) for q in (q1, q2))
        w = math.factorial(l) * scale
        prod = a1 * a2
        k12 = k12 + xp.const(w) * (prod * c12 ** l if l else prod)
        if l:
            kdot = kdot + xp.const(w * l) * (prod * c12 ** (l - 1) if l > 1 else prod)
    return k12, kdot


def _horner(xp, coeffs, x):
    """Σ_k coeffs[k]·x^k (a per-row polynomial in a variance)."""
    out = xp.const(coeffs[-1])
    for w in reversed(coeffs[:-1]):
        out = out * x + xp.const(w)
    return out


def _polyval(coef, x):
    out = jnp.zeros_like(x)
    for w in reversed(coef):
        out = out * x + float(w)
    return out


@register('Polynomial', phi=lambda op, x: _polyval(op.coef, x))
def polynomial(xp, op, c12, q1, q2):
    """Σ_i coef[i]·x^i: see `_poly_kernel` (Han et al. 2022)."""
    if not op.coef:
        return 0, 0
    return _poly_kernel(xp, op.coef, c12, q1, q2)


@register('Monomial', phi=lambda op, x: x ** op.degree)
def monomial(xp, op, c12, q1, q2):
    """x^n: E[u^n v^n] = Σ_l α_{n,l}²·l!·c12^l·(q1 q2)^{(n-l)/2}; e.g. n = 2: 2c12² + q1 q2.
    n = 0 gives k12 = 1, kdot12 = 0 (as neural-tangents)."""
    return _poly_kernel(xp, (0,) * op.degree + (1,), c12, q1, q2)


@cache
def hermite_coefficients(n: int) -> tuple[int, ...]:
    """Integer coefficients (ascending) of the probabilists' He_n(x) = Σ_m (-1)^m n!/(m!(n-2m)!
    2^m) x^{n-2m}."""
    out = [0] * (n + 1)
    for m in range(n // 2 + 1):
        out[n - 2 * m] = ((-1) ** m * math.factorial(n)
                          // (math.factorial(m) * math.factorial(n - 2 * m) * 2 ** m))
    return tuple(out)


def _hermite_phi(op, x):
    return _polyval(hermite_coefficients(op.degree), x) / math.sqrt(math.factorial(op.degree))


@register('Hermite', phi=_hermite_phi)
def hermite(xp, op, c12, q1, q2):
    """He_n(x)/√n!: the exact Gaussian expectation for any variances, via `_poly_kernel` with
    scale 1/n!.  At q1 = q2 = 1 it is Mehler's k12 = c12^n, kdot12 = n·c12^{n-1} (Han et al.
    2022), which is all neural-tangents computes (it assumes unit variances)."""
    n = op.degree
    return _poly_kernel(xp, hermite_coefficients(n), c12, q1, q2,
                        scale=Fraction(1, math.factorial(n)))


def _erf_kernel(xp, a, b, c, c12, q1, q2):
    """a·erf(b·x) + c (Williams 1997): with e = 1 + 2b²(q1 + q2) + 4b⁴·D = (1 + 2b²q1)(1 +
    2b²q2) - (2b²c12)²,

        k12 = (2a²/π)·arcsin(2b²c12/√((1+2b²q1)(1+2b²q2))) + c² = (2a²/π)·atan2(2b²c12, √e) + c²,
        kdot12 = (4a²b²/π)/√e.
    """
    a, b, c = xp.const(a), xp.const(b), xp.const(c)
    bb = b * b
    e = 1 + 2 * bb * (q1 + q2) + 4 * bb * bb * _gap(c12, q1, q2)
    inv_root = xp.rsqrt(e)
    k12 = (2 * a * a / xp.pi) * xp.arctan2(2 * bb * c12, e * inv_root) + c * c
    return k12, (4 * a * a * bb / xp.pi) * inv_root


def _erf_phi(a, b, c):
    return lambda x: a * jax.scipy.special.erf(b * x) + c


@register('Erf', phi=lambda op, x: _erf_phi(op.a, op.b, op.c)(x))
def erf(xp, op, c12, q1, q2):
    """a·erf(b·x) + c: see `_erf_kernel`."""
    return _erf_kernel(xp, op.a, op.b, op.c, c12, q1, q2)


@register('Sigmoid_like', phi=lambda op, x: _erf_phi(0.5, 1 / SIGMOID_LIKE_SCALE, 0.5)(x))
def sigmoid_like(xp, op, c12, q1, q2):
    """erf(x/2.4020563531719796)/2 + 1/2: Erf(1/2, 1/2.4020563531719796, 1/2)."""
    return _erf_kernel(xp, 0.5, 1 / SIGMOID_LIKE_SCALE, 0.5, c12, q1, q2)


@register('Gelu', phi=lambda op, x: jax.nn.gelu(x, approximate=op.approximate))
def gelu(xp, op, c12, q1, q2):
    """x·Φ(x) (Tsuchida et al. 2021, "Avoiding kernel fixed points"): with P = (1+q1)(1+q2)
    and δ = √(P - c12²) = √(1 + q1 + q2 + D),

        k12 = c12/4 + [c12²/(P·δ) + q1 q2·δ/P + c12·atan2(c12, δ)]/(2π),
        kdot12 = 1/4 + atan2(c12, δ)/(2π) + c12/(2πδ)·[1 + 1/δ² + (1 - q1 q2)/P]  (= ∂k12/∂c12).

    `approximate` (the tanh form) changes the finite network only, as in neural-tangents."""
    inv_p = (1 / (1 + q1)) * (1 / (1 + q2))
    qq = q1 * q2
    d2 = 1 + q1 + q2 + (qq - c12 * c12)
    inv_delta = xp.rsqrt(d2)
    delta = d2 * inv_delta
    angle = xp.arctan2(c12, delta)
    w = 1 / (2 * xp.pi)
    k12 = c12 / 4 + w * (c12 * c12 * inv_p * inv_delta + qq * delta * inv_p + c12 * angle)
    kdot = (xp.const(0.25) + w * angle
            + w * c12 * inv_delta * (1 + inv_delta * inv_delta + (1 - qq) * inv_p))
    return k12, kdot


def _sin_kernel(xp, a, b, c, c12, q1, q2):
    """a·sin(b·x + c): sin·sin = [cos(b(u-v)) - cos(b(u+v) + 2c)]/2 and E cos(t·w) =
    exp(-Var(w)t²/2) give, with m = (q1 + q2)/2,

        k12 = (a²/2)·[e^{b²(c12 - m)} - cos(2c)·e^{-b²(c12 + m)}],
        kdot12 = (a²b²/2)·[e^{b²(c12 - m)} + cos(2c)·e^{-b²(c12 + m)}].
    """
    a, b = xp.const(a), xp.const(b)
    bb = b * b
    m = (q1 + q2) / 2
    plus = xp.exp(bb * (c12 - m))
    minus = xp.cos(2 * c) * xp.exp(-bb * (c12 + m))
    half = a * a / 2
    return half * (plus - minus), half * bb * (plus + minus)


@register('Sin', phi=lambda op, x: op.a * jnp.sin(op.b * x + op.c))
def sin(xp, op, c12, q1, q2):
    """a·sin(b·x + c): see `_sin_kernel`."""
    return _sin_kernel(xp, op.a, op.b, xp.const(op.c), c12, q1, q2)


@register('Cos', phi=lambda op, x: op.a * jnp.cos(op.b * x + op.c))
def cos(xp, op, c12, q1, q2):
    """a·cos(b·x + c) = a·sin(b·x + c + π/2)."""
    return _sin_kernel(xp, op.a, op.b, xp.const(op.c) + xp.pi / 2, c12, q1, q2)


@register('Rbf', phi=lambda op, x: math.sqrt(2) * jnp.sin(math.sqrt(2 * op.gamma) * x
                                                           + math.pi / 4))
def rbf(xp, op, c12, q1, q2):
    """√2·sin(√(2γ)·x + π/4), the Sin kernel with a = √2, b² = 2γ, cos(2c) = 0 (Rahimi &
    Recht 2007 random features):  k12 = exp(-γ(q1 + q2 - 2c12)),  kdot12 = 2γ·k12."""
    gamma = xp.const(op.gamma)
    k12 = xp.exp(gamma * (2 * c12 - q1 - q2))
    return k12, 2 * gamma * k12


@register('Exp', phi=lambda op, x: op.a * jnp.exp(op.b * x))
def exp(xp, op, c12, q1, q2):
    """a·exp(b·x) (log-normal moments):  k12 = a²·exp(b²(c12 + (q1 + q2)/2)),  kdot12 = b²·k12."""
    a, b = xp.const(op.a), xp.const(op.b)
    bb = b * b
    k12 = a * a * xp.exp(bb * (c12 + (q1 + q2) / 2))
    return k12, bb * k12


@register('Gaussian', phi=lambda op, x: op.a * jnp.exp(op.b * x * x))
def gaussian(xp, op, c12, q1, q2):
    """a·exp(b·x²): E exp(b(u² + v²)) = det(I - 2bΣ)^{-1/2}, and the tilted covariance
    Σ(I - 2bΣ)^{-1} has off-diagonal c12/det, so with det = 1 - 2b(q1 + q2) + 4b²·D,

        k12 = a²/√det,   kdot12 = 4a²b²·c12/det^{3/2}   (needs det > 0: b·q < 1/4 when b > 0).
    """
    a, b = xp.const(op.a), xp.const(op.b)
    det = 1 - 2 * b * (q1 + q2) + 4 * b * b * _gap(c12, q1, q2)
    t = xp.rsqrt(det)
    k12 = a * a * t
    return k12, 4 * b * b * c12 * k12 * t * t


@register('Gabor', phi=lambda op, x: jnp.exp(-x * x) * jnp.sin(x))
def gabor(xp, op, c12, q1, q2):
    """exp(-x²)·sin(x): sin u sin v = [cos(u - v) - cos(u + v)]/2 and, for w ∈ {(1,-1), (1,1)},
    E[e^{-|x|²} cos(w·x)] = Δ^{-1/2}·exp(-w'Σ'w/2) with Δ = det(I + 2Σ) = 1 + 2s + 4D,
    s = q1 + q2, Σ' = Σ(I + 2Σ)^{-1} = [[q1 + 2D, c12], [c12, q2 + 2D]]/Δ.  With A = (s + 4D)/(2Δ)
    and B = c12/Δ,

        k12 = e^{-A}·sinh(B)/√Δ,
        kdot12 = e^{-A}·[4c12(Δ + 1 + s)·sinh(B) + (Δ + 8c12²)·cosh(B)]/Δ^{5/2}  (= ∂k12/∂c12).
    """
    s = q1 + q2
    d = _gap(c12, q1, q2)
    delta = 1 + 2 * s + 4 * d
    inv_root = xp.rsqrt(delta)
    inv = inv_root * inv_root
    sh, ch = xp.sinh_cosh(c12 * inv)
    shrink = xp.exp(-(s + 4 * d) * inv / 2) * inv_root
    k12 = shrink * sh
    kdot = (4 * c12 * (delta + 1 + s) * k12 + (delta + 8 * c12 * c12) * shrink * ch) * inv * inv
    return k12, kdot


@register('ExpNormalized')
def exp_normalized(xp, op, c12, q1, q2):
    """The "Gaussian normalised kernel" of Shankar et al. 2020 ("Neural Kernels Without
    Tangents", §3 p. 6), a kernel map with no finite network: with ρ = c12/√(q1 q2) (clipped
    to [-1, 1] when `do_clip`; 0 when a variance is 0),

        k12 = √(q1 q2)·exp(γ(ρ + shift)),   kdot12 = γ·exp(γ(ρ + shift)) = ∂k12/∂c12.

    The default shift = -1 keeps the diagonal: k(x, x) = q."""
    gamma, shift = xp.const(op.gamma), xp.const(op.shift)
    r1, r2 = xp.inv_sqrt(q1), xp.inv_sqrt(q2)
    rho = c12 * r1 * r2
    if op.do_clip:
        rho = xp.clip(rho, -1, 1)
    e = xp.exp(gamma * (rho + shift))
    return xp.sqrt(q1) * xp.sqrt(q2) * e, gamma * e


def _user_phi(op, x):
    if op.fn is None:
        raise NtcError(f'{op.kind} was given no finite-network function',
                       hint='pass fn=... to use it with apply_fn')
    return op.fn(x)


@register('Elementwise', phi=_user_phi)
def elementwise(xp, op, c12, q1, q2):
    """User-given k12 = nngp_fn(c12, q1, q2) and kdot12 = d_nngp_fn(c12, q1, q2), by default
    ∂nngp_fn/∂c12 through JAX autodiff (Price's theorem).  The scalar functions are vectorised
    over the broadcast arrays.  `ntc.compile` rejects a missing nngp_fn earlier (the check pass
    reads `Elementwise.no_kernel`); the test here guards direct use of this table."""
    reason = op.no_kernel([])
    if reason is not None:
        raise NoClosedFormError(reason[0], hint=reason[1])
    if xp.symbolic:
        raise NoClosedFormError(f'{op.kind} (a user function) has no symbolic kernel',
                                hint='evaluate it numerically')
    d_fn = op.d_nngp_fn or jax.grad(op.nngp_fn, argnums=0)
    return jnp.vectorize(op.nngp_fn)(c12, q1, q2), jnp.vectorize(d_fn)(c12, q1, q2)


def _value_and_slope(fn, df):
    if df is not None:
        return lambda x: (fn(x), df(x))
    return lambda x: jax.jvp(fn, (x,), (jnp.ones_like(x),))  # elementwise fn: φ'(x)


@register('ElementwiseNumerical', phi=lambda op, x: op.fn(x))
def elementwise_numerical(xp, op, c12, q1, q2):
    """Bivariate Gauss–Hermite quadrature with `deg` nodes per axis (Han et al. 2022, §3):
    u = √q1·x, v = √q2·(ρx + √(1 - ρ²)·y) for independent standard x, y, so

        E[f(u) g(v)] ≈ Σ_ij w_i w_j f(√q1 x_i) g(√q2(ρ x_i + √(1 - ρ²) y_j)),

    exact on polynomials of degree < 2·deg and well-defined at ρ = ±1 (ρ is clipped).  φ' is
    `df`, or the derivative of `fn` by forward-mode autodiff.  Runs as a scan over the
    outer nodes, so memory stays deg × (size of c12)."""
    if xp.symbolic:
        raise NoClosedFormError(f'{op.kind} (numerical quadrature) has no symbolic kernel',
                                hint='evaluate it numerically')
    nodes, weights = np.polynomial.hermite_e.hermegauss(op.deg)
    weights = weights / math.sqrt(2 * math.pi)
    both = _value_and_slope(op.fn, op.df)
    s1 = jnp.sqrt(q1)
    rho = xp.clip(c12 * xp.inv_sqrt(q1) * xp.inv_sqrt(q2), -1.0, 1.0)
    s2 = jnp.sqrt(q2)
    along, across = s2 * rho, s2 * xp.safe_sqrt((1 - rho) * (1 + rho))
    shape = jnp.broadcast_shapes(*(jnp.shape(z) for z in (c12, q1, q2)))
    dtype = jnp.result_type(c12, q1, q2, float)
    ys = jnp.asarray(nodes, dtype).reshape((-1,) + (1,) * len(shape))
    wy = jnp.asarray(weights, dtype).reshape(ys.shape)

    def step(carry, xw):
        x, w = xw
        fu, du = both(s1 * x)
        fv, dv = both((along * x)[None] + across[None] * ys)     # (deg, shape...)
        k, kd = carry
        k = k + w * fu * jnp.sum(wy * fv, axis=0)
        kd = kd + w * du * jnp.sum(wy * dv, axis=0)
        return (k, kd), None

    zero = jnp.zeros(shape, dtype)
    (k12, kdot), _ = jax.lax.scan(step, (zero, zero),
                                  (jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)))
    return k12, kdot
