"""Θ(x1, x2)·v in tiles (`ntc.batch(empirical_ntk_vp_fn(...))`, `ntc.runtime.ntk_vp_tiles`):
the tiled product equals Θ·v with Θ formed from the Jacobians of f (jax.jacrev on the flattened
parameters), on 1 and 4 devices, for ragged tiles; conjugate gradients on (Θ + λI) α = y through
the tiled product give the solve through the formed Θ; memory stays bounded as N grows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ntc
from ntc import stax
from ntc.errors import InputError, NtcError, NumericalError
from ntc.runtime.ntk_vp_tiles import TiledNtkVp, tiled_ntk_vp_fn


def explicit_ntk(f, params, x1, x2, **kw):
    """Θ[i, a, j, b] = Σ_p ∂f(x1)[i, a]/∂p · ∂f(x2)[j, b]/∂p."""
    flat, unravel = ravel_pytree(params)
    j1 = jax.jacrev(lambda p: f(unravel(p), x1, **kw))(flat)
    j2 = jax.jacrev(lambda p: f(unravel(p), x2, **kw))(flat)
    return jnp.einsum('iap,jbp->iajb', j1, j2)


def mlp(n, seed=0):
    init_fn, f, _ = stax.serial(stax.Dense(16, 1.5, 0.1), stax.Relu(), stax.Dense(16, 1.5, 0.1),
                                stax.Erf(), stax.Dense(3, 1.0, 0.2))
    rs = np.random.RandomState(seed)
    x = rs.randn(n, 5)
    _, params = init_fn(jax.random.PRNGKey(seed), x.shape)
    return f, params, x, rs


@pytest.mark.parametrize('batch_size', [1, 3, None])
@pytest.mark.parametrize('device_count', [1, -1])
@pytest.mark.parametrize('x2_given', [True, False])
def test_tiled_product_equals_the_explicit_ntk(batch_size, device_count, x2_given):
    f, params, x1, rs = mlp(13)
    x2 = rs.randn(11, 5) if x2_given else None
    other = x1 if x2 is None else x2
    v = rs.randn(other.shape[0], 3)
    vp = ntc.batch(ntc.empirical_ntk_vp_fn(f, x1, x2, params), batch_size=batch_size,
                   device_count=device_count)
    assert isinstance(vp, TiledNtkVp)
    assert len(vp.devices) == (1 if device_count == 1 else len(jax.local_devices()))
    theta = explicit_ntk(f, params, x1, other)
    want = jnp.einsum('iajb,jb->ia', theta, v)
    np.testing.assert_allclose(vp(v), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jax.jit(vp)(v), want, rtol=1e-10, atol=1e-12)


def test_conv_net_tiles_and_positional_devices():
    init_fn, f, _ = stax.serial(stax.Conv(4, (2,), padding='SAME'), stax.Relu(), stax.Flatten(),
                                stax.Dense(2, 1.3, 0.2))
    rs = np.random.RandomState(1)
    x1, x2 = rs.randn(7, 5, 2), rs.randn(6, 5, 2)
    _, params = init_fn(jax.random.PRNGKey(2), x1.shape)
    v = rs.randn(6, 2)
    vp = ntc.batch(ntc.empirical_ntk_vp_fn(f, x1, x2, params), 2, jax.local_devices()[:2])
    want = jnp.einsum('iajb,jb->ia', explicit_ntk(f, params, x1, x2), v)
    np.testing.assert_allclose(vp(v), want, rtol=1e-10, atol=1e-12)


def test_pytree_inputs_outputs_and_per_example_keywords():
    """Dict inputs, a tuple of outputs, a shared keyword and a per-example pair (v1, v2)."""
    rs = np.random.RandomState(3)
    params = {'w': rs.randn(4, 3), 'b': rs.randn(3)}

    def f(p, x, scale=1.0, shift=None):
        h = jnp.tanh(x['a'] @ p['w'] + p['b'][None] + shift[:, None]) * scale
        return h, (h ** 2).sum(axis=1)

    x1, x2 = {'a': rs.randn(9, 4)}, {'a': rs.randn(5, 4)}
    s1, s2 = rs.randn(9), rs.randn(5)
    v = (rs.randn(5, 3), rs.randn(5))
    vp = tiled_ntk_vp_fn(f, x1, x2, params, batch_size=2, scale=0.7, shift=(s1, s2))
    got = vp(v)
    ref = ntc.empirical_ntk_vp_fn(f, x1, x2, params, scale=0.7, shift=(s1, s2))(v)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert [g.shape for g in got] == [(9, 3), (9,)]


def test_batch_size_zero_is_the_untiled_product():
    f, params, x, _ = mlp(4)
    vp = ntc.empirical_ntk_vp_fn(f, x, None, params)
    assert ntc.batch(vp, batch_size=0) is vp


def test_conjugate_gradients_through_tiles_equal_the_solve_through_the_formed_ntk():
    """Kernel regression with the empirical NTK, never forming Θ: α = (Θ + λI)⁻¹ y by CG with the
    tiled product, then predictions Θ(x_test, x_train) α with a second tiled product; both equal
    the dense solve through the explicit Θ to round-off (float64)."""
    f, params, x, rs = mlp(24, seed=4)
    x_test = rs.randn(10, 5)
    y = rs.randn(24, 3)
    lam = 0.1
    train = ntc.batch(ntc.empirical_ntk_vp_fn(f, x, None, params), batch_size=4, device_count=-1)
    test = ntc.batch(ntc.empirical_ntk_vp_fn(f, x_test, x, params), batch_size=4,
                     device_count=-1)

    @jax.jit
    def fit_predict(train, test, y):   # the products are arguments: their arrays are too
        alpha, _ = jax.scipy.sparse.linalg.cg(lambda a: train(a) + lam * a, y, tol=1e-14,
                                              maxiter=1000)
        return alpha, test(alpha)

    alpha, pred = fit_predict(train, test, y)
    theta = np.asarray(explicit_ntk(f, params, x, x)).reshape(72, 72)
    theta_test = np.asarray(explicit_ntk(f, params, x_test, x)).reshape(30, 72)
    want = np.linalg.solve(theta + lam * np.eye(72), y.reshape(72))
    np.testing.assert_allclose(alpha.reshape(72), want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(pred.reshape(30), theta_test @ want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(train.solve(y, lam, tol=1e-13).reshape(72), want, rtol=1e-9,
                               atol=1e-11)


def test_solve_refuses_a_rectangular_ntk_and_reports_no_convergence():
    f, params, x, rs = mlp(12, seed=5)
    y = rs.randn(12, 3)
    rect = tiled_ntk_vp_fn(f, x, rs.randn(12, 5), params, batch_size=4)
    with pytest.raises(InputError, match=r'square .*x1, x1') as e:
        rect.solve(y, 0.1)
    assert e.value.path == 'x2' and e.value.hint
    square = tiled_ntk_vp_fn(f, x, None, params, batch_size=4)
    with pytest.raises(NumericalError, match='did not solve') as e:
        square.solve(y, 1e-6, tol=1e-12, maxiter=2)
    assert e.value.hint
    with pytest.raises(InputError, match='v must be shaped'):
        square.solve(y[:, :2], 0.1)


def test_passing_the_product_to_jit_keeps_the_inputs_out_of_the_program():
    """As a jit argument the product is a pytree of its arrays: the lowered program does not
    grow with N (closed over, its inputs would be embedded as constants)."""
    f, params, _, rs = mlp(1)
    sizes = {}
    for n in (8, 4000):
        vp = tiled_ntk_vp_fn(f, rs.randn(n, 5), None, params, batch_size=8,
                             devices=jax.local_devices()[:1])
        text = jax.jit(lambda vp, v: vp(v)).lower(vp, np.ones((n, 3))).as_text()
        sizes[n] = len(text)
    assert sizes[4000] < sizes[8] + 2000


def test_memory_is_bounded_by_the_tile_not_by_n():
    """XLA's memory analysis: at a fixed tile, the temporaries of the tiled product do not grow
    with N (8× more examples), and stay far below the size of Θ itself."""
    init_fn, f, _ = stax.serial(stax.Dense(256), stax.Relu(), stax.Dense(256), stax.Relu(),
                                stax.Dense(4))
    _, params = init_fn(jax.random.PRNGKey(0), (1, 32))
    temps = {}
    for n in (256, 2048):
        x = np.random.RandomState(0).randn(n, 32)
        vp = tiled_ntk_vp_fn(f, x, None, params, batch_size=32, devices=jax.local_devices()[:1])
        temps[n] = vp.memory_analysis().temp_size_in_bytes
    theta_bytes = (2048 * 4) ** 2 * 8
    assert temps[2048] <= 1.1 * temps[256] + 2 ** 16
    assert temps[2048] < theta_bytes / 100


def test_shape_errors_name_the_argument():
    f, params, x1, rs = mlp(6)
    x2 = rs.randn(4, 5)
    vp = ntc.batch(ntc.empirical_ntk_vp_fn(f, x1, x2, params), batch_size=2)
    with pytest.raises(InputError, match=r'v must be shaped like f\(params, x2\)') as e:
        vp(rs.randn(6, 3))            # shaped like f(x1), not f(x2)
    assert e.value.path == 'v' and e.value.hint
    with pytest.raises(InputError, match='v must be shaped'):
        vp((rs.randn(4, 3),))         # a different pytree
    with pytest.raises(InputError, match='batch_size must be a positive integer') as e:
        tiled_ntk_vp_fn(f, x1, x2, params, batch_size=-2)
    assert e.value.path == 'batch_size'
    with pytest.raises(InputError, match='examples on axis 0') as e:
        tiled_ntk_vp_fn(lambda p, x: f(p, x).sum(0), x1, x2, params, batch_size=2)
    assert e.value.path == 'f(params, x1)'
    with pytest.raises(InputError, match='every leaf of x2') as e:
        tiled_ntk_vp_fn(f, x1, (x2, x2[:3]), params)
    assert e.value.path == 'x2'


def test_what_tiles_cannot_do_is_refused():
    f, params, x, _ = mlp(4)
    with pytest.raises(NtcError, match='rng') as e:
        tiled_ntk_vp_fn(lambda p, x, rng=None: f(p, x), x, None, params, 2,
                        rng=jax.random.PRNGKey(0))
    assert e.value.path == 'rng' and e.value.hint
    with pytest.raises(InputError, match='keeps no tile store') as e:
        ntc.batch(ntc.empirical_ntk_vp_fn(f, x, None, params), 2, store='/tmp/unused')
    assert e.value.hint


def test_batch_size_none_picks_the_largest_tile_that_fits(monkeypatch):
    """None: with plenty of memory, one tile per device; with little, a smaller tile whose
    compiled temporaries (XLA's memory analysis) fit in the budget, a third of free memory."""
    init_fn, f, _ = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(512), stax.Relu(),
                                stax.Dense(2))
    _, params = init_fn(jax.random.PRNGKey(0), (1, 16))
    x = np.random.RandomState(0).randn(600, 16)
    one = jax.local_devices()[:1]
    monkeypatch.setattr(ntc.checks, 'free_memory', lambda device: 1e12)
    assert tiled_ntk_vp_fn(f, x, None, params, devices=one).tile == {1: 600, 2: 600}
    free = 3 * 6e6 * len([d for d in jax.devices() if d.platform == 'cpu'])  # 6 MB budget
    monkeypatch.setattr(ntc.checks, 'free_memory', lambda device: free)
    vp = tiled_ntk_vp_fn(f, x, None, params, devices=one)
    assert 8 < vp.tile[1] < 600
    assert vp.memory_analysis().temp_size_in_bytes <= 1.1 * 6e6
    v = np.random.RandomState(1).randn(600, 2)
    plain = ntc.empirical_ntk_vp_fn(f, x, None, params)(v)
    np.testing.assert_allclose(vp(v), plain, rtol=1e-10, atol=1e-12)
