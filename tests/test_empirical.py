"""ntc.runtime.empirical: empirical NNGP / NTK of arbitrary JAX functions.  Checked against
explicit Jacobians (`jax.jacobian` + einsum), between the two implementations, and, for wide
ReLU networks, against the closed-form arc-cosine NTK as the width grows."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc.errors import InputError
from ntc.runtime import empirical
from ntc.runtime.empirical import (
    NtkImplementation,
    empirical_kernel_fn,
    empirical_nngp_fn,
    empirical_ntk_fn,
)

W_STD, B_STD = 1.4, 0.3


def mlp(widths, act):
    """Plain-JAX MLP in NTK parameterisation: W ~ N(0, 1), y = W_STD x·W/sqrt(fan_in) + B_STD b."""
    def init(key, in_dim):
        params, fan_in = [], in_dim
        for w in widths:
            key, k1, k2 = jax.random.split(key, 3)
            params.append({'w': jax.random.normal(k1, (fan_in, w)),
                           'b': jax.random.normal(k2, (w,))})
            fan_in = w
        return params

    def apply(params, x, **kwargs):
        for i, p in enumerate(params):
            x = _add_bias(W_STD * x @ p['w'] / math.sqrt(p['w'].shape[0]), B_STD * p['b'])
            if i < len(params) - 1:
                x = act(x)
        return x

    return init, apply


def relu_ntk(x1, x2, depth):
    """Closed-form NTK of `mlp` with `depth` ReLU hidden layers (Cho & Saul 2009's arc-cosine
    kernel; Jacot et al. 2018's recursion Θ' = K' + W² E[φ'φ'] Θ)."""
    d = x1.shape[1]

    def q(a, b):
        return W_STD ** 2 * a @ b.T / d + B_STD ** 2

    k12, k11, k22 = q(x1, x2), np.diag(q(x1, x1)), np.diag(q(x2, x2))
    ntk = k12
    for _ in range(depth):
        norm = np.sqrt(np.outer(k11, k22))
        theta = np.arccos(np.clip(k12 / norm, -1, 1))
        e_phi = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
        e_dphi = (np.pi - theta) / (2 * np.pi)
        k12 = W_STD ** 2 * e_phi + B_STD ** 2
        ntk = k12 + W_STD ** 2 * e_dphi * ntk
        k11, k22 = W_STD ** 2 * k11 / 2 + B_STD ** 2, W_STD ** 2 * k22 / 2 + B_STD ** 2
    return ntk


def _add_bias(z, b):
    """z + b on the trailing axes, b's leading axes explicit (rank promotion raises)."""
    return z + b.reshape((1,) * (z.ndim - b.ndim) + b.shape)


def conv_like(params, x, **kwargs):
    """(N, H, D) -> (N, H, C) with mixing along H (so examples share no structure with H)."""
    h = jnp.tanh(_add_bias(x @ params['w1'], params['b1']))
    h = jnp.einsum('gh,nhd->ngd', params['mix'], h)
    return jnp.sin(h) @ params['w2']


def conv_params(seed=0, d=4, hidden=7, h=5, c=3):
    rng = np.random.RandomState(seed)
    return {'w1': rng.randn(d, hidden), 'b1': rng.randn(hidden), 'w2': rng.randn(hidden, c),
            'mix': rng.randn(h, h) / h}


def explicit_ntk(f, params, x1, x2):
    """Θ[out1..., out2...] = Σ_p ∂f(x1)/∂p ∂f(x2)/∂p from flattened Jacobians."""
    @jax.jit
    def flat_jac(x):
        j = jax.jacobian(lambda p: f(p, x))(params)
        out = f(params, x).shape
        return jnp.concatenate([a.reshape(out + (-1,)) for a in jax.tree_util.tree_leaves(j)],
                               axis=-1)
    return jnp.tensordot(flat_jac(x1), flat_jac(x2), axes=([-1], [-1]))


RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(3, 5, 4), RNG.randn(2, 5, 4)


def test_trace_is_a_mean_over_channels_and_layouts_match_explicit_jacobians():
    params = conv_params()
    full = explicit_ntk(conv_like, params, X1, X2)                  # (3, 5, 3, 2, 5, 3)
    out1, out2 = conv_like(params, X1), conv_like(params, X2)
    cases = {
        ((-1,), ()): (jnp.einsum('ahcbgc->abhg', full) / 3,
                      jnp.einsum('ahc,bgc->abhg', out1, out2) / 3),
        ((), ()): (jnp.einsum('ahcbgd->abhgcd', full),
                   jnp.einsum('ahc,bgd->abhgcd', out1, out2)),
        ((-1,), (1,)): (jnp.einsum('ahcbhc->abh', full) / 3,
                        jnp.einsum('ahc,bhc->abh', out1, out2) / 3),
        ((1, 2), ()): (jnp.einsum('ahcbhc->ab', full) / 15,
                       jnp.einsum('ahc,bhc->ab', out1, out2) / 15),
    }
    for (tr, dg), (ntk, nngp) in cases.items():
        k = jax.jit(empirical_kernel_fn(conv_like, tr, dg), static_argnames='get')(
            X1, X2, None, params)
        np.testing.assert_allclose(k.ntk, ntk, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(k.nngp, nngp, rtol=1e-11, atol=1e-12)
    # diagonal batch axis: needs x2 = x1
    k = jax.jit(empirical_ntk_fn(conv_like, (-1,), (0,)))(X1, None, params)
    full11 = explicit_ntk(conv_like, params, X1, X1)
    np.testing.assert_allclose(k, jnp.einsum('ahcagc->ahg', full11) / 3, rtol=1e-11)


CONFIGS = [((-1,), (), None), ((), (), 0), ((-1,), (0,), 0), ((-1,), (1,), (0, 0, {}))]


@pytest.mark.parametrize('trace_axes, diagonal_axes, vmap_axes', CONFIGS)
def test_jacobian_contraction_equals_ntk_vector_products(trace_axes, diagonal_axes, vmap_axes):
    params = conv_params(seed=1)
    batch_reduced = 0 in trace_axes + diagonal_axes        # then x2 must be x1
    x2 = None if batch_reduced else X2
    impls = [NtkImplementation.JACOBIAN_CONTRACTION, NtkImplementation.NTK_VECTOR_PRODUCTS]
    if vmap_axes is None and trace_axes == (-1,):
        impls += [0, 3]                     # AUTO and STRUCTURED_DERIVATIVES (ints accepted)
    # NTK-vector products run many small ops: jit them (Jacobian contraction runs eagerly)
    kernels = [(jax.jit if impl == 2 else lambda fn: fn)(
        empirical_ntk_fn(conv_like, trace_axes, diagonal_axes, vmap_axes, impl))(
        X1, x2, params) for impl in impls]
    for k in kernels[1:]:
        np.testing.assert_allclose(k, kernels[0], rtol=1e-10, atol=1e-12)


def test_pytree_params_outputs_and_keyword_arguments():
    params = conv_params(seed=2)

    def two_heads(p, x, scale=1.):
        y = conv_like(p, x)
        return {'first': scale * y[:, 0], 'pooled': jnp.mean(y, axis=1) ** 2}

    for impl in (1, 2):
        k = jax.jit(empirical_kernel_fn(two_heads, implementation=impl),
                    static_argnames='get')(X1, X2, ('ntk', 'nngp'), params, scale=2.)
        assert set(k) == {'first', 'pooled'} and k['first']._fields == ('ntk', 'nngp')
        single = jax.jit(empirical_ntk_fn(lambda p, x: 2. * conv_like(p, x)[:, 0],
                                          implementation=impl))(X1, X2, params)
        np.testing.assert_allclose(k['first'].ntk, single, rtol=1e-10)
    # a kwargs pair is split between the two inputs
    nngp = empirical_nngp_fn(two_heads)(X1, X2, params, scale=(1., 3.))
    np.testing.assert_allclose(nngp['first'],
                               3 * empirical_nngp_fn(two_heads)(X1, X2, params)['first'],
                               rtol=1e-12)


def test_rng_is_shared_only_when_the_inputs_are_equal():
    params = conv_params(seed=3)

    def dropout(p, x, rng=None):
        keep = jax.random.bernoulli(rng, 0.5, (x.shape[0], 5, 3))
        return conv_like(p, x) * keep

    fn = empirical_nngp_fn(dropout)
    for key in (jax.random.PRNGKey(0), jax.random.key(0)):
        same = fn(X1, None, params, rng=key)
        np.testing.assert_allclose(fn(X1, np.array(X1), params, rng=key), same, rtol=1e-12)
        assert np.abs(fn(X1, X1 + 1e-9, params, rng=key) - same).max() > 1e-2


def test_jit_and_get_conventions():
    params = conv_params(seed=4)
    kf = empirical_kernel_fn(conv_like, vmap_axes=0, implementation=2)
    eager = kf(X1, X2, None, params)
    jitted = jax.jit(kf, static_argnames='get')(X1, X2, 'ntk', params)
    np.testing.assert_allclose(jitted, eager.ntk, rtol=1e-12)
    assert eager._fields == ('nngp', 'ntk')
    assert kf(X1, X2, ('ntk',), params)._fields == ('ntk',)
    assert kf(X1, X2, 'nngp', params).shape == (3, 2, 5, 5)


def test_empirical_ntk_converges_to_the_analytic_ntk_with_width():
    """Relative error of a wide two-hidden-layer ReLU network's NTK against the arc-cosine
    closed form, averaged over 2 initialisations, falls with width (O(1/sqrt(width)) in
    theory: Jacot et al. 2018, Arora et al. 2019)."""
    x = np.random.RandomState(1).randn(6, 3)
    want = relu_ntk(x, x, depth=2)
    errors = []
    for width in (32, 256, 2048):
        init, apply = mlp([width, width, 1], jax.nn.relu)
        ntk_fn = jax.jit(empirical_ntk_fn(apply, implementation=2))
        errs = [np.linalg.norm(ntk_fn(x, None, init(jax.random.PRNGKey(s), 3)) - want)
                / np.linalg.norm(want) for s in range(2)]
        errors.append(np.mean(errs))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 4          # theory: sqrt(64) = 8x (measured: 7x)
    assert errors[2] < 0.1


def test_bad_arguments_raise_input_error():
    params = conv_params()
    with pytest.raises(InputError, match='implementation'):
        empirical_ntk_fn(conv_like, implementation=7)
    with pytest.raises(InputError, match='get'):
        empirical_kernel_fn(conv_like)(X1, X2, 'cov', params)
    with pytest.raises(InputError, match='share an axis'):
        empirical_nngp_fn(conv_like, trace_axes=(1,), diagonal_axes=(1,))(X1, X2, params)
    with pytest.raises(InputError, match='out of range'):
        empirical_ntk_fn(conv_like, trace_axes=(5,))(X1, X2, params)
    with pytest.raises(InputError, match='agree'):
        empirical_nngp_fn(conv_like, trace_axes=(0,))(X1, X2, params)


# parameter names and defaults of neural_tangents 0.6.5 (`inspect.signature`); NT's default
# implementation is NtkImplementation.JACOBIAN_CONTRACTION == 1
_NTK_ARGS = [('f', 'REQUIRED'), ('trace_axes', (-1,)), ('diagonal_axes', ()),
             ('vmap_axes', None), ('implementation', 1), ('_j_rules', True),
             ('_s_rules', True), ('_fwd', None)]
NT_SIGNATURES = {
    'empirical_kernel_fn': _NTK_ARGS,
    'empirical_ntk_fn': _NTK_ARGS,
    'empirical_nngp_fn': [('f', 'REQUIRED'), ('trace_axes', (-1,)), ('diagonal_axes', ())],
}


@pytest.mark.parametrize('name', sorted(NT_SIGNATURES))
def test_signatures_match_neural_tangents(name):
    got = [(p.name, 'REQUIRED' if p.default is p.empty else p.default)
           for p in inspect.signature(getattr(empirical, name)).parameters.values()]
    assert got == NT_SIGNATURES[name]
    assert [int(i) for i in NtkImplementation] == [0, 1, 2, 3]
    assert [i.name for i in NtkImplementation] == ['AUTO', 'JACOBIAN_CONTRACTION',
                                                   'NTK_VECTOR_PRODUCTS',
                                                   'STRUCTURED_DERIVATIVES']
