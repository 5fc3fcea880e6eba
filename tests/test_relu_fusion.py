"""The arc-cosine kernels written for XLA's CPU fusion (issue 16): `xp.angle`, the angle
atan2(√d, c) from one divide and one square root, and `stored_once`, the per-position variances
computed once per layer.  Expected values come from numpy's atan2 and the closed form of the
ReLU kernel (Cho & Saul 2009) evaluated in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from ntc.covariance.kernel import stored_once
from ntc.covariance.xp import JNP, SYM
from ntc.layers import activations as acts
from ntc.layers.activations import ACTIVATIONS


@pytest.mark.parametrize('dtype, max_ulps', [(np.float32, 4), (np.float64, 2)])
def test_angle_is_atan2_of_the_square_root(dtype, max_ulps):
    """angle(d, c) against numpy's atan2(√d, c) in float64, over many scales of both signs of
    c, with the edge points d = 0, c = 0 and d = c² (the octant boundary): within a few ulps,
    as `xp.JNP.arctan2`."""
    rs = np.random.RandomState(3)
    c = rs.randn(20000) * 10.0 ** rs.uniform(-15, 15, 20000)
    d = (rs.randn(20000) * 10.0 ** rs.uniform(-15, 15, 20000)) ** 2
    edge_c = np.array([0.0, 0.0, -2.0, 2.0, -3.0, 3.0, 0.0, 1e-10])
    edge_d = np.array([0.0, 4.0, 0.0, 0.0, 9.0, 9.0, 1e-20, 0.0])
    c = np.concatenate([c, edge_c]).astype(dtype)
    d = np.concatenate([d, edge_d]).astype(dtype)
    got = np.asarray(jax.jit(JNP.angle)(d, c)).astype(np.float64)
    want = np.arctan2(np.sqrt(d.astype(np.float64)), c.astype(np.float64))
    # a few ulps, except angles below 1.1e-19 in float32, where the squared tangent (< 1.2e-38)
    # flushes to 0 and so does the angle: an absolute error under 1.1e-19, nothing next to the
    # other terms of a kernel (kdot = 1/2 - θ/(2π) for the ReLU)
    ulp = np.maximum(np.spacing(want.astype(dtype)).astype(np.float64), np.finfo(dtype).tiny)
    assert np.all(np.abs(got - want) <= max_ulps * ulp + (1.1e-19 if dtype == np.float32 else 0))
    assert got[-8:].tolist() == pytest.approx([0, np.pi / 2, np.pi, 0, 3 * np.pi / 4, np.pi / 4,
                                               np.pi / 2, 0], abs=4e-7)


def test_angle_is_finite_to_differentiate_on_the_diagonal():
    """At d = 0 (an entry with correlation ±1) the angle's derivative is finite, as that of
    `xp.safe_sqrt`, which kernels rely on."""
    grad = jax.grad(lambda d, c: JNP.angle(d, c), argnums=(0, 1))(0.0, 2.0)
    assert all(np.isfinite(g) for g in grad)


def test_symbolic_angle_is_atan2():
    d, c = sympy.symbols('d c', positive=True)
    assert SYM.angle(d, c) == sympy.atan2(sympy.sqrt(d), c)


@pytest.mark.parametrize('kind', ['Relu', 'LeakyRelu', 'Abs'])
def test_rectifier_kernels_in_float32_are_the_closed_form(kind):
    """The arc-cosine kernels (which read `xp.angle`) in float32, jitted, against the float64
    closed form of max(x, 0) (LeakyRelu(0.1) and Abs as a·min(x, 0) + b·max(x, 0)): random
    covariances, correlations within 1e-4 of ±1 (closer, D = q1·q2 - c² is below its float32
    round-off and counts as 0 by design, see `_sine`), and the diagonal c = q1 = q2 (kdot
    exactly (a²+b²)/2)."""
    a, b = {'Relu': (0.0, 1.0), 'LeakyRelu': (0.1, 1.0), 'Abs': (-1.0, 1.0)}[kind]
    op = {'Relu': acts.Relu(), 'LeakyRelu': acts.LeakyRelu(alpha=0.1), 'Abs': acts.Abs()}[kind]
    rs = np.random.RandomState(0)
    q1, q2 = rs.uniform(0.1, 5, (2, 4000))
    rho = np.concatenate([rs.uniform(-1, 1, 3000), 1 - 10.0 ** rs.uniform(-4, -1, 500),
                          -1 + 10.0 ** rs.uniform(-4, -1, 500)])
    c = rho * np.sqrt(q1 * q2)
    c[:100], q2[:100] = q1[:100], q1[:100]  # the diagonal
    args = [jnp.asarray(v, jnp.float32) for v in (c, q1, q2)]
    k, kdot = jax.jit(lambda *v: ACTIVATIONS[kind].kernel(JNP, op, *v))(*args)
    c, q1, q2 = (np.asarray(v, np.float64) for v in args)
    s = np.sqrt(q1 * q2)
    theta = np.arccos(np.clip(c / s, -1, 1))
    spread = (a - b) ** 2 / (2 * np.pi)
    want_kdot = (a * a + b * b) / 2 - spread * theta
    want_k = spread * s * np.sin(theta) + c * want_kdot
    np.testing.assert_allclose(kdot, want_kdot, rtol=0, atol=1e-5)  # D in float32
    np.testing.assert_allclose(k, want_k, rtol=2e-6, atol=2e-6 * s.max())
    assert np.all(np.asarray(kdot)[:100] == np.float32((a * a + b * b) / 2))


def test_stored_once_keeps_the_values():
    v = jnp.asarray(np.random.RandomState(1).rand(3, 4, 5))
    np.testing.assert_array_equal(jax.jit(stored_once)(v), v)
    assert stored_once(2.5) == 2.5
    assert jax.jit(stored_once)(v.astype(jnp.float32)).dtype == jnp.float32
