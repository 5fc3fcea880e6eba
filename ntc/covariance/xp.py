"""Array namespaces for kernel math written once and run two ways.

Kernel rules take a namespace `xp` and call `xp.sqrt`, `xp.arctan2`, ... on their inputs.
`JNP` runs them on JAX arrays (the compiled kernels); `SYM` runs them on sympy expressions (the
symbolic kernels of `ntc.lower.symbolic`).  Both expose the same names:

- constants and elementary functions: `pi`, `sqrt`, `rsqrt`, `exp`, `log`, `sin`, `cos`,
  `arcsin`, `arccos`, `arctan2(y, x)`, `erf`, `abs`, `sign`, `square`, `maximum`, `minimum`,
  `sinh_cosh(x)` (both at once), `where(cond, a, b)`;
- numerical guards, which the math assumes away and `SYM` therefore drops: `clip(x, lo, hi)`
  (identity in `SYM`), `safe_sqrt(x)` (√max(x, 0), with derivative 0 at 0), `inv_sqrt(q)`
  (1/√q, and 0 at q = 0), `safe_div(a, b)` (a/b, and 0 where b = 0),
  `drop_roundoff(x, scale)` (0 where x is within rounding error of 0);
- `const(v)`: a Python number as the namespace's scalar (floats stay weakly typed in `JNP`;
  `SYM` turns short decimals and fractions into exact rationals);
- `broadcast(x, *like)`: `x` with the broadcast shape and float dtype of `like`;
- `symbolic`: False for `JNP`, True for `SYM`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import sympy
from jax import lax
from jax.scipy.special import erf as _jerf


def _where(cond, a, b):
    """jnp.where(cond, a, b) as one `select` equation: jnp.where traces a nested jit call,
    which lowering turns into a function of its own (25 of them in the small WideResNet)."""
    if not (hasattr(a, 'dtype') or hasattr(b, 'dtype')):
        return jnp.where(cond, a, b)  # two Python scalars: jnp's weak result type
    dtype = jnp.result_type(a, b)
    shape = jnp.broadcast_shapes(jnp.shape(cond), jnp.shape(a), jnp.shape(b))
    return lax.select(jnp.broadcast_to(cond, shape), jnp.broadcast_to(jnp.asarray(a, dtype), shape),
                      jnp.broadcast_to(jnp.asarray(b, dtype), shape))


def _signbit(x):
    """Whether x's sign bit is set (-0.0 included), for float32/float64 x, without
    jnp.signbit's nested jit call."""
    ints = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    return lax.bitcast_convert_type(x, ints) < 0


@jax.custom_jvp
def _safe_sqrt(x):
    return jnp.sqrt(jnp.maximum(x, 0.0))


@_safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = _safe_sqrt(x)
    pos = y > 0
    # at 0 the one-sided derivative is infinite; the kernel formulas that call safe_sqrt are
    # arranged so that its coefficient vanishes there, and 0 is the correct contribution
    return y, _where(pos, dx / (2 * _where(pos, y, 1.0)), 0.0)


# atan on [0, 1], branch-free.  float32: atan(t) = t + t·z·Q(z), z = t², with Q fitted here to
# the minimax relative error (Lawson's iterations; 1.2 ulps at most), no division.  float64: the
# Cephes library's atan (S. L. Moshier), a rational function in z after reducing t > 0.66 by
# atan(t) = π/4 + atan((t - 1)/(t + 1)) (~1e-16).
_ATAN32_Q = (0.002920693671, -0.01636793345, 0.04321186908, -0.07552214926, 0.1066600491,
             -0.1421105536, 0.1999377284, -0.3333315274)
_ATAN64_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1,
             -7.500855792314704667340e1, -1.228866684490136173410e2,
             -6.485021904942025371773e1)
_ATAN64_Q = (1.0, 2.485846490142306297962e1, 1.650270098316988542046e2,
             4.328810604912902668951e2, 4.853903996359136964868e2,
             1.945506571482613964425e2)


def _horner(coeffs, z):
    """Σ coeffs[i]·z^(n-1-i) (highest degree first)."""
    out = coeffs[0]
    for c in coeffs[1:]:
        out = out * z + c
    return out


def _atan_unit(t):
    """atan(t) for t in [0, 1], in t's precision."""
    if t.dtype == jnp.float64:
        big = t > 0.66
        u = _where(big, (t - 1) / (t + 1), t)
        z = u * u
        r = u + u * z * (_horner(_ATAN64_P, z) / _horner(_ATAN64_Q, z))
        return _where(big, r + (math.pi / 4 + 3.061616997868383e-17), r)
    z = t * t
    return t + t * z * _horner(_ATAN32_Q, z)


def _atan2(y, x):
    """atan2(y, x) in (-π, π] from `_atan_unit` of min(|x|, |y|)/max(|x|, |y|) and the octant.
    XLA's CPU atan2 is a scalar library call (~7 ns per element here); this is plain
    vectorisable arithmetic (~0.3 ns) with the same accuracy in float32 and float64."""
    y, x = jnp.asarray(y), jnp.asarray(x)
    dtype = jnp.result_type(y, x, float)
    y, x = y.astype(dtype), x.astype(dtype)
    if dtype not in (jnp.float32, jnp.float64):
        return jnp.arctan2(y, x)
    ay, ax = jnp.abs(y), jnp.abs(x)
    hi, lo = jnp.maximum(ay, ax), jnp.minimum(ay, ax)
    r = _atan_unit(lo / _where(hi > 0, hi, 1))
    r = _where(ay > ax, math.pi / 2 - r, r)
    r = _where(x < 0, math.pi - r, r)
    return _where(_signbit(y), -r, r)


class _Jnp:
    """jax.numpy, with the guards that keep kernels finite and differentiable."""

    symbolic = False
    pi = math.pi
    sqrt = staticmethod(jnp.sqrt)
    rsqrt = staticmethod(lax.rsqrt)
    exp = staticmethod(jnp.exp)
    log = staticmethod(jnp.log)
    sin = staticmethod(jnp.sin)
    cos = staticmethod(jnp.cos)
    arcsin = staticmethod(jnp.arcsin)
    arccos = staticmethod(jnp.arccos)
    arctan2 = staticmethod(_atan2)
    erf = staticmethod(_jerf)
    abs = staticmethod(jnp.abs)
    sign = staticmethod(jnp.sign)
    square = staticmethod(jnp.square)
    maximum = staticmethod(jnp.maximum)
    minimum = staticmethod(jnp.minimum)
    where = staticmethod(_where)
    safe_sqrt = staticmethod(_safe_sqrt)

    @staticmethod
    def sinh_cosh(x):
        """(sinh x, cosh x) from one expm1, accurate for small |x|."""
        em = jnp.expm1(x)
        inv = 1.0 / (1.0 + em)
        return 0.5 * em * (1.0 + inv), 0.5 * (1.0 + em + inv)

    @staticmethod
    def clip(x, lo, hi):
        """x limited to [lo, hi]; the derivative passes through unchanged at the bounds."""
        return _where(x < lo, lo, _where(x > hi, hi, x))

    @staticmethod
    def inv_sqrt(q):
        """1/√q for q > 0, else 0 (a zero-variance input has correlation 0 with anything)."""
        pos = q > 0
        return _where(pos, lax.rsqrt(_where(pos, q, 1.0)), 0.0)

    @staticmethod
    def safe_div(a, b):
        """a/b where b ≠ 0, else 0."""
        nz = b != 0
        return _where(nz, a / _where(nz, b, 1.0), 0.0)

    @staticmethod
    def drop_roundoff(x, scale):
        """x, or 0 where x ≤ 64 ulps of `scale`: below the rounding error of a difference of
        terms of size `scale` (e.g. q1·q2 - c12² for a pair whose inputs agree to a few ulps)."""
        eps = jnp.finfo(jnp.result_type(x, float)).eps
        return _where(x > (64 * eps) * scale, x, 0.0)

    @staticmethod
    def const(v):
        return float(v)

    @staticmethod
    def broadcast(x, *like):
        shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in like))
        dtype = jnp.result_type(*like, float)
        return jnp.broadcast_to(jnp.asarray(x, dtype), shape)

    def __repr__(self):
        return 'JNP'


def _sym_const(v):
    if isinstance(v, sympy.Basic):
        return v
    if isinstance(v, (int, Fraction)):
        return sympy.Rational(Fraction(v).numerator, Fraction(v).denominator)
    r = Fraction(v).limit_denominator(1000)
    return sympy.Rational(r.numerator, r.denominator) if float(r) == v else sympy.Float(v)


class _Sym:
    """sympy, with the numerical guards removed (the math assumes valid inputs)."""

    symbolic = True
    pi = sympy.pi
    sqrt = staticmethod(sympy.sqrt)
    exp = staticmethod(sympy.exp)
    log = staticmethod(sympy.log)
    sin = staticmethod(sympy.sin)
    cos = staticmethod(sympy.cos)
    arcsin = staticmethod(sympy.asin)
    arccos = staticmethod(sympy.acos)
    arctan2 = staticmethod(sympy.atan2)
    erf = staticmethod(sympy.erf)
    abs = staticmethod(sympy.Abs)
    sign = staticmethod(sympy.sign)
    maximum = staticmethod(sympy.Max)
    minimum = staticmethod(sympy.Min)
    safe_sqrt = staticmethod(sympy.sqrt)
    const = staticmethod(_sym_const)

    @staticmethod
    def rsqrt(x):
        return 1 / sympy.sqrt(x)

    @staticmethod
    def inv_sqrt(q):
        return 1 / sympy.sqrt(q)

    @staticmethod
    def square(x):
        return x**2

    @staticmethod
    def sinh_cosh(x):
        return sympy.sinh(x), sympy.cosh(x)

    @staticmethod
    def where(cond, a, b):
        return sympy.Piecewise((a, cond), (b, True))

    @staticmethod
    def clip(x, lo, hi):
        return x

    @staticmethod
    def safe_div(a, b):
        return a / b

    @staticmethod
    def drop_roundoff(x, scale):
        return x

    @staticmethod
    def broadcast(x, *like):
        return sympy.sympify(x)

    def __repr__(self):
        return 'SYM'


JNP = _Jnp()
SYM = _Sym()
