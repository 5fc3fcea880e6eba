"""`roll_loops`: runs of identical layers run as one `lax.scan`, with the same kernels as the
unrolled program (float64 round-off), in a program that does not grow with depth.
`benchmarks/` and `../shared/bench` measure the speed and compile-time effect."""

import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import spec, stax
from ntc.ir.graph import Graph
from ntc.passes.roll_loops import loops


def conv_stack(depth, top):
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(2, (3, 3), padding='SAME', W_std=1.4, b_std=0.1), stax.Relu()]
    return stax.serial(*layers, top)


def wrn_block(ch):
    main = stax.serial(stax.Relu(), stax.Conv(ch, (3, 3), padding='SAME'), stax.Relu(),
                       stax.Conv(ch, (3, 3), padding='SAME'))
    return stax.serial(stax.FanOut(2), stax.parallel(main, stax.Identity()), stax.FanInSum())


def mismatch_block(ch):
    """A WideResNet block with a Conv shortcut: its main branch is
    two (Relu, Conv) pairs (strides spelt (1, 1) in one and left out in the other)."""
    main = stax.serial(stax.Relu(), stax.Conv(ch, (3, 3), (1, 1), padding='SAME'), stax.Relu(),
                       stax.Conv(ch, (3, 3), padding='SAME'))
    shortcut = stax.Conv(ch, (3, 3), padding='SAME')
    return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())


NETS = {
    'fc': (stax.serial(*[stax.Dense(16, 1.5, 0.2), stax.Erf()] * 5, stax.Dense(1)), (3, 5)),
    'conv_flatten': (conv_stack(5, stax.Flatten()), (3, 5, 4, 2)),
    'conv_pool': (conv_stack(4, stax.GlobalAvgPool()), (2, 4, 3, 2)),
    'residual': (stax.serial(stax.Conv(3, (3, 3), padding='SAME'), *[wrn_block(3)] * 3,
                             stax.GlobalAvgPool(), stax.Dense(2)), (2, 4, 4, 2)),
    'branch': (stax.serial(stax.Conv(3, (3, 3), padding='SAME'), mismatch_block(3),
                           mismatch_block(4), mismatch_block(4), stax.Relu(),
                           stax.GlobalAvgPool(), stax.Dense(2)),
               (2, 4, 4, 2)),
    'layernorm': (stax.serial(stax.Dense(8), *[stax.serial(stax.Dense(8), stax.LayerNorm(),
                                                           stax.Gelu())] * 4, stax.Dense(1)),
                  (3, 6)),
}


def kernels(net, x1, x2, roll):
    plan = ntc.compile(net, x1.shape, ('nngp', 'ntk', 'cov1', 'cov2'), roll_loops=roll,
                       dtype=jnp.float64)
    return plan, plan(x1, x2)


@pytest.mark.parametrize('name', NETS)
def test_rolled_plans_equal_unrolled_ones(name):
    net, shape = NETS[name]
    rs = np.random.RandomState(0)
    x1, x2 = rs.randn(*shape), rs.randn(2, *shape[1:])
    rolled_plan, rolled = kernels(net, x1, x2, True)
    flat_plan, flat = kernels(net, x1, x2, False)
    assert loops(rolled_plan.graph) and not loops(flat_plan.graph)
    for a, b in zip(rolled, flat):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # x2 = None (the symmetric kernel) too
    for a, b in zip(rolled_plan(x1), flat_plan(x1)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_conv_stack_rolls_into_conv_relu_iterations():
    """21 × (Conv, Relu) + Flatten: the first Conv (3 input channels) differs; after it,
    iterations end at the Relu, the expensive value, so the loop carry stores it and the next
    Conv's stencil reads it from memory.  The last Relu needs no marginals after it, but rolls
    too, carrying the first iteration's (explain shows var=DIAG on it)."""
    plan = ntc.compile(conv_stack(21, stax.Flatten()), (4, 8, 8, 3))
    (lp,) = loops(plan.graph)
    kinds = [plan.graph.node(i).op.kind for i in lp.body]
    assert kinds == ['Conv', 'Relu'] and lp.n == 20
    assert plan.graph.node(lp.exit).path == 'serial[41].Relu'
    assert plan.graph.node(lp.exit).cov.marginal == 'DIAG'
    assert 'loops 1 (20 × 2 nodes)' in plan.explain()
    assert '[loop0.0]' in plan.explain() and '[loop0.19]' in plan.explain()


def test_residual_blocks_roll_as_one_body():
    """Three identical residual blocks are one loop of three iterations, the last block
    included: it needs no marginals after it (GlobalAvgPool reads none) and carries the first
    block's, so its layouts match."""
    net, shape = NETS['residual']
    plan = ntc.compile(net, shape)
    (lp,) = loops(plan.graph)
    kinds = [plan.graph.node(i).op.kind for i in lp.body]
    assert lp.n == 3 and kinds.count('Conv') == 2 and kinds[-1] == 'FanInSum'
    unrolled = ntc.compile(net, shape, roll_loops=False)
    assert unrolled.graph.node(lp.exit).cov.marginal is None
    assert plan.graph.node(lp.exit).cov.marginal == 'DIAG'


def test_a_residual_branch_rolls_its_relu_conv_pairs():
    """Blocks that differ (in width) are not a loop, but where a block keeps its width, the
    chain of two (Relu, Conv) pairs in its main branch is: one scan per such branch, whose
    entry is the block's input (read by the shortcut too) and whose exit feeds the FanInSum."""
    net, shape = NETS['branch']
    plan = ntc.compile(net, shape)
    lps = loops(plan.graph)
    assert len(lps) == 2
    for lp in lps:
        assert [plan.graph.node(i).op.kind for i in lp.body] == ['Relu', 'Conv'] and lp.n == 2
        assert len(plan.graph.consumers(lp.entry)) == 2
        assert [plan.graph.node(c).op.kind for c, _ in plan.graph.consumers(lp.exit)] == [
            'FanInSum']
    assert 'loops 2 (2 × 2 nodes, 2 × 2 nodes)' in plan.explain()


def test_layers_that_differ_are_not_rolled():
    net = stax.serial(*[stax.serial(stax.Dense(8, w), stax.Relu()) for w in (1.0, 1.1, 1.2)])
    assert not loops(ntc.compile(net, (2, 4)).graph)
    assert not loops(ntc.compile(conv_stack(3, stax.Flatten()), (2, 5, 5, 2),
                                 reference=True).graph)


def test_program_size_does_not_grow_with_depth():
    x = np.random.RandomState(1).randn(2, 6, 6, 1)

    def program(depth):
        plan = ntc.compile(conv_stack(depth, stax.Flatten()), x.shape)
        return plan.fn.lower(x, None).as_text()

    small, large = program(6), program(60)
    assert abs(len(small) - len(large)) < 40  # only the trip count differs


def test_masked_inputs_run_unrolled_with_the_same_result():
    net, shape = NETS['conv_flatten']
    x = np.random.RandomState(2).randn(*shape)
    x[0, 1, :, :] = 0.5
    kf = net.kernel_fn
    rolled = kf(x, None, 'nngp', mask_constant=0.5)
    plan = ntc.compile(net, shape, 'nngp', roll_loops=False, dtype=jnp.float64)
    np.testing.assert_allclose(rolled, plan(x, None, mask_constant=0.5), rtol=1e-12)


def test_loop_marks_survive_the_graph_dict_round_trip():
    plan = ntc.compile(NETS['fc'][0], (2, 5))
    g = plan.graph
    assert Graph.from_dict(g.to_dict()) == g
    assert spec.dump(NETS['fc'][0])  # the net itself is unchanged by rolling


def test_the_verifier_rejects_corrupted_loop_marks():
    from ntc.passes.verify import problems
    plan = ntc.compile(conv_stack(5, stax.Flatten()), (2, 5, 5, 2))
    g = plan.graph.copy()
    (lp,) = loops(g)
    assert not problems(g)
    last = max(lp.members, key=g.order().index)
    g.replace(last, op=stax.Erf().graph().node(1).op)  # iteration n-1 now differs
    assert any('differs from iteration 0' in p for p in problems(g))
