"""KernelPlan.symbolic(): closed-form kernels as sympy expressions, checked against numbers."""

import numpy as np
import pytest
import sympy

import ntc
from ntc import stax
from ntc.errors import NoClosedFormError
from ntc.lower.symbolic import K11, K12, K22

NETS = {
    'relu': stax.serial(stax.Dense(8, 1.3, 0.2), stax.Relu(), stax.Dense(1, 0.9, 0.1)),
    'erf_standard': stax.serial(stax.Dense(8, 1.1, 0.3, parameterization='standard'), stax.Erf(),
                                stax.Dense(1, 1.2, parameterization='standard')),
    'deep_mixed': stax.serial(stax.Dense(8, 1.5, 0.05), stax.Erf(), stax.Dense(8, 1.2),
                              stax.Gelu(), stax.Dense(8), stax.LayerNorm(), stax.Sin(),
                              stax.Dense(1)),
    'residual_concat': stax.serial(
        stax.Dense(8, 1.1, 0.1), stax.FanOut(2),
        stax.parallel(stax.serial(stax.Relu(), stax.Dense(8)), stax.Identity()), stax.FanInSum(),
        stax.FanOut(2), stax.parallel(stax.serial(stax.Erf(), stax.Dense(4)), stax.Dense(6)),
        stax.FanInConcat(), stax.Dense(1)),
}


@pytest.mark.parametrize('name', sorted(NETS))
def test_symbolic_kernels_equal_the_numeric_ones(name):
    net = NETS[name]
    sk = ntc.compile(net, (-1, 4)).symbolic()
    rng = np.random.RandomState(3)
    for _ in range(3):
        x1, x2 = rng.randn(1, 4), rng.randn(1, 4)
        k11, k12, k22 = (float((a @ b.T / 4)[0, 0]) for a, b in ((x1, x1), (x1, x2), (x2, x2)))
        nngp, ntk = sk.evaluate(k11, k12, k22)
        num = net.kernel_fn(x1, x2, ('nngp', 'ntk'))
        np.testing.assert_allclose([nngp, ntk], [float(num.nngp[0, 0]), float(num.ntk[0, 0])],
                                   rtol=1e-9)


def test_symbolic_expressions_are_in_the_inputs_and_hyperparameters():
    sk = ntc.compile(NETS['relu'], (-1, 4)).symbolic()
    free = {str(s) for s in sk.nngp.free_symbols}
    assert {'k11', 'k12', 'k22', 'sigma_w1', 'sigma_b1', 'sigma_w2', 'sigma_b2'} <= free
    assert sk.params[sympy.Symbol('sigma_w1', positive=True)] == 1.3
    tex = sk.latex()
    assert r'\sigma_{w1}' in tex and r'\Theta' in tex


def test_one_dense_layer_is_the_textbook_affine_kernel():
    sk = ntc.compile(stax.Dense(1, 1.5, 0.5), (-1, 4)).symbolic().with_params()
    assert sympy.simplify(sk.nngp - (2.25 * K12 + 0.25)) == 0
    assert sympy.simplify(sk.ntk - (2.25 * K12 + 0.25)) == 0
    assert not ({K11, K22} & sk.nngp.free_symbols)


def test_no_symbolic_form_for_spatial_or_user_functions():
    conv = stax.serial(stax.Conv(2, (3, 3)), stax.Relu())
    with pytest.raises(NoClosedFormError, match='spatial'):
        ntc.compile(conv, (-1, 5, 5, 2)).symbolic()
    user = stax.serial(stax.Dense(2), stax.ElementwiseNumerical(np.tanh, 10))
    with pytest.raises(NoClosedFormError):
        ntc.compile(user, (-1, 3)).symbolic()
