"""Pair blocks: the plan's choice of computing the kernel one block of example pairs at a time
(all layers of a block in cache), and its equality with the whole-batch computation."""

import re

import jax
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.lower.lower import SymmetricSplit, block_shape, lower, symmetric_split
from ntc.passes.cost import PairBlocks


def conv_gap(extra=()):
    return stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), *extra,
                       stax.Conv(4, (3, 3), (2, 1), padding='CIRCULAR'), stax.Erf(),
                       stax.AvgPool((2, 2)), stax.Conv(4, (2, 2)), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1))


def blocks(most: int, split: str) -> PairBlocks:
    """The plan's pair blocks of ≤ `most` pairs, with K(x, x) split pair by pair ('pairs': free
    marginals) or in square blocks ('square': marginals dearer than pairs)."""
    return PairBlocks(most=most, least=1, marginal_share={'pairs': 0.0, 'square': 100.0}[split])


def test_block_shape_divides_the_batch_and_fits_the_budget():
    assert block_shape(6, 4, 8, square=False) == (2, 4)
    assert block_shape(5, 5, 3, square=False) == (1, 1)
    assert block_shape(6, 6, 9, square=True) == (3, 3)
    b1, b2 = block_shape(12, 8, 20, square=False)
    assert 12 % b1 == 0 and 8 % b2 == 0 and b1 * b2 <= 20


@pytest.mark.parametrize('extra', [(), (stax.Dropout(0.7),)], ids=['plain', 'dropout'])
@pytest.mark.parametrize('same', [False, True], ids=['x1_x2', 'x2_none'])
@pytest.mark.parametrize('pairs', [1, 4])
@pytest.mark.parametrize('split', ['pairs', 'square'])
def test_blocked_equals_whole_batch(extra, same, pairs, split):
    rng = np.random.RandomState(0)
    x1, x2 = rng.randn(4, 6, 5, 3), rng.randn(2, 6, 5, 3)
    x2 = None if same else x2
    plan = ntc.compile(conv_gap(extra), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    whole = lower(plan.graph, plan.opts)(x1, x2)
    blocked = lower(plan.graph, plan.opts, blocks(pairs, split))(x1, x2)
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
@pytest.mark.parametrize('split', ['pairs', 'square'])
def test_symmetric_inputs_compute_the_distinct_pairs_only(net, second, split):
    rng = np.random.RandomState(1)
    x1 = rng.randn(6, 6, 5, 3)
    x2 = {'none': None, 'equal': x1.copy(), 'other': x1 + 0.1 * rng.randn(*x1.shape)}[second]
    plan = ntc.compile(net(), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    whole = lower(plan.graph, plan.opts)(x1, x2)
    # 21 pairs in 6 chunks of 4, or 6 of 3 × 3 square blocks of 2 × 2
    blocked = lower(plan.graph, plan.opts, blocks(4, split))(x1, x2)
    for name in ('nngp', 'ntk'):
        assert blocked[name].shape == whole[name].shape
        np.testing.assert_allclose(blocked[name], whole[name], rtol=1e-12, atol=1e-14)


def test_equal_inputs_run_fewer_blocks():
    # x2 equal to x1 (a run-time test inside the jitted function): 6 of the 9 blocks, the
    # diagonal ones as x-with-itself blocks; x2 None likewise, with no test at all
    plan = ntc.compile(conv_gap(), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    fn = lower(plan.graph, plan.opts, blocks(4, 'square'))
    x = np.ones((6, 6, 5, 3))
    text = jax.make_jaxpr(fn)(x, x).pretty_print()
    assert 'cond[' in text
    trips = sorted(int(t) for t in re.findall(r'length=(\d+)', text))
    assert trips.count(3) >= 2 and 9 in trips  # diagonal 3 + upper 3; every block 9
    text_none = jax.make_jaxpr(fn)(x, None).pretty_print()
    assert 'cond[' not in text_none
    assert 9 not in [int(t) for t in re.findall(r'length=(\d+)', text_none)]


def test_equal_inputs_pair_by_pair_run_the_distinct_pairs():
    # 6 examples: the 21 distinct pairs in 6 chunks of 4 (the last filled up), not 36 pairs
    plan = ntc.compile(conv_gap(), (-1, 6, 5, 3), get=('nngp', 'ntk'))
    fn = lower(plan.graph, plan.opts, blocks(4, 'pairs'))
    x = np.ones((6, 6, 5, 3))
    for second in (x, None):
        text = jax.make_jaxpr(fn)(x, second).pretty_print()
        assert ('cond[' in text) == (second is not None)
        assert 6 in [int(t) for t in re.findall(r'length=(\d+)', text)]


def test_pairs_keep_the_diagonal_exact():
    # K(x_i, x_i) as a cross block of one example by one: its marginals equal its diagonal to
    # round-off, so the Relu's correlation is 1 there (a few ulp off, the derivative kernel's
    # √ singularity at 1 would make that ~1e-4)
    plan = ntc.compile(conv_gap(), (-1, 6, 5, 16), get=('nngp', 'ntk'))
    x = np.random.RandomState(3).randn(5, 6, 5, 16).astype(np.float32)
    whole = lower(plan.graph, plan.opts)(x, None)
    pairs = lower(plan.graph, plan.opts, blocks(4, 'pairs'))(x, None)
    for name in ('nngp', 'ntk'):
        np.testing.assert_allclose(np.diag(pairs[name]), np.diag(whole[name]), rtol=5e-7)
        np.testing.assert_allclose(pairs[name], whole[name], rtol=2e-6)


def test_symmetric_split_takes_the_fewest_flops():
    cheap = PairBlocks(most=24, least=4, marginal_share=0.002)  # 21-layer CNN + GAP, 16×16
    assert symmetric_split(4, cheap) == SymmetricSplit(pairs=10)  # 10 of 16 pairs
    assert symmetric_split(8, cheap) == SymmetricSplit(pairs=18)  # 36 pairs in 2 chunks
    assert symmetric_split(1, cheap) is None
    # marginals half a pair (a Myrtle net's FULL ones), one pair per block: 2 + 1 square
    # blocks (the diagonal ones with one marginal each) beat 3 pairs with two each
    dear = PairBlocks(most=1, least=1, marginal_share=0.5)
    assert symmetric_split(2, dear) == SymmetricSplit(side=1)
    # marginals as dear as pairs: the whole batch where it fits (16 + 4 against 10·3 pairs and
    # 20 in 2 × 2 blocks: a tie goes to fewer pieces), else square blocks
    assert symmetric_split(4, PairBlocks(most=64, least=4, marginal_share=1.0)) is None
    assert symmetric_split(4, PairBlocks(most=8, least=4, marginal_share=1.0)) == \
        SymmetricSplit(side=2)


def test_a_plan_too_large_to_compile_twice_keeps_a_batch_that_fits_one_block_whole():
    # x2 equal to x1 would compile the split and the whole batch; x2 None compiles one
    plan = ntc.compile(conv_gap(), (-1, 16, 16, 3), get=('nngp', 'ntk'))
    fn = lower(plan.graph, plan.opts, PairBlocks(most=64, least=1, split_whole=False))
    x = np.ones((4, 16, 16, 3), np.float32)
    assert 'cond[' not in jax.make_jaxpr(fn)(x, x).pretty_print()
    assert 'cond[' in jax.make_jaxpr(lower(plan.graph, plan.opts, PairBlocks(64, 1)))(
        x, x).pretty_print()
    # nor a batch of fewer pairs than a square block's least: too little work to save
    small = lower(plan.graph, plan.opts, PairBlocks(most=64, least=17))
    assert 'cond[' not in jax.make_jaxpr(small)(x, x).pretty_print()


def test_explain_names_the_split():
    # per-position marginals (Conv, Relu, GAP): pair by pair; FULL ones (AvgPool): square blocks
    plain = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                        stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), stax.GlobalAvgPool())
    plan = ntc.compile(plain, (-1, 16, 16, 3), get=('nngp', 'ntk'))
    assert plan.pair_blocks is not None and 'on and above the diagonal' in plan.explain()
    assert '4 examples: 10 pairs in 1 chunk of 10' in plan.explain(4, 4)
    pooled = ntc.compile(conv_gap(), (-1, 16, 16, 3), get=('nngp', 'ntk'))
    assert '4 examples: 3 of 2 × 2 square blocks of 2 examples per side' in pooled.explain(4, 4)


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
