"""The dual activations of `ntc.layers.activations` against independent numerical integrals.

References are computed here in numpy from φ and φ' written out again.  Smooth φ: a dense 2-D
trapezoid rule (exponentially accurate for these analytic integrands).  Positively homogeneous,
non-smooth φ (the ReLU family, Sign, rectified monomials): the exact polar split
E f(u) g(v) = M·∫ f(√q1 cos α)·g(√q2 cos(α - θ)) dα/2π, integrated by Gauss–Legendre between
the kinks (accurate to round-off).
"""

import math
import zlib

import jax

jax.config.update('jax_enable_x64', True)
jax.config.update('jax_numpy_rank_promotion', 'raise')   # as conftest: no implicit rank promotion

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sympy  # noqa: E402
from numpy.polynomial import hermite_e, polynomial  # noqa: E402
from scipy import special  # noqa: E402

from ntc.covariance.xp import JNP, SYM  # noqa: E402
from ntc.errors import NoClosedFormError  # noqa: E402
from ntc.ir.registry import OPS  # noqa: E402
from ntc.layers import activations as acts  # noqa: E402
from ntc.layers.activations import ACTIVATIONS  # noqa: E402
from ntc.testing.cases import CASES as HARNESS_CASES  # noqa: E402

RNG = np.random.default_rng(20240611)
# the trapezoid rule on a wide uniform grid: exponentially accurate for analytic integrands
# with Gaussian decay, even steep ones like erf(6x), where Gauss–Hermite nodes are too coarse
TZ_X = np.linspace(-10.0, 10.0, 401)
TZ_W = (TZ_X[1] - TZ_X[0]) * np.exp(-TZ_X ** 2 / 2) / math.sqrt(2 * math.pi)
GL_X, GL_W = np.polynomial.legendre.leggauss(48)
SIG = 2.4020563531719796


# ----------------------------------------------------------------------------- references


def gauss_2d(f, g, q1, q2, c):
    """E f(u) g(v) by a 401 × 401 trapezoid rule in u = √q1 x, v = √q2(ρx + σy) (1-D when
    σ = 0)."""
    rho = max(-1.0, min(1.0, c / math.sqrt(q1 * q2)))
    sigma = math.sqrt(1 - rho * rho)
    u = math.sqrt(q1) * TZ_X
    if sigma == 0:
        return float(np.sum(TZ_W * f(u) * g(math.sqrt(q2) * rho * TZ_X)))
    x, y = TZ_X[:, None], TZ_X[None, :]
    v = math.sqrt(q2) * (rho * x + sigma * y)
    return float(np.sum(TZ_W[:, None] * TZ_W[None, :] * f(u)[:, None] * g(v)))


def polar(f, g, degree, q1, q2, c):
    """E f(u) g(v) for f, g positively homogeneous of total degree `degree`."""
    rho = max(-1.0, min(1.0, c / math.sqrt(q1 * q2)))
    theta = math.acos(rho)
    cuts = sorted({0.0, 2 * math.pi} | {(t % (2 * math.pi)) for t in (
        math.pi / 2, 3 * math.pi / 2, theta + math.pi / 2, theta + 3 * math.pi / 2)})
    total = 0.0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi - lo < 1e-15:
            continue
        a = lo + (hi - lo) * (GL_X + 1) / 2
        vals = f(math.sqrt(q1) * np.cos(a)) * g(math.sqrt(q2) * np.cos(a - theta))
        total += (hi - lo) / 2 * float(np.sum(GL_W * vals))
    k = degree + 1  # ∫_0^∞ r^k e^{-r²/2} dr
    radial = 2 ** ((k - 1) / 2) * math.gamma((k + 1) / 2)
    return total * radial / (2 * math.pi)


# ----------------------------------------------------------------------------- the cases

def _ab(a, b):
    return (lambda x: a * np.minimum(x, 0) + b * np.maximum(x, 0),
            lambda x: np.where(x < 0, a, b))


def _rect(n):
    if n == 0:
        return (lambda x: (x >= 0).astype(float)), None
    return (lambda x: np.maximum(x, 0) ** n), (lambda x: np.where(x > 0, n * x ** (n - 1), 0.0))


def _erf(a, b, c):
    return (lambda x: a * special.erf(b * x) + c,
            lambda x: a * b * 2 / math.sqrt(math.pi) * np.exp(-(b * x) ** 2))


def _poly(coef):
    return (lambda x: polynomial.polyval(x, coef),
            lambda x: polynomial.polyval(x, polynomial.polyder(coef)) + 0 * x)


def _herm(n):
    e = [0] * n + [1]
    s = math.sqrt(math.factorial(n))
    return (lambda x: hermite_e.hermeval(x, e) / s + 0 * x,
            lambda x: hermite_e.hermeval(x, hermite_e.hermeder(e)) / s + 0 * x)


def _u(lo, hi):
    return float(RNG.uniform(lo, hi))


def make_cases():
    """(op, φ, φ' or None for the kdot = 0 convention, method): method 'gh', or the total
    homogeneity degree (of φ·φ) for the polar rule."""
    cases = []
    for _ in range(2):
        a, b = _u(-1.5, 1.5), _u(-1.5, 1.5)
        cases.append((acts.ABRelu(a=a, b=b, do_stabilize=bool(RNG.integers(2))), *_ab(a, b), 2))
        al = _u(-0.5, 0.5)
        cases.append((acts.LeakyRelu(alpha=al), *_ab(al, 1.0), 2))
        ea, eb, ec = _u(0.5, 2), _u(0.3, 2), _u(-0.5, 0.5)
        cases.append((acts.Erf(a=ea, b=eb, c=ec), *_erf(ea, eb, ec), 'gh'))
        sa, sb, sc = _u(0.5, 1.5), _u(0.3, 1.5), _u(-1, 1)
        cases.append((acts.Sin(a=sa, b=sb, c=sc),
                      lambda x, a=sa, b=sb, c=sc: a * np.sin(b * x + c),
                      lambda x, a=sa, b=sb, c=sc: a * b * np.cos(b * x + c), 'gh'))
        cases.append((acts.Cos(a=sa, b=sb, c=sc),
                      lambda x, a=sa, b=sb, c=sc: a * np.cos(b * x + c),
                      lambda x, a=sa, b=sb, c=sc: -a * b * np.sin(b * x + c), 'gh'))
        xa, xb = _u(0.3, 1.0), _u(-0.5, 0.5)
        cases.append((acts.Exp(a=xa, b=xb), lambda x, a=xa, b=xb: a * np.exp(b * x),
                      lambda x, a=xa, b=xb: a * b * np.exp(b * x), 'gh'))
        ga, gb = _u(0.5, 1.5), _u(-1, -0.1)
        cases.append((acts.Gaussian(a=ga, b=gb), lambda x, a=ga, b=gb: a * np.exp(b * x * x),
                      lambda x, a=ga, b=gb: 2 * a * b * x * np.exp(b * x * x), 'gh'))
        gm = _u(0.2, 1.0)
        w = math.sqrt(2 * gm)
        cases.append((acts.Rbf(gamma=gm),
                      lambda x, w=w: math.sqrt(2) * np.sin(w * x + math.pi / 4),
                      lambda x, w=w: math.sqrt(2) * w * np.cos(w * x + math.pi / 4), 'gh'))
        coef = tuple(RNG.uniform(-1, 1, size=int(RNG.integers(1, 6))))
        cases.append((acts.Polynomial(coef=coef), *_poly(coef), 'gh'))
    cases += [
        (acts.Relu(), *_ab(0.0, 1.0), 2),
        (acts.Relu(do_stabilize=True), *_ab(0.0, 1.0), 2),
        (acts.Abs(), *_ab(-1.0, 1.0), 2),
        (acts.Sign(), np.sign, None, 0),
        (acts.Sigmoid_like(), *_erf(0.5, 1 / SIG, 0.5), 'gh'),
        (acts.Gelu(), lambda x: x * special.ndtr(x),
         lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi), 'gh'),
        (acts.Gelu(approximate=True), lambda x: x * special.ndtr(x),
         lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi), 'gh'),
        (acts.Gaussian(a=1.0, b=0.02), lambda x: np.exp(0.02 * x * x),
         lambda x: 0.04 * x * np.exp(0.02 * x * x), 'gh'),
        (acts.Gabor(), lambda x: np.exp(-x * x) * np.sin(x),
         lambda x: np.exp(-x * x) * (np.cos(x) - 2 * x * np.sin(x)), 'gh'),
        (acts.Polynomial(coef=()), lambda x: 0 * x, lambda x: 0 * x, 'gh'),
    ]
    for n in range(6):
        cases.append((acts.Monomial(degree=n), *_poly((0,) * n + (1,)), 'gh'))
        cases.append((acts.Hermite(degree=n), *_herm(n), 'gh'))
        cases.append((acts.RectifiedMonomial(degree=n), *_rect(n), 2 * n))
    return cases


def harness_cases(explicit):
    """For an activation with no explicit case above: its instances in the harness's case table
    (`ntc.testing.cases`), checked against the integrals of its own φ (the `phi` registered with
    its closed form) and of φ' by autodiff.  This holds for smooth φ; a φ with kinks needs an
    explicit case above (the trapezoid rule converges slowly across a kink)."""
    covered = {op.kind for op, *_ in explicit} | UNTESTABLE
    out = []
    for kind, cases in HARNESS_CASES.items():
        if kind not in ACTIVATIONS or kind in covered:
            continue
        for case in cases:
            for node in case.layer.graph().nodes():
                if node.op.kind != kind:
                    continue
                phi = ACTIVATIONS[kind].phi
                f = jax.jit(lambda x, op=node.op, phi=phi: phi(op, x))
                df = jax.jit(jax.vmap(jax.grad(lambda x, op=node.op, phi=phi: phi(op, x))))
                out.append((node.op, lambda x, f=f: np.asarray(f(jnp.asarray(x))),
                            lambda x, df=df: np.asarray(df(jnp.ravel(jnp.asarray(x)))).reshape(
                                np.shape(x)), 'gh'))
    return out


#: closed forms without a φ to integrate (ExpNormalized) or given by the user (Elementwise*)
UNTESTABLE = {'ExpNormalized', 'Elementwise', 'ElementwiseNumerical'}
CASES = make_cases()
CASES += harness_cases(CASES)
IDS = [f'{op.label()}-{i}' for i, (op, *_) in enumerate(CASES)]


def reference(f, df, method, q1, q2, c):
    """(E φφ, E φ'φ') by the independent integrals (kdot 0 where df is None)."""
    k = gauss_2d(f, f, q1, q2, c) if method == 'gh' else polar(f, f, method, q1, q2, c)
    if df is None:
        return k, 0.0
    kd = gauss_2d(df, df, q1, q2, c) if method == 'gh' else polar(df, df, method - 2, q1, q2, c)
    return k, kd


def rng_for(op):
    """A generator seeded by the op, so each test draws the same points however it is run."""
    return np.random.default_rng(zlib.crc32(repr(op).encode()))


def points(rng, n_random=5):
    """(q1, q2, c) arrays covering ρ = ±1, ρ near ±1, 0 and random correlations."""
    rhos = [-1.0, -1 + 1e-7, -0.999, 0.0, 0.999, 1 - 1e-7, 1.0] + list(rng.uniform(-1, 1, n_random))
    q1 = rng.uniform(0.2, 3.0, len(rhos))
    q2 = rng.uniform(0.2, 3.0, len(rhos))
    return q1, q2, np.array(rhos) * np.sqrt(q1 * q2)


def jnp_kernel(op, c, q1, q2):
    k, kd = ACTIVATIONS[op.kind].kernel(JNP, op, jnp.asarray(c), jnp.asarray(q1),
                                        jnp.asarray(q2))
    return np.asarray(k), np.asarray(kd)


def assert_close(got, want, what, rtol=1e-9, atol=1e-9):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert np.all(np.isfinite(got)), f'{what}: not finite {got}'
    assert np.allclose(got, want, rtol=rtol, atol=atol), f'{what}:\n got {got}\nwant {want}'


# ----------------------------------------------------------------------------- tests


def test_table_covers_every_nonlinearity():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    kinds = {cls.model_fields['op'].default for cls in subclasses(acts.Nonlinearity)
             if cls.__module__ == acts.__name__}
    kinds |= {kind for kind, cls in OPS.items() if issubclass(cls, acts.Nonlinearity)}
    assert kinds == set(ACTIVATIONS), (kinds ^ set(ACTIVATIONS))
    assert all(rule.phi is not None for kind, rule in ACTIVATIONS.items()
               if kind != 'ExpNormalized')


def test_cases_cover_every_closed_form():
    tested = {op.kind for op, *_ in CASES} | UNTESTABLE
    assert tested == set(ACTIVATIONS)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_kernel_matches_integral(case):
    op, f, df, method = case
    q1, q2, c = points(rng_for(op))
    k, kd = jnp_kernel(op, c, q1, q2)
    refs = np.array([reference(f, df, method, *p) for p in zip(q1, q2, c)])
    # at |ρ| = 1 the inputs themselves carry rounding of order √ε in the angle
    edge = np.isclose(np.abs(c), np.sqrt(q1 * q2), rtol=0, atol=1e-15)
    for got, want, name in ((k, refs[:, 0], 'k12'), (kd, refs[:, 1], 'kdot12')):
        scale = 1 + np.abs(want)
        assert_close(got[~edge] / scale[~edge], want[~edge] / scale[~edge], f'{op!r} {name}')
        assert_close(got[edge] / scale[edge], want[edge] / scale[edge], f'{op!r} {name} |ρ|=1',
                     atol=1e-7)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_diagonal_exact(case):
    op, f, df, method = case
    q = rng_for(op).uniform(0.05, 4.0, 6)
    k, kd = jnp_kernel(op, q, q, q)
    refs = np.array([reference(f, df, method, v, v, v) for v in q])
    scale = 1 + np.abs(refs)
    assert_close(k / scale[:, 0], refs[:, 0] / scale[:, 0], f'{op!r} diag k', rtol=1e-11,
                 atol=1e-11)
    assert_close(kd / scale[:, 1], refs[:, 1] / scale[:, 1], f'{op!r} diag kdot', rtol=1e-11,
                 atol=1e-11)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_phi_agrees_with_kernel(case):
    op, _, df, method = case
    phi = ACTIVATIONS[op.kind].phi

    def f(x):
        return np.asarray(phi(op, jnp.asarray(x)))

    q1, q2, c = (np.array([0.7, 1.9, 1.3]), np.array([1.4, 0.6, 1.3]),
                 np.array([0.4, -0.8, 1.3]))
    k, kd = jnp_kernel(op, c, q1, q2)
    if getattr(op, 'approximate', False):
        return  # the tanh form of Gelu is a finite-network option; its kernel is the exact one
    want = [gauss_2d(f, f, *p) if method == 'gh' else polar(f, f, method, *p)
            for p in zip(q1, q2, c)]
    assert_close(k, want, f'{op!r} phi vs k12', rtol=1e-8, atol=1e-9)
    if df is not None and method == 'gh':
        def g(x):
            x = jnp.asarray(x, float)
            return np.asarray(jax.jvp(lambda v: phi(op, v), (x,), (jnp.ones_like(x),))[1])

        want = [gauss_2d(g, g, *p) for p in zip(q1, q2, c)]
        assert_close(kd, want, f'{op!r} phi\' vs kdot12', rtol=1e-8, atol=1e-9)


def _sym_values(op, pts):
    c, a, b = sympy.symbols('c q1 q2', real=True)
    ek, ekd = ACTIVATIONS[op.kind].kernel(SYM, op, c, a, b)
    fk = sympy.lambdify((c, a, b), ek, modules='mpmath')
    fkd = sympy.lambdify((c, a, b), ekd, modules='mpmath')
    return (np.array([float(fk(*p)) for p in pts]), np.array([float(fkd(*p)) for p in pts]))


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_symbolic_equals_numeric(case):
    op = case[0]
    q1, q2 = np.array([0.8, 2.1, 1.2]), np.array([1.7, 0.5, 1.2])
    c = np.array([0.3, -0.9, 1.2])
    k, kd = jnp_kernel(op, c, q1, q2)
    sk, skd = _sym_values(op, list(zip(c, q1, q2)))
    assert_close(sk, k, f'{op!r} SYM k12', rtol=1e-10, atol=1e-12)
    assert_close(skd, kd, f'{op!r} SYM kdot12', rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_price_theorem_and_finite_gradients(case):
    """kdot12 = ∂k12/∂c12 inside; gradients are finite on the diagonal and at ρ = ±1."""
    op = case[0]
    kernel = ACTIVATIONS[op.kind].kernel

    def total(which):
        return lambda c, a, b: jnp.sum(kernel(JNP, op, c, a, b)[which])

    if op.kind != 'Sign' and not (op.kind == 'RectifiedMonomial' and op.degree == 0):
        p = (jnp.array([0.3, -0.9]), jnp.array([0.8, 2.1]), jnp.array([1.7, 0.5]))
        assert_close(jax.grad(total(0))(*p), kernel(JNP, op, *p)[1], f'{op!r} ∂k12/∂c12',
                     rtol=1e-9, atol=1e-11)
    edges = (jnp.array([1.3, -1.0, 1.0]), jnp.array([1.3, 0.5, 0.5]), jnp.array([1.3, 2.0, 2.0]))
    for which in (0, 1):
        g = jax.grad(total(which), argnums=(0, 1, 2))(*edges)
        assert np.all(np.isfinite(np.array(g))), f'{op!r} gradient at ρ = ±1: {g}'
    # along the diagonal the map q -> k(q, q, q) is smooth: autodiff equals finite differences
    q, h = jnp.array([0.4, 1.3]), 1e-5
    along = jax.grad(lambda v: total(0)(v, v, v))(q)
    up, down = (kernel(JNP, op, v, v, v)[0] for v in (q + h, q - h))
    assert_close(along, (up - down) / (2 * h), f'{op!r} d/dq diagonal', rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_diagonal_robust_to_ulps(case):
    """An x1-with-itself entry whose covariance differs from the variances by a few ulps (two
    reductions of the same data) keeps the diagonal value: smooth kernels move by O(ulps), and
    the square-root ones would move by O(10⁻⁷) without the round-off guard."""
    op = case[0]
    q = jnp.array([0.3, 1.7, 2.9, 6.0])
    exact = jnp_kernel(op, q, q, q)
    for ulps in (1, 4, 16):
        for c in (q * (1 - ulps * 2.0 ** -53), q * (1 + ulps * 2.0 ** -53)):
            assert_close(jnp_kernel(op, c, q, q), exact, f'{op!r} {ulps} ulps', rtol=1e-11,
                         atol=1e-12)


def test_broadcasting_and_zero_variance():
    q1 = jnp.array([[0.0], [0.5], [2.0]])
    q2 = jnp.array([[0.0, 1.0, 3.0, 0.7]])
    c = jnp.sqrt(q1 * q2) * jnp.array([[0.2, -0.5, 0.9, 1.0]])
    for op in {op.kind: op for op, *_ in CASES}.values():
        k, kd = ACTIVATIONS[op.kind].kernel(JNP, op, c, q1, q2)
        assert k.shape == kd.shape == (3, 4), op
        assert np.all(np.isfinite(k)) and np.all(np.isfinite(kd)), op
        flat = jnp_kernel(op, np.asarray(c)[1:, 1:].ravel(),
                          np.broadcast_to(q1, c.shape)[1:, 1:].ravel(),
                          np.broadcast_to(q2, c.shape)[1:, 1:].ravel())
        assert_close(np.asarray(k)[1:, 1:].ravel(), flat[0], f'{op!r} broadcast', rtol=1e-14,
                     atol=1e-14)


def test_sign_and_step_at_zero_variance():
    """sign(0) = 0, so a zero-variance input has kernel 0 with everything."""
    k, _ = ACTIVATIONS['Sign'].kernel(JNP, acts.Sign(), jnp.zeros(2), jnp.zeros(2),
                                      jnp.array([0.0, 1.0]))
    assert np.all(np.asarray(k) == 0)


def test_exp_normalized():
    """k12 = √(q1 q2)·exp(γ(ρ + shift)) (Shankar et al. 2020), kdot12 = γ·exp(γ(ρ + shift))."""
    q1, q2, c = points(np.random.default_rng(1))
    for gamma, shift, clip in ((1.0, -1.0, False), (0.7, -0.4, True), (2.3, 0.2, False)):
        op = acts.ExpNormalized(gamma=gamma, shift=shift, do_clip=clip)
        k, kd = jnp_kernel(op, c, q1, q2)
        rho = c / np.sqrt(q1 * q2)
        e = np.exp(gamma * (rho + shift))
        assert_close(k, np.sqrt(q1 * q2) * e, 'ExpNormalized k12', rtol=1e-13)
        assert_close(kd, gamma * e, 'ExpNormalized kdot12', rtol=1e-13)
        q = np.array([0.3, 1.0, 5.0])
        k, _ = jnp_kernel(op, q, q, q)
        assert_close(k, q * math.exp(gamma * (1 + shift)), 'ExpNormalized diag', rtol=1e-14)
        sk, skd = _sym_values(op, [(0.3, 0.8, 1.7), (-0.9, 2.1, 0.5)])
        jk, jkd = jnp_kernel(op, np.array([0.3, -0.9]), np.array([0.8, 2.1]),
                             np.array([1.7, 0.5]))
        assert_close(sk, jk, 'ExpNormalized SYM', rtol=1e-12)
        assert_close(skd, jkd, 'ExpNormalized SYM kdot', rtol=1e-12)
    assert ACTIVATIONS['ExpNormalized'].phi is None
    assert np.all(np.isfinite(jnp_kernel(acts.ExpNormalized(), np.zeros(1), np.zeros(1),
                                         np.ones(1))))


def _erf_nngp(c, a, b):
    return 2 / jnp.pi * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * a) * (1 + 2 * b)))


def test_elementwise():
    f, df = _erf(1.0, 1.0, 0.0)
    q1, q2 = np.array([0.7, 1.9, 1.3]), np.array([1.4, 0.6, 1.3])
    c = np.array([0.4, -0.8, 1.3])
    want = np.array([reference(f, df, 'gh', *p) for p in zip(q1, q2, c)])
    auto = acts.Elementwise(fn=special.erf, nngp_fn=_erf_nngp)
    given = acts.Elementwise(nngp_fn=_erf_nngp, d_nngp_fn=lambda c, a, b: 4 / jnp.pi / jnp.sqrt(
        (1 + 2 * a) * (1 + 2 * b) - 4 * c * c))
    for op in (auto, given):
        k, kd = jnp_kernel(op, c, q1, q2)
        assert_close(k, want[:, 0], 'Elementwise k12')
        assert_close(kd, want[:, 1], 'Elementwise kdot12')
    k, kd = ACTIVATIONS['Elementwise'].kernel(JNP, auto, jnp.ones((2, 3)), jnp.full((2, 1), 2.0),
                                              jnp.full((1, 3), 3.0))
    assert k.shape == kd.shape == (2, 3)
    with pytest.raises(NoClosedFormError, match='Elementwise'):
        ACTIVATIONS['Elementwise'].kernel(JNP, acts.Elementwise(fn=jnp.tanh), 0.1, 1.0, 1.0)
    with pytest.raises(NoClosedFormError, match='Elementwise'):
        ACTIVATIONS['Elementwise'].kernel(SYM, auto, *sympy.symbols('c a b'))


def test_elementwise_numerical():
    q1, q2, c = points(np.random.default_rng(2), 3)
    want = np.array([reference(lambda x: np.sin(x) + 0.5 * x * np.cos(0.7 * x),
                               lambda x: np.cos(x) + 0.5 * np.cos(0.7 * x)
                               - 0.35 * x * np.sin(0.7 * x), 'gh', *p)
                     for p in zip(q1, q2, c)])

    def fn(x):
        return jnp.sin(x) + 0.5 * x * jnp.cos(0.7 * x)

    def df(x):
        return jnp.cos(x) + 0.5 * jnp.cos(0.7 * x) - 0.35 * x * jnp.sin(0.7 * x)

    for d in (None, df):
        op = acts.ElementwiseNumerical(fn=fn, deg=40, df=d)
        k, kd = jnp_kernel(op, c, q1, q2)
        assert_close(k, want[:, 0], 'ElementwiseNumerical k12', rtol=1e-10, atol=1e-10)
        assert_close(kd, want[:, 1], 'ElementwiseNumerical kdot12', rtol=1e-10, atol=1e-10)
    # exact on polynomials of degree < 2·deg, including the diagonal
    op = acts.ElementwiseNumerical(fn=lambda x: x ** 3 - x, deg=4)
    exact = acts.Polynomial(coef=(0.0, -1.0, 0.0, 1.0))
    for args in ((c, q1, q2), (q1, q1, q1)):
        assert_close(jnp_kernel(op, *args), jnp_kernel(exact, *args), 'quadrature exactness',
                     rtol=1e-12, atol=1e-12)
    k, kd = ACTIVATIONS['ElementwiseNumerical'].kernel(
        JNP, op, jnp.ones((2, 3)), jnp.full((2, 1), 2.0), jnp.full((1, 3), 3.0))
    assert k.shape == kd.shape == (2, 3)
    with pytest.raises(NoClosedFormError, match='ElementwiseNumerical'):
        ACTIVATIONS['ElementwiseNumerical'].kernel(SYM, op, *sympy.symbols('c a b'))


def test_stabilize_has_no_effect():
    q1, q2, c = points(np.random.default_rng(3), 3)
    for a, b in ((0.0, 1.0), (-0.3, 1.2)):
        k0 = jnp_kernel(acts.ABRelu(a=a, b=b), c, q1, q2)
        k1 = jnp_kernel(acts.ABRelu(a=a, b=b, do_stabilize=True), c * 1e30, q1 * 1e30, q2 * 1e30)
        # (|ρ| = 1 inputs carry rounding of order √ε in the angle)
        assert_close(np.array(k1) / [[1e30], [1]], k0, 'do_stabilize', rtol=1e-12, atol=1e-8)


def test_namespaces_match():
    public = {n for n in dir(JNP) if not n.startswith('_')}
    assert public == {n for n in dir(SYM) if not n.startswith('_')}
    x = sympy.Symbol('x')
    assert SYM.clip(x, -1, 1) == x
    assert isinstance(SYM.where(x > 0, x, -x), sympy.Piecewise)
    assert SYM.const(0.5) == sympy.Rational(1, 2) and SYM.const(2) == 2
    # the JNP guards: finite values and derivatives at their edge points
    assert jax.grad(lambda v: JNP.clip(v, -1.0, 1.0))(1.0) == 1.0
    assert float(JNP.safe_sqrt(-1e-18)) == 0.0 and float(jax.grad(JNP.safe_sqrt)(0.0)) == 0.0
    assert float(JNP.inv_sqrt(0.0)) == 0.0 and np.isfinite(jax.grad(JNP.inv_sqrt)(0.0))
    assert float(JNP.safe_div(1.0, 0.0)) == 0.0
    assert SYM.drop_roundoff(x, 1) == x
    assert float(JNP.drop_roundoff(1e-15, 1.0)) == 0.0 and float(JNP.drop_roundoff(1e-12, 1.0))
    sh, ch = JNP.sinh_cosh(jnp.array([1e-20, 0.3, -2.0]))
    assert_close(sh, np.sinh([1e-20, 0.3, -2.0]), 'sinh', rtol=1e-15, atol=0)
    assert_close(ch, np.cosh([1e-20, 0.3, -2.0]), 'cosh', rtol=1e-15, atol=0)


@pytest.mark.parametrize('dtype, max_ulps', [(np.float32, 4), (np.float64, 2)])
def test_atan2_matches_numpy_to_a_few_ulps(dtype, max_ulps):
    """`xp.JNP.arctan2` (the vectorisable replacement for XLA's scalar atan2) against numpy's
    atan2 in float64, on random pairs over many scales, both signs, zeros and the octant
    boundaries |y| = |x|."""
    rs = np.random.RandomState(7)
    scale = 10.0 ** rs.uniform(-30, 30, size=(2, 20000))
    y, x = rs.randn(2, 20000) * scale
    edge = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-38, 0.0, 3.0, -3.0])
    y = np.concatenate([y, edge, [0.0, 1.0, -1.0, 0.0, 3.0, 3.0]]).astype(dtype)
    x = np.concatenate([x, edge[::-1], [-1.0, 0.0, 0.0, 0.0, 3.0, -3.0]]).astype(dtype)
    got = np.asarray(jax.jit(JNP.arctan2)(y, x)).astype(np.float64)
    want = np.arctan2(y.astype(np.float64), x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    ulp = np.maximum(ulp, np.finfo(dtype).tiny)
    assert np.max(np.abs(got - want) / ulp) <= max_ulps
    assert np.array_equal(np.signbit(got), np.signbit(want))  # signed zeros and ±π


SMOOTH = {'Erf', 'Sigmoid_like', 'Gelu', 'Sin', 'Cos', 'Exp', 'Gaussian', 'Rbf', 'Gabor',
          'Polynomial', 'Hermite', 'Monomial'}


@pytest.mark.parametrize('case', [c for c in harness_cases([]) if c[0].kind in SMOOTH],
                         ids=lambda c: c[0].label())
def test_harness_instances_match_the_integral_of_their_phi(case):
    """The path a new smooth activation takes with no explicit case (`harness_cases`), run on
    the built-in smooth ones: closed form against the integrals of the registered φ, φ'."""
    test_kernel_matches_integral(case)
