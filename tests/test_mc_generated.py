"""Hypothesis-generated architectures (random depth, activations and parameters, residual and
concat blocks, both parameterizations) against Monte-Carlo finite networks of width 512.

The NNGP is checked on generated deep nets (forward passes only); every rule's NTK is checked
on its one-hidden-layer case in test_mc_cases.py (the empirical NTK of 512 x 512 layers is too
slow for CI).  Failing examples print as `ntc.stax` code."""

import os

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from ntc.testing import check_against_monte_carlo
from ntc.testing import strategies as s
from ntc.testing.layer import example_inputs

# Deep generated nets at width 512 take minutes on CPU: they run under NTC_HYPOTHESIS=thorough;
# CI checks every rule through test_mc_cases.py and the generated DAGs against the reference.
pytestmark = pytest.mark.skipif(os.environ.get('NTC_HYPOTHESIS') != 'thorough',
                                reason='slow: NTC_HYPOTHESIS=thorough')

# nonlinearities whose finite-width samples are light-tailed enough for a 64-sample z-test
SMOOTH = ('Relu', 'LeakyRelu', 'ABRelu', 'Abs', 'Erf', 'Sigmoid_like', 'Gelu', 'Sin', 'Cos',
          'Rbf', 'Sign', 'Gabor', 'Hermite')


@settings(max_examples=settings().max_examples // 4 or 1)
@given(net=s.dense_nets(max_depth=2, kinds=SMOOTH))
def test_generated_dense_nets_match_monte_carlo(net):
    note(f'net = {net.code()}')
    x1, x2 = example_inputs((-1, 5))
    check_against_monte_carlo(net, x1, x2, width=512, n_samples=64, get='nngp').assert_ok()


@settings(max_examples=settings().max_examples // 6 or 1)
@given(arch=s.conv_nets(spatial=(4,), max_depth=1, kinds=SMOOTH,
                        heads=('flatten', 'gap', 'avgpool')), seed=st.integers(0, 9))
def test_generated_conv_nets_match_monte_carlo(arch, seed):
    net, shape = arch
    note(f'net = {net.code()}')
    x1, x2 = example_inputs(shape, 2, 1, seed)
    check_against_monte_carlo(net, x1, x2, width=256, n_samples=64, get='nngp').assert_ok()
