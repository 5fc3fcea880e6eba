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
from ntc.covariance.xp import _ATAN32_Q, JNP
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
    # DIAG cross kernels and marginals: one pad and 9 taps per array (nngp, cov1, cov2; the
    # first conv's ntk is d·A(K) + e, nngp's own stencil), one XLA fusion each, instead of a pad
    # and 3 taps per spatial axis
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), stax.Flatten())
    plan = ntc.compile(net, (-1, 5, 5, 3), get=('nngp', 'ntk'))
    assert 'stencil 1 pass, 9 taps' in plan.explain()
    x1, x2 = np.ones((2, 5, 5, 3)), np.ones((3, 5, 5, 3))
    assert _count(plan.fn, x1, x2, prim='pad') == 3  # 6 one axis at a time


def _fusions_with(fn, *args, needle: str) -> int:
    """How many fused computations of XLA's optimised program for `fn(*args)` contain
    `needle` (each distinct one is a kernel XLA compiles)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    comps = text.split('\n%')
    return sum(needle in c for c in comps if c.startswith('fused'))


ARC_COSINE = str(_ATAN32_Q[0])[:9]  # the atan polynomial's leading coefficient, in float32


def _conv():
    return stax.Conv(4, (3, 3), padding='SAME')


def test_stencils_read_a_stored_padded_copy_of_their_input():
    # (Conv, Relu) × 2 + Conv rolls into one loop; each stencil's taps all read its stored
    # padded input, so the Relu's arc-cosine is in one kernel per padded array (nngp, ntk);
    # with the centre tap read from the unpadded input, XLA recomputed it in each stencil (4)
    net = stax.serial(_conv(), stax.Relu(), _conv(), stax.Relu(), _conv(), stax.GlobalAvgPool())
    plan = ntc.compile(net, (-1, 6, 6, 3), get=('nngp', 'ntk'))
    assert plan.explain().count('9 taps, stored pad') == 3
    x1, x2 = np.ones((2, 6, 6, 3), np.float32), np.ones((3, 6, 6, 3), np.float32)
    assert _fusions_with(plan.fn, x1, x2, needle=ARC_COSINE) == 2


@pytest.mark.parametrize('tail', ['gap', 'residual'])
def test_a_stencil_before_a_spatial_reduction_reads_its_input_unpadded(tail):
    # XLA's reduction fusion takes no slices: each tap of the last stencil is a kernel of its
    # own, and with a stored padded copy each would recompute the Relu (18 kernels, not 1)
    shortcut = stax.serial(stax.FanOut(2), stax.parallel(stax.serial(stax.Relu(), _conv()),
                                                         stax.Identity()), stax.FanInSum())
    body = [stax.Relu(), _conv()] if tail == 'gap' else [shortcut]
    net = stax.serial(_conv(), *body, stax.GlobalAvgPool())
    plan = ntc.compile(net, (-1, 6, 6, 3), get=('nngp', 'ntk'))
    assert 'stored pad' not in plan.explain().split('\n')[5]  # %3, the second Conv
    x1, x2 = np.ones((2, 6, 6, 3), np.float32), np.ones((3, 6, 6, 3), np.float32)
    assert _fusions_with(plan.fn, x1, x2, needle=ARC_COSINE) == 1


def test_a_stencil_tap_is_one_slice():
    # tracing and lowering cost per equation: each of the 9 taps slices every axis at once
    # (3 arrays: nngp, cov1, cov2 of a DIAG conv; its ntk reuses nngp's stencil), not one
    # slice per axis
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), stax.Flatten())
    plan = ntc.compile(net, (-1, 5, 5, 3), get=('nngp', 'ntk'))
    x1, x2 = np.ones((2, 5, 5, 3)), np.ones((3, 5, 5, 3))
    assert _count(plan.fn, x1, x2, prim='slice') == 3 * 9


def test_the_arc_cosine_traces_without_nested_calls():
    # jnp.where and jnp.signbit trace as nested jit calls, each lowered to a function of its
    # own; the kernels' guards and atan2 use plain selects
    c = np.linspace(-1.0, 1.0, 7)
    text = str(jax.make_jaxpr(lambda v: ACTIVATIONS['Relu'].kernel(JNP, None, v, v + 2, v + 3))(c))
    assert 'jit' not in text and ' select_n' in text
