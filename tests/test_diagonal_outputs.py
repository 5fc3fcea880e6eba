"""NT's output-layout requests on `kernel_fn`: `diagonal_spatial=True` returns the spatial
diagonal of every kernel, (N1, N2, s1, s2, ...), and `diagonal_batch=False` returns marginals
over every pair of examples, cov1 = K(x1, x1) of shape (N1, N1, ...)."""

import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import stax

X1 = np.random.RandomState(0).randn(3, 4, 5, 2)
X2 = np.random.RandomState(1).randn(2, 4, 5, 2)
NET = stax.serial(stax.Conv(6, (2, 2), W_std=1.3, b_std=0.2), stax.Relu(),
                  stax.Conv(3, (2, 2), padding='SAME'), stax.Erf())


def spatial_diagonal(k, lead):
    """(..., a, a', b, b') -> (..., a, b): the entries with a = a', b = b' (numpy)."""
    k = np.asarray(k)
    ns = (k.ndim - lead) // 2
    out = k
    for i in range(ns):
        out = np.diagonal(out, axis1=lead + i, axis2=lead + i + 1)
        out = np.moveaxis(out, -1, lead + i)
    return out


@pytest.mark.parametrize('x2', [None, X2])
def test_diagonal_spatial_is_the_diagonal_of_the_full_kernel(x2):
    full = NET.kernel_fn(X1, x2, None)
    diag = NET.kernel_fn(X1, x2, None, diagonal_spatial=True)
    for name, lead in (('nngp', 2), ('ntk', 2), ('cov1', 1)):
        got, want = getattr(diag, name), spatial_diagonal(getattr(full, name), lead)
        assert got.shape == want.shape == (got.shape[:lead] + (3, 4))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert (diag.cov2 is None) == (x2 is None)


@pytest.mark.parametrize('diagonal_spatial', [False, True])
def test_diagonal_batch_false_gives_marginals_over_pairs(diagonal_spatial):
    k = NET.kernel_fn(X1, X2, ('nngp', 'cov1', 'cov2'), diagonal_batch=False,
                      diagonal_spatial=diagonal_spatial)
    want1 = NET.kernel_fn(X1, None, 'nngp', diagonal_spatial=diagonal_spatial)
    want2 = NET.kernel_fn(X2, None, 'nngp', diagonal_spatial=diagonal_spatial)
    np.testing.assert_allclose(k.cov1, want1, rtol=1e-12)
    np.testing.assert_allclose(k.cov2, want2, rtol=1e-12)
    assert k.cov1.shape[:2] == (3, 3) and k.cov2.shape[:2] == (2, 2)
    # the per-example marginals are the diagonal of those
    per = NET.kernel_fn(X1, X2, 'cov1', diagonal_spatial=diagonal_spatial)
    np.testing.assert_allclose(np.moveaxis(np.diagonal(k.cov1, axis1=0, axis2=1), -1, 0), per,
                               rtol=1e-12)


def test_without_spatial_axes_the_requests_change_nothing_but_the_batch():
    net = stax.serial(stax.Conv(6, (2, 2)), stax.Relu(), stax.Flatten(), stax.Dense(2))
    a = net.kernel_fn(X1, X2, 'nngp', diagonal_spatial=True)
    np.testing.assert_allclose(a, net.kernel_fn(X1, X2, 'nngp'), rtol=1e-12)
    c = net.kernel_fn(X1, X2, 'cov1', diagonal_batch=False)
    np.testing.assert_allclose(c, net.kernel_fn(X1, None, 'nngp'), rtol=1e-12)
    # NT's flag: cleared by a layer that removes the spatial axes, kept without any
    assert net.kernel_fn(X1, X2, diagonal_spatial=True).diagonal_spatial is False
    assert NET.kernel_fn(X1, X2, diagonal_spatial=True).diagonal_spatial is True
    flat = X1.reshape(X1.shape[0], -1)
    assert stax.Dense(2).kernel_fn(flat, None, diagonal_spatial=True).diagonal_spatial is True


def test_the_reference_plan_agrees():
    names = ('nngp', 'ntk', 'cov1', 'cov2')
    opt = ntc.compile(NET, X1.shape, names, diagonal_spatial=True, dtype=jnp.float64)
    ref = ntc.compile(NET, X1.shape, names, diagonal_spatial=True, reference=True,
                      dtype=jnp.float64)
    a, b = opt.raw(X1, X2), ref.raw(X1, X2)
    for name in names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-14)


def test_batch_tiles_the_diagonal_output():
    """ntc.batch mirrors and assembles tiles by the plan's layout: a spatially diagonal output
    (no position pairs) tiles to the untiled result."""
    for x2 in (None, X2):
        want = NET.kernel_fn(X1, x2, ('nngp', 'ntk'), diagonal_spatial=True)
        got = ntc.batch(NET.kernel_fn, 1, store_on_device=False, progress=False)(
            X1, x2, ('nngp', 'ntk'), diagonal_spatial=True)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ntc.NtcError, match='diagonal_batch'):
        ntc.batch(NET.kernel_fn, 1)(X1, None, 'cov1', diagonal_batch=False)
