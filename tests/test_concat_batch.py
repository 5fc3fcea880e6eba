"""`FanInConcat` along the batch axis (NT's `FanInConcat(axis=0)`): the output's examples are
branch 0's outputs, then branch 1's, ...  Its kernel is K[(i, n), (j, m)] = cov(a_i(x_n),
a_j(x'_m)): the kernel of branch i on its diagonal blocks and, for uncorrelated branches, zero
across them, which the following layers see as inputs with zero cross covariance.

Expected values: each branch's kernel computed on its own, the layers after the concatenation
by hand from those blocks, Monte-Carlo estimates of the finite network, and NT 0.6.5's numbers
(float64, the inputs below, computed with the bench kit's NT venv)."""

import jax
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, InputError
from ntc.testing.monte_carlo import check_against_monte_carlo

X1 = np.array([[1.69, -0.47, 0.03, 0.41], [-0.79, 0.0, -0.0, -1.75], [1.02, 0.6, -0.63, -0.17]])
X2 = np.array([[-2.29, 1.05, -0.42, -0.74], [1.07, -1.65, 0.54, -2.06]])


def branch_a():
    return stax.Dense(3, W_std=1.5, b_std=0.1)


def branch_b():
    return stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(3, b_std=0.2))


def concat(*tail):
    return stax.serial(stax.FanOut(2), stax.parallel(branch_a(), branch_b()),
                       stax.FanInConcat(0), *tail)


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def block_diagonal(a, b):
    out = np.zeros((a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]))
    out[:a.shape[0], :a.shape[1]] = a
    out[a.shape[0]:, a.shape[1]:] = b
    return out


@pytest.mark.parametrize('x2', [X2, None], ids=['x2', 'x2=None'])
def test_kernel_is_block_diagonal_of_the_branch_kernels(x2):
    got = concat().kernel_fn(X1, x2)
    ka, kb = branch_a().kernel_fn(X1, x2), branch_b().kernel_fn(X1, x2)
    for name in ('nngp', 'ntk'):
        close(getattr(got, name), block_diagonal(getattr(ka, name), getattr(kb, name)))
    close(got.cov1, np.concatenate([ka.cov1, kb.cov1]))
    if x2 is None:
        assert got.cov2 is None
    else:
        close(got.cov2, np.concatenate([ka.cov2, kb.cov2]))
    n2 = len(X1 if x2 is None else x2)
    assert got.shape1 == (6, 3) and got.shape2 == (2 * n2, 3)


def test_following_layers_see_zero_cross_covariance():
    """Dense(W, b) then Relu after the concatenation: on the off-diagonal blocks the
    pre-activations have covariance b² and variances W² q_i + b², the arc-cosine kernel of
    which is computed here by hand."""
    w, b = 1.3, 0.4
    got = concat(stax.Dense(5, w, b), stax.Relu()).kernel_fn(X1, X2, 'nngp')
    qa, qb = branch_a().kernel_fn(X1, X2), branch_b().kernel_fn(X1, X2)

    def relu(c, v1, v2):
        s = np.sqrt(np.outer(v1, v2))
        t = np.arccos(np.clip(c / s, -1, 1))
        return s * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)

    def pre(k, var):
        return w ** 2 * np.asarray(k) + b ** 2, w ** 2 * np.asarray(var) + b ** 2

    (ca, va1), (_, va2) = pre(qa.nngp, qa.cov1), pre(qa.nngp, qa.cov2)
    (cb, vb1), (_, vb2) = pre(qb.nngp, qb.cov1), pre(qb.nngp, qb.cov2)
    want = np.block([[relu(ca, va1, va2), relu(b ** 2, va1, vb2)],
                     [relu(b ** 2, vb1, va2), relu(cb, vb1, vb2)]])
    close(got, want)


# NT 0.6.5: concat(Dense(2, 1.2, 0.3), Erf(), Dense(1)) on X1, X2 (float64)
NT_NNGP = [[-0.6061208617, 0.2018567043, 0.0229977036, 0.0216833169],
           [0.3701563526, 0.299716194, 0.0218243847, 0.0205771061],
           [-0.1704803548, 0.0315459184, 0.028653281, 0.0270153007],
           [0.0205190558, 0.0189661309, 0.0615686137, 0.2490009826],
           [0.019888615, 0.0183834313, 0.3250516828, 0.2961427217],
           [0.0230497418, 0.0213051486, 0.1164441726, 0.1695273252]]
NT_NTK = [[-2.4163264783, 0.6073481324, 0.0460054164, 0.0433750225],
          [1.1925864075, 0.9352858644, 0.043657323, 0.0411613811],
          [-0.5361896643, 0.0800904609, 0.057325926, 0.0540468292],
          [0.04104522, 0.037937875, 0.123600234, 0.8173094539],
          [0.039783703, 0.036771974, 1.1787664575, 1.0369560065],
          [0.0461095609, 0.0426182545, 0.2667890934, 0.4805729356]]


def test_matches_nt():
    got = concat(stax.Dense(2, 1.2, 0.3), stax.Erf(), stax.Dense(1)).kernel_fn(X1, X2)
    close(got.nngp, NT_NNGP, rtol=1e-8, atol=1e-9)
    close(got.ntk, NT_NTK, rtol=1e-8, atol=1e-9)


def test_reference_and_joint_layouts_agree():
    """The reference plan (the joint Gram matrix over [x1; x2]) and NT's diagonal_batch=False
    give the kernels of the optimised plan."""
    net = concat(stax.Dense(4, 1.1, 0.2), stax.Erf(), stax.Dense(1))
    names = ('nngp', 'ntk')
    for x2 in (X2, None):
        want = ntc.compile(net, X1.shape, names)(X1, x2)
        ref = ntc.compile(net, X1.shape, names, reference=True)(X1, x2)
        for a, b in zip(ref, want):
            close(a, b)
    k = net.kernel_fn(X1, X2, diagonal_batch=False)
    close(k.nngp, net.kernel_fn(X1, X2, 'nngp'))
    close(k.cov1, net.kernel_fn(X1, None, 'nngp'))
    close(k.cov2, net.kernel_fn(X2, None, 'nngp'))


def test_spatial_branches_keep_their_layout():
    """Conv branches: the output kernel (N1', N2', H, H', W, W') is block-diagonal over the
    batch, and a spatially diagonal plan (global pooling) agrees with the full one."""
    x1 = np.random.RandomState(0).randn(2, 4, 3, 2)
    x2 = np.random.RandomState(1).randn(3, 4, 3, 2)
    conv_a = stax.Conv(3, (2, 2), padding='SAME', W_std=1.2, b_std=0.1)
    conv_b = stax.serial(stax.Conv(3, (3, 3), padding='SAME'), stax.Relu(),
                         stax.Conv(3, (1, 2), padding='SAME', b_std=0.3))
    net = stax.serial(stax.FanOut(2), stax.parallel(conv_a, conv_b), stax.FanInConcat(0))
    got = net.kernel_fn(x1, x2, 'nngp')
    assert got.shape == (4, 6, 4, 4, 3, 3)
    close(got[:2, :3], conv_a.kernel_fn(x1, x2, 'nngp'))
    close(got[2:, 3:], conv_b.kernel_fn(x1, x2, 'nngp'))
    assert not np.any(got[:2, 3:]) and not np.any(got[2:, :3])
    pooled = stax.serial(net, stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    full = ntc.compile(pooled, x1.shape, ('ntk',), force_full=True)(x1, x2)
    close(pooled.kernel_fn(x1, x2, 'ntk'), full)


def test_branches_of_other_batch_sizes():
    """A branch may select examples first (Index on the batch axis): its block has its own
    size."""
    pick = stax.serial(stax.Dense(3, b_std=0.1), stax.Index(stax.Slice[::2]))
    net = stax.serial(stax.FanOut(2), stax.parallel(pick, branch_a()), stax.FanInConcat(0))
    got = net.kernel_fn(X1, X2, 'ntk')
    assert got.shape == (2 + 3, 1 + 2)
    close(got, block_diagonal(pick.kernel_fn(X1, X2, 'ntk'), branch_a().kernel_fn(X1, X2, 'ntk')))
    assert net.init_fn(jax.random.PRNGKey(0), X1.shape)[0] == (5, 3)
    assert pick.init_fn(jax.random.PRNGKey(0), (7, 4))[0] == (4, 3)


def test_finite_network_concatenates_examples():
    init_fn, apply_fn, _ = concat()
    shape, params = init_fn(jax.random.PRNGKey(1), X1.shape)
    out = apply_fn(params, X1)
    assert shape == out.shape == (6, 3)
    a_params, b_params = params[1]
    close(out[:3], branch_a().apply_fn(a_params, X1))
    close(out[3:], branch_b().apply_fn(b_params, X1))


def test_masked_inputs():
    """Masks concatenate with the examples: the kernel of masked inputs is block-diagonal in
    the branches' masked kernels."""
    m1, m2 = X1.copy(), X2.copy()
    m1[1, 2] = m2[0, 0] = 10.  # one masked feature each: Dense sums over the others
    net = concat()
    got = net.kernel_fn(m1, m2, ('nngp', 'ntk'), mask_constant=10.)
    ka = branch_a().kernel_fn(m1, m2, ('nngp', 'ntk'), mask_constant=10.)
    kb = branch_b().kernel_fn(m1, m2, ('nngp', 'ntk'), mask_constant=10.)
    for g, a, b in zip(got, ka, kb):
        close(g, block_diagonal(a, b))
    x = np.random.RandomState(2).randn(2, 3, 2)
    x[0, 1] = 10.
    branches = stax.parallel(stax.Conv(4, (2,)), stax.Conv(4, (2,), W_std=2.))
    conv = stax.serial(stax.FanOut(2), branches, stax.FanInConcat(0), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1))
    out = conv.apply_fn(conv.init_fn(jax.random.PRNGKey(0), x.shape)[1], x, mask_constant=10.)
    assert out.mask.shape == (4, 1)
    k = conv.kernel_fn(x, None, 'nngp', mask_constant=10.)
    assert k.shape == (4, 4) and np.all(np.isfinite(k))


def test_monte_carlo():
    net = concat(stax.Dense(4, 1.3, 0.4), stax.Relu(), stax.Dense(1))
    check_against_monte_carlo(net, X1, X2, width=256, n_samples=96, key=3).assert_ok()


def test_correlated_branches_are_refused():
    """Branches sharing a random field have non-zero cross blocks (here the two copies of one
    Dense output): refused rather than returned as zero (NT returns zeros)."""
    net = stax.serial(stax.Dense(3), stax.FanOut(2), stax.parallel(stax.Identity(),
                                                                     stax.Identity()),
                      stax.FanInConcat(0), stax.Dense(1))
    with pytest.raises(ArchitectureError, match='FanInConcat: branches 0 and 1 .* correlated'):
        net.kernel_fn(X1, X2, 'nngp')


@pytest.mark.parametrize('net', [concat(stax.Dense(1)),
                                 stax.serial(stax.Dense(3), stax.Index(stax.Slice[1:]))],
                         ids=['concat', 'index'])
def test_batch_refuses_to_tile_moved_examples(net):
    with pytest.raises(InputError, match='selects, reorders or concatenates examples'):
        ntc.batch(net.kernel_fn, 1, progress=False)(X1, X2, 'nngp')
