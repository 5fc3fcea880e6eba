"""`empirical_ntk_vp_fn(f, x1, x2, params)`: Θ(x1, x2)·v without forming Θ, as in NT, checked
against Θ built from the Jacobians of f (jax.jacrev on the flattened parameters)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ntc
from ntc import stax


def explicit_ntk(f, params, x1, x2):
    """Θ[i, a, j, b] = Σ_p ∂f(x1)[i, a]/∂p · ∂f(x2)[j, b]/∂p."""
    flat, unravel = ravel_pytree(params)
    j1 = jax.jacrev(lambda p: f(unravel(p), x1))(flat)
    j2 = jax.jacrev(lambda p: f(unravel(p), x2))(flat)
    return jnp.einsum('iap,jbp->iajb', j1, j2)


@pytest.mark.parametrize('x2_given', [True, False])
def test_vector_product_equals_the_explicit_ntk(x2_given):
    init_fn, f, _ = stax.serial(stax.Conv(4, (2,), padding='SAME'), stax.Relu(), stax.Flatten(),
                                stax.Dense(3, 1.3, 0.2))
    rs = np.random.RandomState(0)
    x1, x2 = rs.randn(3, 5, 2), rs.randn(2, 5, 2)
    _, params = init_fn(jax.random.PRNGKey(1), x1.shape)
    other = x2 if x2_given else x1
    v = rs.randn(*f(params, other).shape)
    got = jax.jit(ntc.empirical_ntk_vp_fn(f, x1, x2 if x2_given else None, params))(v)
    theta = explicit_ntk(f, params, x1, other)
    np.testing.assert_allclose(got, jnp.einsum('iajb,jb->ia', theta, v), rtol=1e-10)
    assert got.shape == f(params, x1).shape
