"""ConvLocal (unshared convolution): the spatially diagonal kernel against Conv's diagonal,
its FULL embedding, the output layout NT uses, the finite network, the reference lowering and
Monte-Carlo.  Exact agreement with NT: tests/test_nt_fixtures.py (`conv_local_*`,
`spatial_out_conv_local*`)."""

import numpy as np
import pytest

from ntc import stax
from ntc.api import compile as compile_plan
from ntc.errors import ShapeError
from tests.mc_check import assert_monte_carlo_agrees

RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(2, 4, 3, 2), RNG.randn(3, 4, 3, 2)
ARGS = dict(out_chan=8, filter_shape=(3, 2), strides=(1, 1), padding='SAME', W_std=1.3,
            b_std=0.2)


def diag(k):
    """(N1, N2, H, H', W, W') -> (N1, N2, H, W)."""
    return np.einsum('ijaabb->ijab', np.asarray(k))


@pytest.mark.parametrize('padding,strides,param', [('SAME', (1, 1), 'ntk'),
                                                   ('VALID', (2, 1), 'standard'),
                                                   ('CIRCULAR', (1, 2), 'ntk')])
def test_diagonal_equals_shared_conv_diagonal(padding, strides, param):
    """Unshared weights change only the off-diagonal entries: on the diagonal a locally
    connected layer and a convolution have the same kernel.  As the last layer ConvLocal returns
    that diagonal (N1, N2, H, W), as NT does; cov1 is (N1, H, W)."""
    args = dict(ARGS, padding=padding, strides=strides, parameterization=param)
    pre = [stax.Conv(4, (2, 2), padding='SAME', W_std=1.2, b_std=0.1), stax.Relu()]
    local = stax.serial(*pre, stax.ConvLocal(**args))[2](X1, X2, ('nngp', 'ntk', 'cov1'))
    shared = stax.serial(*pre, stax.Conv(**args))[2](X1, X2, ('nngp', 'ntk', 'cov1'))
    np.testing.assert_allclose(local.nngp, diag(shared.nngp), rtol=1e-12)
    np.testing.assert_allclose(local.ntk, diag(shared.ntk), rtol=1e-12)
    np.testing.assert_allclose(local.cov1, np.einsum('iaabb->iab', shared.cov1), rtol=1e-12)
    assert local.nngp.ndim == 4 and local.cov1.ndim == 3


def test_full_kernel_is_zero_off_the_diagonal():
    """Under a position-mixing consumer (GlobalAvgPool) the FULL kernel is the diagonal embedded
    in zeros: GAP gives Σ_o K[o, o] / (HW)²."""
    local = stax.serial(stax.ConvLocal(**ARGS), stax.GlobalAvgPool())[2](X1, X2, ('nngp', 'ntk'))
    shared = stax.Conv(**ARGS)[2](X1, X2, ('nngp', 'ntk'))
    for a, b in zip(local, shared):
        np.testing.assert_allclose(a, diag(b).sum(axis=(2, 3)) / 12 ** 2, rtol=1e-12)
    plan = compile_plan(stax.serial(stax.ConvLocal(**ARGS), stax.Relu(), stax.GlobalAvgPool()),
                        X1.shape)
    cov = {n.path: n.cov.spatial for n in plan.graph.nodes()}
    assert cov == {'input': 'DIAG', 'serial[0].ConvLocal': 'FULL', 'serial[1].Relu': 'FULL',
                   'serial[2].GlobalAvgPool': 'NONE'}


@pytest.mark.parametrize('x2', [X2, None])
def test_optimised_plan_equals_reference_lowering(x2):
    for net in (stax.serial(stax.ConvLocal(**ARGS), stax.Relu(), stax.AvgPool((2, 2)),
                            stax.ConvLocal(**dict(ARGS, padding='VALID', filter_shape=(2, 1)))),
                stax.serial(stax.ConvLocal(**ARGS), stax.Erf(), stax.Conv(4, (2, 2)))):
        get = ('nngp', 'ntk', 'cov1', 'cov2')
        got = compile_plan(net, X1.shape, get).raw(X1, x2)
        want = compile_plan(net, X1.shape, get, reference=True).raw(X1, x2)
        for g in get:
            np.testing.assert_allclose(got[g], want[g], rtol=1e-12, atol=1e-14)


def test_finite_network_has_unshared_weights():
    init_fn, apply_fn, _ = stax.ConvLocal(**dict(ARGS, padding='VALID'))
    out_shape, params = init_fn(np.array([0, 1], np.uint32), X1.shape)
    w, b = params  # NT's structure: a single layer's own (W, b)
    assert out_shape[1:] == (2, 2, 8)
    assert w.shape == (2, 2, 2 * 3 * 2, 8)           # one filter per output position
    assert b.shape == (1, 2, 2, 8)                   # one bias per output position
    y = apply_fn(params, X1)
    # output position (0, 0) sees the input window at (0, 0) through its own weights only
    patch = X1[:, 0:3, 0:2, :].transpose(0, 3, 1, 2).reshape(2, -1)   # XLA's (c, h, w) order
    want = patch @ w[0, 0] * 1.3 / np.sqrt(2 * 3 * 2) + 0.2 * b[0, 0, 0][None]
    np.testing.assert_allclose(y[:, 0, 0], want, rtol=1e-10)
    with pytest.raises(ShapeError, match='dimension_numbers'):
        stax.ConvLocal(4, (2,))[2](X1, None, 'nngp')


def test_monte_carlo_agreement():
    x1, x2 = RNG.randn(2, 5, 2), RNG.randn(3, 5, 2)
    net = stax.serial(stax.ConvLocal(64, (2,), padding='SAME', W_std=1.3, b_std=0.1), stax.Relu(),
                      stax.ConvLocal(64, (3,), strides=(2,), padding='CIRCULAR', W_std=1.2,
                                     b_std=0.2), stax.Relu(), stax.Dense(32, 1.0, 0.1))
    assert_monte_carlo_agrees(net, x1, x2, n_samples=48)
