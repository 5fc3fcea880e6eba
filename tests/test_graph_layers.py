"""Aggregate (graph networks): kernel against an independent formula, DENSE vs SPARSE
implementations, the reference lowering, the `pattern` input, layouts, and Monte-Carlo.

Exact agreement with neural-tangents is in tests/test_nt_fixtures.py (`aggregate_*`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ntc import NtcError, stax
from ntc.api import compile as compile_plan
from ntc.errors import InputError
from ntc.ir.graph import Graph
from tests.mc_check import assert_monte_carlo_agrees

RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(2, 4, 3), RNG.randn(3, 4, 3)
P1 = (RNG.rand(2, 4, 4) < 0.5) * 1.0
P2 = RNG.rand(3, 4, 4)


def edges(p):
    """Dense 0/1/2 adjacency (N, V, V) -> edge lists (N, E, 2), repeated edges for weight 2,
    padded with -1."""
    lists = []
    for a in p:
        e = [(i, j) for i, j in np.argwhere(a > 0) for _ in range(int(a[i, j]))]
        lists.append(e)
    n_e = max(len(e) for e in lists) + 1
    out = -np.ones((len(p), n_e, 2), int)
    for b, e in enumerate(lists):
        out[b, :len(e)] = e
    return out


def mlp(impl='DENSE', width=8, **kw):
    return stax.serial(stax.Dense(width, 1.3, 0.1), stax.Relu(),
                       stax.Aggregate(implementation=impl, **kw), stax.Dense(width, 1.2, 0.2),
                       stax.Erf(), stax.Aggregate(1, implementation=impl, **kw))


def test_kernel_is_pattern_transpose_k_pattern():
    """K'[n1, n2] = A1[n1]ᵀ K[n1, n2] A2[n2] on the raw input, also for cov1/cov2; on 2-D
    inputs aggregating over both axes or only one (the other stays a plain spatial axis)."""
    _, _, kf = stax.Aggregate()
    k0 = np.einsum('ihc,jgc->ijhg', X1, X2) / 3
    got = kf(X1, X2, ('nngp', 'cov1', 'cov2'), pattern=(P1, P2))
    np.testing.assert_allclose(got.nngp, np.einsum('ihk,ijhg,jgl->ijkl', P1, k0, P2),
                               atol=1e-13)
    c2 = np.einsum('ihc,igc->ihg', X2, X2) / 3
    np.testing.assert_allclose(got.cov2, np.einsum('ihk,ihg,igl->ikl', P2, c2, P2), atol=1e-13)

    x1, x2 = RNG.randn(2, 3, 2, 4), RNG.randn(1, 3, 2, 4)
    q1, q2 = RNG.rand(2, 3, 2, 3, 2), RNG.rand(1, 3, 2, 3, 2)
    k0 = np.einsum('iabc,jdec->ijadbe', x1, x2) / 4
    _, _, kf = stax.Aggregate(aggregate_axis=(1, 2))
    want = np.einsum('iabkl,ijadbe,jdemn->ijkmln', q1, k0, q2)
    np.testing.assert_allclose(kf(x1, x2, 'nngp', pattern=(q1, q2)), want, atol=1e-13)
    r1, r2 = RNG.rand(2, 2, 2), RNG.rand(1, 2, 2)      # aggregate the second axis only
    _, _, kf = stax.Aggregate(aggregate_axis=2)
    want = np.einsum('ibl,ijadbe,jen->ijadln', r1, k0, r2)
    np.testing.assert_allclose(kf(x1, x2, 'nngp', pattern=(r1, r2)), want, atol=1e-13)


def test_dense_and_sparse_implementations_agree():
    p1 = P1.copy()
    p1[0, 1, 2] = 2.0  # a repeated edge
    p2 = (P2 < 0.5) * 1.0
    e1, e2 = edges(p1), edges(p2)
    _, apply_d, kf_d = mlp('DENSE')
    init_s, apply_s, kf_s = mlp('SPARSE')
    for x2, pat_d, pat_s in ((X2, (p1, p2), (e1, e2)), (None, p1, e1)):
        a = kf_d(X1, x2, ('nngp', 'ntk', 'cov1'), pattern=pat_d)
        b = kf_s(X1, x2, ('nngp', 'ntk', 'cov1'), pattern=pat_s)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)
    _, params = init_s(np.array([0, 1], np.uint32), X1.shape)
    np.testing.assert_allclose(apply_d(params, X1, pattern=p1), apply_s(params, X1, pattern=e1),
                               atol=1e-12)
    e1_bad = e1.copy()
    e1_bad[0, 0] = -1  # dropping one edge changes the kernel
    assert not np.allclose(kf_s(X1, X2, 'nngp', pattern=(e1_bad, e2)),
                           kf_d(X1, X2, 'nngp', pattern=(p1, p2)))


def test_to_dense_decodes_the_pattern():
    def to_dense(e):  # traceable: kernel_fn calls it under jit, as NT does
        n, v = e.shape[0], 4
        valid = jnp.all(e >= 0, axis=-1)
        b = jnp.broadcast_to(jnp.arange(n)[:, None], e.shape[:2])
        return jnp.zeros((n, v, v)).at[b, e[..., 0], e[..., 1]].add(valid * 1.0)

    p2 = (P2 < 0.5) * 1.0
    want = mlp('DENSE')[2](X1, X2, ('nngp', 'ntk'), pattern=(P1, p2))
    got = mlp('DENSE', to_dense=to_dense)[2](X1, X2, ('nngp', 'ntk'),
                                             pattern=(edges(P1), edges(p2)))
    for u, v in zip(got, want):
        np.testing.assert_allclose(u, v, rtol=1e-12)


@pytest.mark.parametrize('x2', [X2, None])
def test_optimised_plan_equals_reference_lowering(x2):
    net = stax.serial(mlp(), stax.GlobalAvgPool(), stax.Dense(1))
    get = ('nngp', 'ntk', 'cov1', 'cov2')
    pattern = (P1, P2) if x2 is not None else P1
    got = compile_plan(net, X1.shape, get).raw(X1, x2, pattern=pattern)
    want = compile_plan(net, X1.shape, get, reference=True).raw(X1, x2, pattern=pattern)
    for g in get:
        np.testing.assert_allclose(got[g], want[g], rtol=1e-12, atol=1e-14)


def test_no_pattern_is_the_identity():
    _, apply_fn, kf = stax.Aggregate()
    np.testing.assert_allclose(kf(X1, X2, 'nngp'), stax.Identity()[2](X1, X2, 'nngp'))
    np.testing.assert_array_equal(apply_fn({}, X1), X1)


def test_pattern_errors():
    kf = mlp()[2]
    with pytest.raises(InputError, match='pattern=\\(pattern1, pattern2\\)'):
        kf(X1, X2, 'nngp', pattern=P1)
    with pytest.raises(InputError, match='None'):
        kf(X1, X2, 'nngp', pattern=(P1, None))
    with pytest.raises(InputError, match='expected'):
        kf(X1, X2, 'nngp', pattern=(P1[:, :3, :3], P2))
    with pytest.raises(InputError, match='unknown keyword argument'):
        kf(X1, X2, 'nngp', patern=(P1, P2))
    with pytest.raises(NtcError, match='batch or channel'):
        stax.serial(stax.Dense(4), stax.Aggregate(aggregate_axis=-1))[2](X1, X2, 'nngp')


def test_layout_full_before_aggregate_and_round_trip():
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Aggregate(), stax.Dense(8), stax.Relu(),
                      stax.Flatten(), stax.Dense(1))
    plan = compile_plan(net, X1.shape)
    cov = {n.path: n.cov for n in plan.graph.nodes()}
    assert cov['serial[1].Relu'].spatial == 'FULL'      # Aggregate mixes vertices
    assert cov['serial[2].Aggregate'].spatial == 'DIAG'  # Flatten only needs the diagonal
    assert 'Aggregate' in plan.explain()
    g = plan.graph
    assert Graph.from_dict(g.to_dict()).to_dict() == g.to_dict()
    with pytest.raises(NtcError, match='cannot be written out'):
        compile_plan(stax.serial(stax.Dense(4), stax.Aggregate(to_dense=np.asarray)),
                     X1.shape).graph.to_dict()


def test_monte_carlo_agreement():
    assert_monte_carlo_agrees(stax.serial(mlp(width=128), stax.Dense(32)), X1, X2,
                              n_samples=48, pattern=(P1, P2))
