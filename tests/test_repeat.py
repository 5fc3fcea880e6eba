"""`repeat(layer, n)`: the same kernels and finite network as `serial(*[layer] * n)`, compiled as
one `lax.scan` whose program does not grow with n.  NT agreement: `fc_repeat` in
`tests/test_nt_fixtures.py`; `benchmarks/bench_repeat.py` measures compile times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ntc
from ntc import spec, stax
from ntc.errors import GaussianityError, ShapeError
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
    # the carry of the loop is a FULL covariance (pooling follows), with DIAG marginals
    plan = ntc.compile(head(stax.repeat(BLOCK, 3)), x1.shape)
    rep = next(n for n in plan.graph.nodes() if n.op.kind == 'Repeat')
    assert (rep.cov.spatial, plan.graph.node(plan.graph.inputs(rep.id)[0]).cov.marginal) == \
        ('FULL', 'DIAG')


def test_finite_repeat_equals_unrolled_with_same_weights():
    x = np.random.RandomState(1).randn(3, 4, 3, 2)
    init_r, apply_r, _ = head(stax.repeat(BLOCK, 3))
    init_s, apply_s, _ = head(*[BLOCK] * 3)
    params = jax.jit(lambda k: init_r(k, x.shape)[1])(jax.random.PRNGKey(0))
    unrolled = {}
    for path, p in params.items():
        if path == 'serial[1].Repeat':
            for i in range(3):
                for inner, q in p.items():
                    unrolled[f'serial[{1 + i}].{inner}'] = jax.tree_util.tree_map(
                        lambda a, i=i: a[i], q)
        else:
            idx = int(path.split('[')[1].split(']')[0])
            unrolled[path.replace(f'serial[{idx}]', f'serial[{idx + 2 if idx > 1 else idx}]')] = p
    np.testing.assert_allclose(jax.jit(apply_r)(params, x), jax.jit(apply_s)(unrolled, x),
                               rtol=1e-12)


def test_program_size_does_not_grow_with_depth():
    x = np.random.RandomState(2).randn(2, 5)

    def hlo(n):
        net = stax.serial(stax.Dense(8), stax.repeat(stax.serial(stax.Dense(8, 1.4, 0.1),
                                                                 stax.Relu()), n), stax.Dense(1))
        plan = ntc.compile(net, x.shape, dtype=jnp.float64)
        return plan.fn.lower(x, None).as_text()

    small, large = hlo(2), hlo(500)
    assert abs(len(small) - len(large)) < 40  # only the trip count differs


def test_shape_changing_layer_is_rejected():
    with pytest.raises(ShapeError, match=r'serial\(\*\[layer\] \* 3\)'):
        stax.repeat(stax.serial(stax.Dense(16), stax.Relu()), 3).kernel_fn(np.ones((2, 6)))


def test_gaussianity_inside_the_body_names_the_path():
    net = stax.serial(stax.Dense(8), stax.repeat(stax.serial(stax.Relu(), stax.Relu()), 2))
    with pytest.raises(GaussianityError, match=r'serial\[1\]\.Repeat\.serial\[1\]\.Relu'):
        net.kernel_fn(np.ones((2, 8)), None, 'nngp')


def test_spec_round_trip():
    net = head(stax.repeat(BLOCK, 2))
    again = spec.parse(spec.dump(net))
    assert spec.dump(again) == spec.dump(net)
    x = np.random.RandomState(3).randn(2, 4, 3, 2)
    np.testing.assert_allclose(again.kernel_fn(x, None, 'nngp'), net.kernel_fn(x, None, 'nngp'),
                               rtol=1e-13)


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
