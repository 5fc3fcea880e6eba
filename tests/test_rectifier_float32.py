"""The rectifier kernels (Relu, LeakyRelu, Abs) in float32 against the closed form of the ReLU
kernel (Cho & Saul 2009) evaluated in float64: a guard for rewrites of the arc-cosine made for
speed (issue 16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc.covariance.xp import JNP
from ntc.layers import activations as acts
from ntc.layers.activations import ACTIVATIONS


@pytest.mark.parametrize('kind', ['Relu', 'LeakyRelu', 'Abs'])
def test_rectifier_kernels_in_float32_are_the_closed_form(kind):
    """The arc-cosine kernels in float32, jitted, against the float64 closed form of max(x, 0)
    (LeakyRelu(0.1) and Abs as a·min(x, 0) + b·max(x, 0)): random
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

