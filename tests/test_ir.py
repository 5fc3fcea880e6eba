"""The IR: op validation, graph building and paths, printing, and exact dict round trips."""

import json
from dataclasses import replace

import pytest

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, ValidationError
from ntc.ir.graph import Graph
from ntc.ir.registry import OPS
from ntc.net import Net


def residual_net():
    return stax.serial(
        stax.Dense(32, 1.1, 0.1),
        stax.FanOut(2), stax.parallel(stax.serial(stax.Relu(), stax.Dense(32)), stax.Identity()),
        stax.FanInSum(),
        stax.FanOut(2), stax.parallel(stax.serial(stax.Erf(), stax.Dense(16)), stax.Dense(8)),
        stax.FanInConcat(), stax.Dense(16), stax.Relu(), stax.Dense(1))


def test_every_registered_op_kind_has_a_model():
    for kind, cls in OPS.items():
        assert cls.__pydantic_complete__  # the model builds
        assert cls.model_fields['op'].default == kind


@pytest.mark.parametrize('build, field', [
    (lambda: stax.Dense(3, W_std=-1.0), 'Dense.W_std'),
    (lambda: stax.Dense(3, b_std=-0.5), 'Dense.b_std'),
    (lambda: stax.Dense(0), 'Dense.out_dim'),
    (lambda: stax.Dense(3, parameterization='weird'), 'Dense.parameterization'),
    (lambda: stax.Dropout(1.5), 'Dropout.rate'),
    (lambda: stax.Dropout(0.5, mode='eval'), 'Dropout.mode'),
    (lambda: stax.FanOut(0), 'FanOut.num'),
    (lambda: stax.Monomial(-1), 'Monomial.degree'),
    (lambda: stax.Rbf(gamma=0.0), 'Rbf.gamma'),
])
def test_invalid_attributes_name_the_field(build, field):
    with pytest.raises(ValidationError) as e:
        build()
    assert field in str(e.value)
    assert isinstance(e.value, ntc.NtcError)


def test_parameterization_is_case_insensitive_like_nt():
    assert stax.Dense(3, parameterization='NTK').op.parameterization == 'ntk'


def test_graph_paths_follow_the_builder_tree():
    g = residual_net().graph()
    paths = [n.path for n in g.nodes()]
    assert paths[:4] == ['input', 'serial[0].Dense', 'serial[2].parallel[0].serial[0].Relu',
                         'serial[2].parallel[0].serial[1].Dense']
    assert 'serial[2].parallel[1].Identity' in paths
    assert 'serial[6].FanInConcat' in paths
    concat = next(n for n in g.nodes() if n.op.kind == 'FanInConcat')
    ins = [g.node(i).path for i in g.inputs(concat.id)]
    assert ins == ['serial[5].parallel[0].serial[1].Dense', 'serial[5].parallel[1].Dense']


def test_graph_dict_round_trip_is_exact_and_json_safe():
    plan = ntc.compile(residual_net(), (-1, 5))
    for g in (residual_net().graph(), plan.graph, plan.source):
        data = json.loads(json.dumps(g.to_dict()))
        assert Graph.from_dict(data) == g
        assert str(Graph.from_dict(data)) == str(g)


def test_graph_prints_readably():
    text = str(stax.serial(stax.Dense(4, 2.0), stax.Relu()).graph())
    assert text.splitlines() == [
        '%0 = Input                                           # input',
        '%1 = Dense(W_std=2, out_dim=4)(%0)                   # serial[0].Dense',
        '%2 = Relu(%1)                                        # serial[1].Relu',
        'return %2']


def test_net_code_rebuilds_the_same_net():
    net = residual_net()
    rebuilt = eval(net.code(), {'stax': stax})  # noqa: S307 (test of our own printer)
    assert rebuilt == net
    assert isinstance(rebuilt, Net)


def test_nets_with_python_functions_refuse_to_dump():
    net = stax.serial(stax.Dense(3), stax.Elementwise(fn=abs, nngp_fn=lambda c, a, b: c))
    with pytest.raises(ntc.NtcError, match='Elementwise.*Python functions'):
        net.graph().to_dict()


def test_net_unpacks_as_nt_triple():
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(3), stax.Relu())
    assert callable(init_fn) and callable(apply_fn) and callable(kernel_fn)


@pytest.mark.parametrize('build, words', [
    (lambda: stax.serial(stax.Dense(3), stax.FanInSum()), ['FanInSum', 'two or more']),
    (lambda: stax.serial(stax.FanOut(2), stax.parallel(stax.Dense(2), stax.Dense(2),
                                                       stax.Dense(2))),
     ['3 branches', '2 value', 'FanOut(3)']),
    (lambda: stax.serial(stax.FanOut(2), stax.Dense(3)), ['serial[1].Dense', 'receives 2']),
    (lambda: stax.serial(stax.FanOut(2), stax.parallel(stax.FanOut(2), stax.Dense(2)),
                         stax.FanInSum()), ['serial[2].FanInSum', 'nested', 'fan-in']),
])
def test_arity_errors_name_the_layer(build, words):
    with pytest.raises(ArchitectureError) as e:
        build().graph()
    for w in words:
        assert w in str(e.value)


def test_raw_nt_layers_are_rejected_clearly():
    with pytest.raises(ArchitectureError, match='ntc.stax'):
        stax.serial(stax.Dense(3), (lambda: 0, lambda: 0, lambda: 0))


def test_a_rebuilt_net_has_its_own_graph():
    """`dataclasses.replace` (used to widen nets in ntc.testing) must not carry the original
    net's cached graph over to the new one."""

    net = stax.serial(stax.Dense(3), stax.Relu())
    assert len(net.graph()) == 3
    assert len(replace(net, children=net.children[:1]).graph()) == 2
