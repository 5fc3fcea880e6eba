"""gp_inference(..., solver='cg'): conjugate gradients agree with Cholesky, on dense, row-sharded
and on-disk kernels, report their iterations, and refuse ill-conditioned kernels."""

import jax
import numpy as np
import pytest

from ntc import stax
from ntc.errors import InputError, NumericalError
from ntc.runtime import linalg, predict
from ntc.runtime.batching import batch
from ntc.runtime.distributed import row_sharded_kernel

NET = stax.serial(stax.Dense(16, 1.5, 0.1), stax.Relu(), stax.Dense(16, 1.5, 0.1), stax.Erf(),
                  stax.Dense(1))
RNG = np.random.RandomState(0)
X, XT = RNG.randn(48, 5), RNG.randn(7, 5)
Y = RNG.randn(48, 3)
GET = ('nngp', 'ntk')
K_DD, K_TD, K_TT = (NET.kernel_fn(a, b, GET) for a, b in ((X, None), (XT, X), (XT, None)))
REG = 1e-4


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_cg_matches_cholesky_means_and_covariances():
    cond = np.linalg.cond(np.asarray(K_DD.nngp) + REG * np.mean(np.diag(K_DD.nngp)) * np.eye(48))
    assert 1e2 < cond < 1e8, 'a reasonably conditioned kernel'
    chol = predict.gp_inference(K_DD, Y, diag_reg=REG)
    cg = predict.gp_inference(K_DD, Y, diag_reg=REG, solver='cg', cg_tol=1e-11)
    want = chol(('nngp', 'ntk', 'ntkgp'), K_TD, K_TT)
    got = cg(('nngp', 'ntk', 'ntkgp'), K_TD, K_TT)
    for g, w in zip(got, want):
        assert rel_err(g.mean, w.mean) < 1e-6
        assert rel_err(g.covariance, w.covariance) < 1e-6
    infos = cg.solver_info['nngp']
    assert len(infos) == 2  # one solve for the mean, one for the covariance
    for info in infos:
        assert info.converged and info.residual <= 1e-10 and info.preconditioner == 'jacobi'
        assert 1 <= info.iterations == len(info.residuals) <= 48 * 10
        assert info.residuals[-1] <= 1e-11 < info.residuals[0]
        # the Lanczos estimate bounds the true condition number of D^-1/2 A D^-1/2 from below
        a = np.asarray(K_DD.nngp) + REG * np.mean(np.diag(K_DD.nngp)) * np.eye(48)
        d = 1 / np.sqrt(np.diag(a))
        true = np.linalg.cond(a * d[:, None] * d[None, :])
        assert 0.5 * true <= info.condition_estimate <= 1.01 * true


def test_cg_on_a_row_sharded_kernel_and_on_tiles_on_disk(tmp_path):
    want = predict.gp_inference(K_DD.ntk, Y, diag_reg=REG)('ntk', K_TD.ntk)
    sharded = row_sharded_kernel(K_DD.ntk)
    assert len(sharded.array.sharding.device_set) == 4
    assert sharded.array.addressable_shards[0].data.shape == (12, 48)
    got = predict.gp_inference(sharded, Y, diag_reg=REG, solver='cg')('ntk', K_TD.ntk)
    assert rel_err(got, want) < 1e-6
    # 46 rows do not split over 4 devices: an identity block pads them to 48
    odd = row_sharded_kernel(K_DD.ntk[:46, :46])
    assert odd.array.shape == (48, 48) and odd.shape == (46, 46)
    want46 = predict.gp_inference(K_DD.ntk[:46, :46], Y[:46], diag_reg=REG)('ntk', K_TD.ntk[:, :46])
    got46 = predict.gp_inference(odd, Y[:46], diag_reg=REG, solver='cg')('ntk', K_TD.ntk[:, :46])
    assert got46.shape == (7, 3) and rel_err(got46, want46) < 1e-6
    store = tmp_path / 'tiles'
    tiled = batch(NET.kernel_fn, 10, progress=False, store=store)(X, None, GET)
    fn = predict.gp_inference(store, Y, diag_reg=REG, solver='cg')
    assert rel_err(fn('ntk', K_TD.ntk), want) < 1e-6
    assert fn.solver_info['ntk'][0].converged
    # from the store, each device's rows are read from the tiles
    from_disk = row_sharded_kernel(store, 'nngp')
    np.testing.assert_array_equal(np.asarray(from_disk), np.asarray(tiled.nngp))


def test_jacobi_preconditioning_pays_off_on_a_badly_scaled_kernel():
    s = np.exp(RNG.uniform(-3, 3, 48))
    k = np.asarray(K_DD.nngp) * s[:, None] * s[None, :] + 1e-3 * np.diag(s ** 2)
    y = Y[:, :1]
    want = np.linalg.solve(k, y)
    fns = {p: predict.gp_inference(k, y, solver='cg', preconditioner=p) for p in ('jacobi', None)}
    for fn in fns.values():
        fn('nngp', k)
    it = {p: fn.solver_info['nngp'][0].iterations for p, fn in fns.items()}
    assert it['jacobi'] < it[None] / 2
    x, info = predict.cg_solve(linalg.DenseOperator(jax.numpy.asarray(k)), y)
    assert rel_err(x, want) < 1e-6 and info.iterations == it['jacobi']


def test_ill_conditioned_and_indefinite_kernels_are_refused():
    x = np.concatenate([X, X[:6]])  # repeated inputs: a singular kernel
    k = NET.kernel_fn(x, None, 'nngp')
    y = RNG.randn(54, 2)
    with pytest.raises(NumericalError, match='ill-conditioned.*diag_reg'):
        predict.gp_inference(k, y, solver='cg')('nngp', k)
    # regularised it is fine
    predict.gp_inference(k, y, diag_reg=1e-3, solver='cg')('nngp', k)
    # an indefinite matrix: negative curvature
    a = np.diag(np.linspace(1, 2, 20))
    a[0, 0] = -1.0
    with pytest.raises(NumericalError, match='not positive definite'):
        predict.gp_inference(a, RNG.randn(20, 1), solver='cg', preconditioner=None)('nngp', a)
    with pytest.raises(NumericalError, match='non-positive diagonal'):
        predict.gp_inference(a, RNG.randn(20, 1), solver='cg')('nngp', a)


def test_bad_solver_arguments(tmp_path):
    with pytest.raises(InputError, match="'cholesky' or 'cg'"):
        predict.gp_inference(K_DD, Y, solver='lu')
    with pytest.raises(InputError, match="'jacobi', 'pivchol'"):
        predict.gp_inference(K_DD, Y, solver='cg', preconditioner='ilu')('nngp', K_TD)
    store = tmp_path / 'ab'
    batch(NET.kernel_fn, 16, progress=False, store=store)(X, XT, 'nngp')
    with pytest.raises(InputError, match='two different inputs'):
        predict.gp_inference(store, Y, solver='cg')('nngp', K_TD)
    with pytest.raises(InputError, match="solver='cg'"):
        predict.gp_inference(store, Y)
    with pytest.raises(InputError, match="sharded over a mesh.*solver='cg'"):
        predict.gp_inference(row_sharded_kernel(K_DD.nngp), Y)


def test_pivoted_cholesky_preconditioner_cuts_iterations(tmp_path):
    want = predict.gp_inference(K_DD.nngp, Y, diag_reg=1e-6)('nngp', K_TD.nngp)
    its = {}
    for pc in ('jacobi', 'pivchol24'):
        fn = predict.gp_inference(K_DD.nngp, Y, diag_reg=1e-6, solver='cg', preconditioner=pc)
        assert rel_err(fn('nngp', K_TD.nngp), want) < 1e-6
        its[pc] = fn.solver_info['nngp'][0].iterations
    assert its['pivchol24'] < its['jacobi'] / 2
    # the same preconditioner built from rows of tiles on disk, and on an uneven sharding
    store = tmp_path / 'tiles'
    tiled = batch(NET.kernel_fn, 10, progress=False, store=store)(X, None, 'nngp')
    for k in (store, row_sharded_kernel(np.asarray(tiled)[:46, :46])):
        n = 48 if k is store else 46
        fn = predict.gp_inference(k, Y[:n], diag_reg=1e-6, solver='cg', preconditioner='pivchol24')
        ref = predict.gp_inference(np.asarray(tiled)[:n, :n], Y[:n], diag_reg=1e-6)
        assert rel_err(fn('nngp', K_TD.nngp[:, :n]), ref('nngp', K_TD.nngp[:, :n])) < 1e-6
        assert fn.solver_info['nngp'][0].iterations < its['jacobi'] / 2
