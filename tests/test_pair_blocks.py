"""Pair blocks: the plan's choice of computing the kernel one block of example pairs at a time
(all layers of a block in cache), and its equality with the whole-batch computation."""

import re

import jax
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.lower.lower import block_shape, lower


def conv_gap(extra=()):
    return stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), *extra,
                       stax.Conv(4, (3, 3), (2, 1), padding='CIRCULAR'), stax.Erf(),
                       stax.AvgPool((2, 2)), stax.Conv(4, (2, 2)), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1))


def test_block_shape_divides_the_batch_and_fits_the_budget():
    assert block_shape(6, 4, 8, square=False) == (2, 4)
    assert block_shape(5, 5, 3, square=False) == (1, 1)
    assert block_shape(6, 6, 9, square=True) == (3, 3)
    b1, b2 = block_shape(12, 8, 20, square=False)
    assert 12 % b1 == 0 and 8 % b2 == 0 and b1 * b2 <= 20


@pytest.mark.parametrize('extra', [(), (stax.Dropout(0.7),)], ids=['plain', 'dropout'])
@pytest.mark.parametrize('same', [False, True], ids=['x1_x2', 'x2_none'])
@pytest.mark.parametrize('pairs', [1, 4])
def test_blocked_equals_whole_batch(extra, same, pairs):
    rng = np.random.RandomState(0)
    x1, x2 = rng.randn(4, 6, 5, 3), rng.randn(2, 6, 5, 3)
    x2 = None if same else x2
    plan = ntc.compile(conv_gap(extra), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    whole = lower(plan.graph, plan.opts)(x1, x2)
    blocked = lower(plan.graph, plan.opts, pair_block=pairs)(x1, x2)
    for name in ('nngp', 'ntk'):
        np.testing.assert_allclose(blocked[name], whole[name], rtol=1e-12, atol=1e-14)


def test_the_plan_blocks_large_spatial_pairs_only():
    full = ntc.compile(conv_gap(), (-1, 16, 16, 3))
    assert full.pair_block is not None and full.pair_block >= 1
    assert 'pair blocks:' in full.explain()
    # one block's peak plus the output, instead of every pair's covariances at once
    assert full.peak_bytes(64, 64) < 0.1 * full.total('live', 64, 64)
    flat = ntc.compile(stax.serial(stax.Conv(4, (3, 3)), stax.Relu(), stax.Flatten()),
                       (-1, 16, 16, 3))
    assert flat.pair_block is None  # DIAG covariances: a few bytes per pair
    with_marginals = ntc.compile(conv_gap(), (-1, 16, 16, 3), get=('nngp', 'cov1'))
    assert with_marginals.pair_block is None


def test_conv_stencils_are_one_pass_in_the_plan():
    text = ntc.compile(conv_gap(), (-1, 8, 8, 3)).explain()
    assert 'stencil 1 pass, 9 taps' in text and 'stencil 1 pass, 4 taps' in text


def conv_spatial():
    # the output keeps FULL spatial covariances: a mirrored block swaps each (s, s') pair too
    return stax.serial(stax.Conv(4, (3, 2), padding='SAME'), stax.Relu(),
                       stax.Conv(4, (2, 3), (1, 2), padding='CIRCULAR'), stax.Erf())


@pytest.mark.parametrize('net', [conv_gap, conv_spatial], ids=['gap', 'spatial'])
@pytest.mark.parametrize('second', ['none', 'equal', 'other'])
def test_symmetric_inputs_compute_the_upper_blocks_only(net, second):
    rng = np.random.RandomState(1)
    x1 = rng.randn(6, 6, 5, 3)
    x2 = {'none': None, 'equal': x1.copy(), 'other': x1 + 0.1 * rng.randn(*x1.shape)}[second]
    plan = ntc.compile(net(), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    whole = lower(plan.graph, plan.opts)(x1, x2)
    blocked = lower(plan.graph, plan.opts, pair_block=4)(x1, x2)  # 3 × 3 blocks of 2 × 2
    for name in ('nngp', 'ntk'):
        assert blocked[name].shape == whole[name].shape
        np.testing.assert_allclose(blocked[name], whole[name], rtol=1e-12, atol=1e-14)


def test_equal_inputs_run_fewer_blocks():
    # x2 equal to x1 (a run-time test inside the jitted function): 6 of the 9 blocks, the
    # diagonal ones as x-with-itself blocks; x2 None likewise, with no test at all
    plan = ntc.compile(conv_gap(), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    fn = lower(plan.graph, plan.opts, pair_block=4)
    x = np.ones((6, 6, 5, 3))
    text = jax.make_jaxpr(fn)(x, x).pretty_print()
    assert 'cond[' in text
    trips = sorted(int(t) for t in re.findall(r'length=(\d+)', text))
    assert trips.count(3) >= 2 and 9 in trips  # diagonal 3 + upper 3; every block 9
    text_none = jax.make_jaxpr(fn)(x, None).pretty_print()
    assert 'cond[' not in text_none
    assert 9 not in [int(t) for t in re.findall(r'length=(\d+)', text_none)]


def test_symmetric_blocks_split_a_batch_that_fits_one_block():
    # K(x, x) of a batch within one block's budget still runs as square blocks, if each holds
    # the plan's least pairs; not when they would be smaller
    from ntc.lower.lower import symmetric_block
    assert symmetric_block(4, most=24, least=4) == 2
    assert symmetric_block(8, most=256, least=43) is None
    assert symmetric_block(6, most=4, least=1) == 2
    assert symmetric_block(2, most=1, least=1) == 1
    plan = ntc.compile(conv_gap(), (-1, 16, 16, 3), get=('nngp', 'ntk'))
    assert plan.least_pairs >= 1 and 'on and above the diagonal' in plan.explain()


def test_one_example_with_itself_computes_no_separate_marginal(monkeypatch):
    # K(x, x) of one example with FULL marginals: cov1 is nngp[0], so XLA drops the marginal's
    # own arithmetic (a mirrored block's diagonal blocks of one example each)
    from ntc.lower import lower as lowering
    plan = ntc.compile(conv_gap(), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    x = np.random.RandomState(2).randn(1, 6, 5, 3)

    def run():
        fn = jax.jit(lambda a: lowering.to_user(
            lowering.evaluate(plan.graph, plan.opts, a, None)[0], plan.opts))
        analysis = fn.lower(x).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return analysis['flops'], fn(x)
    flops, out = run()
    monkeypatch.setattr(lowering, '_one_example_full', lambda k: False)
    flops_computed, ref = run()
    assert flops < 0.8 * flops_computed
    for name in ('nngp', 'ntk'):
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-12, atol=1e-14)
