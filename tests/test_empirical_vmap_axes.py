"""Empirical NTK with NT's `vmap_axes=(in_axes, out_axes, kwargs_axes)` on nested outputs: the
output batch axes may be negative (counted from the end of each output, as NT allows) and sit
anywhere, inputs and outputs may be dicts, lists and tuples, and NT's `x2` of Nones means x2 =
x1.  Per-example Jacobians must give the NTK computed without `vmap_axes`, for every
implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc

IMPLEMENTATIONS = [ntc.NtkImplementation.JACOBIAN_CONTRACTION,
                   ntc.NtkImplementation.NTK_VECTOR_PRODUCTS,
                   ntc.NtkImplementation.STRUCTURED_DERIVATIVES]


def f(params, x, scale=None):
    """A per-example function of a dict input with a nested output: 'a' is (N, 3) (batch axis
    -2), 'b' holds an (H, N, C) array (batch axis -2) and an (N, H, C) array (batch axis -3)."""
    w1, w2 = params
    u = x['u']
    if scale is not None:
        u = u * scale
    a = jnp.tanh(u @ w1)
    b = jnp.sin(jnp.einsum('nd,hdc->hnc', u, w2))
    return {'a': a, 'b': (b, jnp.moveaxis(b, 1, 0) ** 2)}


OUT_AXES = {'a': -2, 'b': (-2, -3)}


@pytest.fixture(scope='module')
def data():
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = (jax.random.normal(k[0], (4, 3)), jax.random.normal(k[1], (2, 4, 3)))
    x1 = {'u': jax.random.normal(k[2], (3, 4))}
    x2 = {'u': jax.random.normal(k[3], (5, 4))}
    s1, s2 = jax.random.normal(k[4], (3, 4)), jax.random.normal(k[4], (5, 4))
    return params, x1, x2, s1, s2


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
@pytest.mark.parametrize('second', ['other', 'none', 'nones'])
def test_vmap_axes_with_negative_out_axes_match_plain(data, impl, second):
    params, x1, x2, s1, s2 = data
    if second == 'none':
        x2, s2 = None, s1
    elif second == 'nones':      # NT's x2 = x1 for a tree of inputs
        x2, s2 = {'u': None}, s1
    plain = ntc.empirical_ntk_fn(f, trace_axes=(-1,), implementation=impl)
    vmapped = ntc.empirical_ntk_fn(f, trace_axes=(-1,), implementation=impl,
                                   vmap_axes=({'u': 0}, OUT_AXES, {'scale': 0}))
    expected = plain(x1, x2, params, scale=(s1, s2))
    got = vmapped(x1, x2, params, scale=(s1, s2))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    n2 = 3 if x2 is None or x2['u'] is None else 5
    assert got['a'].shape == (3, n2)
    assert got['b'][0].shape == (2, 2, 3, n2)      # (H, H', N1, N2): axes in output order
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


def test_structured_reads_a_tree_of_nones_as_x2_none(data):
    params, x1, _, _, _ = data
    ntk_fn = ntc.empirical_ntk_fn(f, implementation=ntc.NtkImplementation.STRUCTURED_DERIVATIVES)
    got = ntk_fn(x1, {'u': None}, params)
    expected = ntk_fn(x1, None, params)
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-12)
