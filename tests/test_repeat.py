"""`repeat(layer, n)`: the same kernels and finite network as `serial(*[layer] * n)`, whose
copies `roll_loops` compiles as one `lax.scan` whose program does not grow with n.  NT
agreement: `fc_repeat` in `tests/test_nt_fixtures.py`; `benchmarks/bench_repeat.py` measures
compile times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ntc
from ntc import spec, stax
from ntc.errors import GaussianityError, ShapeError, ValidationError
from ntc.passes.roll_loops import loops
from ntc.runtime.monte_carlo import monte_carlo_kernel_stats

BLOCK = stax.serial(stax.Conv(4, (2, 2), padding='SAME', W_std=1.3, b_std=0.1),
                    stax.LayerNorm(axis=(1, 2, 3)), stax.Relu())


def z_threshold(n_entries: int, n_samples: int, alpha: float = 1e-3) -> float:
    """Bonferroni-corrected two-sided Student-t bound on max |z| over `n_entries` entries."""
    return float(stats.t.isf(alpha / (2 * n_entries), df=n_samples - 1))


def head(*body):
    return stax.serial(stax.Conv(4, (2, 2), padding='SAME'), *body, stax.Conv(4, (3, 3)),
                       stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))


def test_repeat_equals_unrolled_serial():
    x1, x2 = np.random.RandomState(0).randn(2, 2, 4, 3, 2)
    looped = head(stax.repeat(BLOCK, 3)).kernel_fn(x1, x2, ('nngp', 'ntk'))
    unrolled = head(*[BLOCK] * 3).kernel_fn(x1, x2, ('nngp', 'ntk'))
    for a, b in zip(looped, unrolled):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # the repeat's layers run as a loop whose carry is a FULL covariance (pooling follows),
    # with DIAG marginals
    plan = ntc.compile(head(stax.repeat(BLOCK, 3)), x1.shape)
    (lp,) = loops(plan.graph)
    assert plan.graph.node(lp.exit).path.startswith('serial[1].repeat[')
    carry = plan.graph.node(lp.exit).cov
    assert (carry.spatial, carry.marginal) == ('FULL', 'DIAG')
    # explain() lists each iteration's layers with their layouts, and counts the loop
    text = plan.explain()
    assert 'serial[1].repeat[2].serial[1].LayerNorm' in text and 'loops 1 (2 × 3 nodes)' in text


def test_finite_repeat_equals_unrolled_with_same_weights():
    x = np.random.RandomState(1).randn(3, 4, 3, 2)
    init_r, apply_r, _ = head(stax.repeat(BLOCK, 3))
    init_s, apply_s, _ = head(*[BLOCK] * 3)
    params = jax.jit(lambda k: init_r(k, x.shape)[1])(jax.random.PRNGKey(0))
    # NT's structure: the repeat's entry holds the block's parameters stacked, one per iteration
    def step(i):
        return jax.tree_util.tree_map(lambda a: a[i], params[1])
    unrolled = [params[0], *[step(i) for i in range(3)], *params[2:]]
    np.testing.assert_allclose(jax.jit(apply_r)(params, x), jax.jit(apply_s)(unrolled, x),
                               rtol=1e-12)
    # with the same key, both nets draw the same weights (their paths aside)
    params_s = jax.jit(lambda k: init_s(k, x.shape)[1])(jax.random.PRNGKey(0))
    np.testing.assert_allclose(jax.jit(apply_r)(params, x), jax.jit(apply_s)(params_s, x),
                               rtol=1e-12)


def test_repeat_zero_times_is_the_identity():
    x = np.random.RandomState(5).randn(2, 4, 3, 2)
    np.testing.assert_allclose(head(stax.repeat(BLOCK, 0)).kernel_fn(x, None, 'nngp'),
                               head().kernel_fn(x, None, 'nngp'), rtol=1e-13)
    with pytest.raises(ValidationError, match=r'repeat\.n'):
        stax.repeat(BLOCK, -1)


def test_repeat_zero_times_has_empty_stacked_parameters():
    """NT's init_fn gives repeat(layer, 0) the layer's parameter structure with a leading axis
    of size 0 (nested repeats stack their counts); apply_fn takes it back, and ()."""
    dense = stax.Dense(4, b_std=0.1)
    inner = stax.serial(dense, stax.repeat(dense, 0))
    net = stax.serial(dense, stax.repeat(BLOCK, 0), stax.repeat(inner, 0),
                      stax.repeat(inner, 2))
    x = np.random.RandomState(6).randn(2, 4, 3, 4)
    shape, params = net.init_fn(jax.random.PRNGKey(0), x.shape)
    assert shape == x.shape
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    conv = ((0, 2, 2, 4, 4), (0, 1, 1, 1, 4))  # BLOCK: Conv (W, b), LayerNorm, Relu
    assert shapes[1] == [conv, (), ()]
    assert shapes[2] == [((0, 4, 4), (0, 1, 1, 1, 4)), ((0, 0, 4, 4), (0, 0, 1, 1, 1, 4))]
    assert shapes[3] == [((2, 4, 4), (2, 1, 1, 1, 4)), ((2, 0, 4, 4), (2, 0, 1, 1, 1, 4))]
    want = stax.serial(dense, stax.repeat(inner, 2)).apply_fn([params[0], params[3]], x)
    np.testing.assert_allclose(net.apply_fn(params, x), want, rtol=1e-13)
    np.testing.assert_allclose(stax.repeat(BLOCK, 0).apply_fn((), x), x)
    shape, params = jax.jit(lambda k: stax.repeat(BLOCK, 0).init_fn(k, x.shape))(
        jax.random.PRNGKey(1))
    assert jax.tree_util.tree_map(lambda a: a.shape, params) == [conv, (), ()]


def test_program_size_does_not_grow_with_depth():
    x = np.random.RandomState(2).randn(2, 5)

    def hlo(n):
        net = stax.serial(stax.Dense(8), stax.repeat(stax.serial(stax.Dense(8, 1.4, 0.1),
                                                                 stax.Relu()), n), stax.Dense(1))
        plan = ntc.compile(net, x.shape, dtype=jnp.float64)
        return plan.fn.lower(x, None).as_text()

    small, large = hlo(10), hlo(500)
    assert abs(len(small) - len(large)) < 40  # only the trip count differs


def test_shape_changing_layer_is_rejected():
    with pytest.raises(ShapeError, match=r'serial\(\*\[layer\] \* 3\)'):
        stax.repeat(stax.serial(stax.Dense(16), stax.Relu()), 3).kernel_fn(np.ones((2, 6)))


def test_gaussianity_inside_the_body_names_the_path():
    net = stax.serial(stax.Dense(8), stax.repeat(stax.serial(stax.Relu(), stax.Relu()), 2))
    with pytest.raises(GaussianityError, match=r'serial\[1\]\.repeat\[0\]\.serial\[1\]\.Relu'):
        net.kernel_fn(np.ones((2, 8)), None, 'nngp')


def test_spec_round_trip():
    net = head(stax.repeat(BLOCK, 2))
    again = spec.parse(spec.dump(net))
    assert spec.dump(again) == spec.dump(net)
    x = np.random.RandomState(3).randn(2, 4, 3, 2)
    np.testing.assert_allclose(again.kernel_fn(x, None, 'nngp'), net.kernel_fn(x, None, 'nngp'),
                               rtol=1e-13)
    assert spec.dump(stax.repeat(stax.Relu(), 2)) == {'repeat': {'layer': 'Relu', 'n': 2}}
    # the form written before repeat was expanded into the graph
    assert spec.parse({'Repeat': {'n': 2, 'layer': {'serial': ['Relu']}}}) == \
        stax.repeat(stax.serial(stax.Relu()), 2)
    assert eval(net.code(), {'stax': stax}) == net


def test_monte_carlo_agreement():
    """Dense -> repeat(Dense, Erf) x 3 -> Dense vs 256 finite networks of width 256."""
    rs = np.random.RandomState(4)
    x1, x2 = rs.randn(3, 5), rs.randn(2, 5)

    def net(width):
        return stax.serial(stax.Dense(width, 1.2, 0.1),
                           stax.repeat(stax.serial(stax.Erf(), stax.Dense(width, 1.5, 0.2)), 3))

    exact = net(8).kernel_fn(x1, x2, 'nngp')
    init, apply, _ = net(256)
    st = monte_carlo_kernel_stats(init, apply, jax.random.PRNGKey(5), x1, x2, 256,
                                  get=('nngp',), chunk_size=128)
    z = (np.asarray(exact) - st.mean['nngp']) / st.stderr['nngp']
    assert np.abs(z).max() < z_threshold(z.size, 256)
