"""Layouts and transposes of spatial plans, and bad spatial inputs."""

import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import ShapeError


def conv_stack(top, depth=3, padding='SAME'):
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(4, (3, 3), padding=padding), stax.Relu()]
    return stax.serial(*layers, *top)


def layouts(plan):
    return {n.path: n.cov.spatial for n in plan.graph.nodes()}


def test_flatten_head_keeps_every_value_diag_and_needs_no_transpose():
    plan = ntc.compile(conv_stack([stax.Flatten(), stax.Dense(1)]), (-1, 8, 8, 3))
    spatial = [n.cov.spatial for n in plan.graph.nodes() if n.ttype.spatial_axes]
    assert spatial and set(spatial) == {'DIAG'}
    assert plan.transposes == 0
    assert 'sp=DIAG' in plan.explain() and 'sp=FULL' not in plan.explain()


def test_global_pool_head_needs_full_layouts():
    plan = ntc.compile(conv_stack([stax.GlobalAvgPool(), stax.Dense(1)]), (-1, 8, 8, 3))
    spatial = [n.cov.spatial for n in plan.graph.nodes() if n.ttype.spatial_axes]
    assert set(spatial) == {'FULL'}
    assert plan.transposes == 0
    # the plan stores nonlinearities before the next conv reads them (and the last Relu, rolled
    # into the loop of (Conv, Relu) iterations, runs the same body)
    assert [n.op.kind for n in plan.graph.nodes() if n.materialize] == ['Relu'] * 3
    unrolled = ntc.compile(conv_stack([stax.GlobalAvgPool(), stax.Dense(1)]), (-1, 8, 8, 3),
                           roll_loops=False)
    assert [n.op.kind for n in unrolled.graph.nodes() if n.materialize] == ['Relu', 'Relu']


def test_fan_out_takes_the_strongest_requirement():
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.FanOut(2),
                      stax.parallel(stax.serial(stax.Relu(), stax.Flatten()),
                                    stax.serial(stax.Erf(), stax.GlobalAvgPool())),
                      stax.FanInConcat(), stax.Dense(1))
    plan = ntc.compile(net, (-1, 6, 6, 2))
    lay = layouts(plan)
    assert lay['serial[0].Conv'] == 'FULL'  # GlobalAvgPool's branch wins
    assert lay['serial[2].parallel[0].serial[0].Relu'] == 'DIAG'
    assert lay['serial[2].parallel[1].serial[0].Erf'] == 'FULL'


def test_marginals_are_kept_only_where_read():
    plan = ntc.compile(conv_stack([stax.Flatten(), stax.Dense(1)], depth=2), (-1, 6, 6, 3))
    marg = {n.path: n.cov.marginal for n in plan.graph.nodes()}
    assert marg['serial[2].Conv'] == 'DIAG'  # read by the next Relu
    assert marg['serial[3].Relu'] is None and marg['serial[4].Flatten'] is None


def wrn_block(ch, strides=(1, 1), mismatch=False):
    main = stax.serial(stax.Relu(), stax.Conv(ch, (3, 3), strides, padding='SAME'),
                       stax.Relu(), stax.Conv(ch, (3, 3), padding='SAME'))
    sc = stax.Conv(ch, (3, 3), strides, padding='SAME') if mismatch else stax.Identity()
    return stax.serial(stax.FanOut(2), stax.parallel(main, sc), stax.FanInSum())


@pytest.mark.parametrize('net, shape', [
    (conv_stack([stax.GlobalAvgPool(), stax.Dense(1)], depth=6), (-1, 8, 8, 3)),
    (stax.serial(stax.Conv(8, (3, 3), padding='SAME'), wrn_block(8, mismatch=True), wrn_block(8),
                 wrn_block(16, (2, 2), True), stax.GlobalAvgPool(), stax.Dense(10)),
     (-1, 8, 8, 3)),
    (stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.FanOut(2),
                 stax.parallel(stax.Conv(4, (3, 3), padding='SAME'),
                               stax.Conv(4, (1, 1), padding='SAME')),
                 stax.FanInConcat(axis=1), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)),
     (-1, 6, 6, 3)),
])
def test_conv_stack_wrn_and_spatial_concat_need_no_transposes(net, shape):
    assert ntc.compile(net, shape).transposes == 0


SWAP = ('NHWC', 'HWIO', 'NWHC')  # the output swaps the two spatial axes


def test_a_relabelling_conv_is_absorbed_by_the_input_order():
    # one axis-swapping conv and a spatial output: storing the input covariance in swapped
    # order makes the output come out in the tensor's own order, with no transpose at all
    net = stax.serial(stax.Conv(4, (3, 2), padding='SAME', dimension_numbers=SWAP), stax.Relu(),
                      stax.Conv(4, (3, 3), padding='SAME'))
    plan = ntc.compile(net, (-1, 6, 5, 2))
    assert plan.transposes == 0
    assert plan.graph.node(plan.graph.input_nodes()[0]).cov.axis_order == (1, 0)
    x = np.random.RandomState(1).randn(2, 6, 5, 2)
    ref = ntc.compile(net, (-1, 6, 5, 2), reference=True)
    assert plan(x)[0].shape == (2, 2, 5, 5, 6, 6)
    np.testing.assert_allclose(plan(x)[1], ref(x)[1], rtol=1e-12)


def test_branches_in_different_orders_get_one_transpose():
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.FanOut(2),
                      stax.parallel(stax.Conv(4, (3, 3), padding='SAME', dimension_numbers=SWAP),
                                    stax.Conv(4, (3, 3), padding='SAME')),
                      stax.FanInSum(), stax.GlobalAvgPool(), stax.Dense(1))
    plan = ntc.compile(net, (-1, 6, 6, 2))
    assert plan.transposes == 1
    assert 'Transpose' in plan.explain()
    x = np.random.RandomState(0).randn(3, 6, 6, 2)
    ref = ntc.compile(net, (-1, 6, 6, 2), reference=True)
    np.testing.assert_allclose(plan(x)[0], ref(x)[0], rtol=1e-12)


@pytest.mark.parametrize('net, shape, words', [
    (stax.serial(stax.Conv(2, (5, 5)), stax.Relu()), (-1, 3, 3, 2),
     ['serial[0].Conv', 'filter (5) is larger than the input (3)', "padding='SAME'"]),
    (stax.serial(stax.Conv(2, (3, 3)), stax.Relu()), (-1, 8),
     ['serial[0].Conv', 'spatial axes']),
    (stax.serial(stax.Conv(2, (3, 3)), stax.Flatten(), stax.Conv(2, (1, 1))), (-1, 6, 6, 2),
     ['serial[2].Conv', 'spatial axes']),
    (stax.serial(stax.Conv(2, (3, 3)), stax.AvgPool((8, 8))), (-1, 6, 6, 2),
     ['serial[1].AvgPool', 'window (8) is larger than the input (4)']),
    (stax.serial(stax.Conv(2, (3, 3)), stax.SumPool((2,))), (-1, 6, 6, 2),
     ['serial[1].SumPool', 'one window size per spatial axis']),
])
def test_bad_spatial_inputs_name_the_layer(net, shape, words):
    with pytest.raises(ShapeError) as e:
        net.kernel_fn(np.ones((2,) + shape[1:]))
    for w in words:
        assert w in str(e.value)
