"""What keeps XLA's compile time down: the size of the program ntc hands it.

XLA's CPU backend compiles one kernel per distinct fusion, and the compile time of a network
such as the small WideResNet is almost all kernel generation, so these tests count what the
lowered program contains instead of timing it.
"""

import jax
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.covariance.xp import JNP
from ntc.layers.activations import ACTIVATIONS
from ntc.lower.lower import block_shape


def _count(fn, *args, prim: str) -> int:
    """Occurrences of primitive `prim` in the jaxpr of `fn(*args)`, nested bodies included."""
    text = str(jax.make_jaxpr(fn)(*args))
    return text.count(f' {prim} ') + text.count(f' {prim}[')


@pytest.mark.parametrize('kind,op', [
    ('Relu', stax.Relu()), ('ABRelu', stax.ABRelu(-0.3, 1.7)),
    ('LeakyRelu', stax.LeakyRelu(0.2)), ('Abs', stax.Abs())])
def test_closed_form_variance_is_the_kernel_on_the_diagonal_bitwise(kind, op):
    (node_op,) = [n.op for n in op.graph().nodes() if n.op.kind == kind]
    q = np.abs(np.random.RandomState(0).randn(5, 7)) * np.array([0.0, 1e-30, 1, 1e3, 3e10])[:, None]
    rule = ACTIVATIONS[kind]
    general = rule.kernel(JNP, node_op, q, q, q)[0]
    np.testing.assert_array_equal(rule.variance(JNP, node_op, q), general)


def test_diag_marginals_skip_the_arc_cosine():
    # x1 and x2 differ: the plan carries both examples' per-position variances; only the cross
    # kernel needs the arc-cosine (one sqrt per Relu), the marginals map through q/2
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                      stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), stax.Flatten())
    plan = ntc.compile(net, (-1, 5, 5, 3), get=('nngp', 'ntk'))
    x1, x2 = np.ones((2, 5, 5, 3)), np.ones((3, 5, 5, 3))
    assert 'loops 0' in plan.explain()
    assert _count(plan.fn, x1, x2, prim='sqrt') == 2  # 6 with the general formula


def test_pair_blocks_prefer_equal_sides_so_both_marginals_share_one_shape():
    # 16 pairs either way; 4 × 4 gives x1's and x2's marginals in a block one shape (XLA then
    # compiles their fusions once) and recomputes 8 examples' marginals per block instead of 10
    assert block_shape(8, 8, 21, square=False) == (4, 4)
    assert block_shape(6, 4, 8, square=False) == (2, 4)  # more pairs win over equal sides
    assert block_shape(4, 4, 2, square=False) == (1, 2)


def test_a_conv_of_per_position_variances_is_one_pass():
    # DIAG cross kernels and marginals: one pad and 9 taps per array (nngp, ntk, cov1, cov2),
    # one XLA fusion each, instead of a pad and 3 taps per spatial axis
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), stax.Flatten())
    plan = ntc.compile(net, (-1, 5, 5, 3), get=('nngp', 'ntk'))
    assert 'stencil 1 pass, 9 taps' in plan.explain()
    x1, x2 = np.ones((2, 5, 5, 3)), np.ones((3, 5, 5, 3))
    assert _count(plan.fn, x1, x2, prim='pad') == 4  # 8 one axis at a time
