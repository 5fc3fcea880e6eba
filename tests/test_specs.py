"""Spec files: every shipped spec equals the same network built with ntc.stax (identical IR),
round-trips exactly, compiles, and malformed specs fail with one-line errors naming the place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ntc
from ntc import spec, stax
from ntc.errors import NtcError, ShapeError, ValidationError

SPECS = Path(__file__).resolve().parent.parent / 'specs'
S2 = 2 ** 0.5


# ----------------------------------------------------------------------------- the literature,
# written independently with the Python builders


def fc_relu():
    return stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(512), stax.Relu(), stax.Dense(1))


def fc_erf():
    dense = lambda n: stax.Dense(n, W_std=1.5, b_std=0.05)  # noqa: E731
    return stax.serial(dense(512), stax.Erf(), dense(512), stax.Erf(), dense(1))


def conv_only(depth=8):
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(256, (3, 3), padding='SAME', W_std=S2, b_std=0.05), stax.Relu()]
    return stax.serial(*layers, stax.Flatten(), stax.Dense(10, W_std=S2, b_std=0.05))


def myrtle(depth):
    stages = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}[depth]
    conv = lambda: [stax.Conv(256, (3, 3), padding='SAME', W_std=S2, b_std=0.), stax.Relu()]  # noqa: E731,E501
    pool = stax.AvgPool((2, 2), strides=(2, 2))
    layers = []
    for i, n in enumerate(stages):
        for _ in range(n):
            layers += conv()
        layers += [pool] * (1 if i < 2 else 3)
    return stax.serial(*layers, stax.Flatten(), stax.Dense(10, W_std=S2, b_std=0.))


def wide_resnet(block_size=4, k=10, num_classes=10):
    def block(channels, strides, mismatch):
        main = stax.serial(stax.Relu(), stax.Conv(channels, (3, 3), strides, padding='SAME'),
                           stax.Relu(), stax.Conv(channels, (3, 3), padding='SAME'))
        short = (stax.Conv(channels, (3, 3), strides, padding='SAME') if mismatch
                 else stax.Identity())
        return stax.serial(stax.FanOut(2), stax.parallel(main, short), stax.FanInSum())

    def group(channels, strides):
        return stax.serial(block(channels, strides, True),
                           *[block(channels, None, False) for _ in range(block_size - 1)])

    return stax.serial(stax.Conv(16, (3, 3), padding='SAME'),
                       group(16 * k, None), group(32 * k, (2, 2)), group(64 * k, (2, 2)),
                       stax.AvgPool((8, 8)), stax.Flatten(),
                       stax.Dense(num_classes, W_std=1., b_std=0.))


def conv1d_sequence():
    conv = lambda: stax.Conv(128, (9,), padding='SAME', W_std=S2, b_std=0.05)  # noqa: E731
    return stax.serial(conv(), stax.Relu(), conv(), stax.Relu(),
                       stax.AvgPool((2,), strides=(2,)), conv(), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1, W_std=S2, b_std=0.05))


def digits_flatten():
    conv = lambda: stax.Conv(32, (3, 3), padding='SAME', W_std=S2)  # noqa: E731
    return stax.serial(conv(), stax.Relu(), conv(), stax.Relu(), conv(), stax.Relu(),
                       stax.Flatten(), stax.Dense(10, W_std=S2))


def digits_myrtle():
    conv = lambda: stax.Conv(32, (3, 3), padding='SAME', W_std=S2)  # noqa: E731
    pool = lambda: stax.AvgPool((2, 2), strides=(2, 2))  # noqa: E731
    return stax.serial(conv(), stax.Relu(), pool(), conv(), stax.Relu(), pool(), conv(),
                       stax.Relu(), stax.GlobalAvgPool(), stax.Dense(10, W_std=S2))


BUILT = {
    'fc_relu': (fc_relu, [-1, 784]),
    'fc_erf': (fc_erf, [-1, 1]),
    'conv_only': (conv_only, [-1, 32, 32, 3]),
    'myrtle5': (lambda: myrtle(5), [-1, 32, 32, 3]),
    'myrtle7': (lambda: myrtle(7), [-1, 32, 32, 3]),
    'myrtle10': (lambda: myrtle(10), [-1, 32, 32, 3]),
    'wide_resnet_28_10': (wide_resnet, [-1, 32, 32, 3]),
    'conv1d_sequence': (conv1d_sequence, [-1, 128, 4]),
    'digits_flatten': (digits_flatten, [-1, 8, 8, 1]),
    'digits_myrtle': (digits_myrtle, [-1, 8, 8, 1]),
}


def test_every_spec_has_a_python_twin():
    assert sorted(p.stem for p in SPECS.glob('*.yaml')) == sorted(BUILT)


@pytest.mark.parametrize('name', sorted(BUILT))
def test_spec_matches_stax(name):
    builder, shape = BUILT[name]
    doc = spec.load_document(SPECS / f'{name}.yaml')
    net = builder()
    assert doc['net'] == net                                  # same builder tree
    assert doc['net'].graph() == net.graph()                  # identical IR graph
    assert doc['input_shape'] == shape
    assert doc['name'] and doc['description']
    plan = ntc.compile(doc['net'], shape)
    assert plan.fingerprint() == ntc.compile(net, shape).fingerprint()
    # exact round trips: dict, YAML text and JSON text
    assert spec.load(spec.dump(net)) == net
    assert spec.loads(spec.dumps(net)) == net
    assert spec.load(json.loads(spec.dumps(net, 'json'))) == net


def test_layer_count_of_the_literature():
    def convs(net):
        return sum(n.op.kind == 'Conv' for n in net.graph().nodes())
    assert convs(myrtle(5)) + 1 == 5 and convs(myrtle(10)) + 1 == 10
    wrn = spec.load(SPECS / 'wide_resnet_28_10.yaml')
    main_convs = sum(n.op.kind == 'Conv' and 'parallel[0]' in n.path
                     for n in wrn.graph().nodes())
    assert main_convs == 6 * 4  # WRN-(6n+4) with n = 4 blocks per group: 2 convs per block


def test_digits_specs_kernels_agree_with_stax():
    """The spec and the stax net give the same numbers (a cheap end-to-end check)."""
    x = np.random.default_rng(0).normal(size=(3, 1))
    a = spec.load(SPECS / 'fc_erf.yaml').kernel_fn(x, None, ('nngp', 'ntk'))
    b = fc_erf().kernel_fn(x, None, ('nngp', 'ntk'))
    np.testing.assert_array_equal(a.nngp, b.nngp)
    np.testing.assert_array_equal(a.ntk, b.ntk)


def test_json_spec_and_schema(tmp_path):
    net = digits_myrtle()
    path = tmp_path / 'net.json'
    path.write_text(json.dumps({'name': 'x', 'input_shape': [-1, 8, 8, 1], 'net': spec.dump(net)}))
    assert spec.load(path) == net
    schema = spec.json_schema()
    assert set(schema['$defs']) >= {'Conv', 'Dense', 'layer'}
    assert schema['$defs']['Conv']['additionalProperties'] is False
    jsonschema = pytest.importorskip('jsonschema')
    jsonschema.validate(json.loads(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({'net': {'Conv': {'out_chan': 1, 'filter_shape': [3], 'x': 1}}},
                            schema)


def test_dump_document_round_trip(tmp_path):
    net = fc_erf()
    path = tmp_path / 'erf.yaml'
    spec.save(net, path, name='erf', input_shape=[-1, 1], description='d')
    doc = spec.load_document(path)
    assert doc == {'net': net, 'name': 'erf', 'description': 'd', 'input_shape': [-1, 1]}


# ----------------------------------------------------------------------------- malformed specs


def _write(tmp_path, text, name='bad.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(source) -> str:
    with pytest.raises(ValidationError) as info:
        spec.load(source)
    assert isinstance(info.value, NtcError)
    msg = str(info.value)
    assert '\n' not in msg, msg
    return msg


GOOD = '''\
name: t
input_shape: [-1, 8, 8, 1]
net:
  serial:
    - Conv: {out_chan: 4, filter_shape: [3, 3], padding: SAME}
    - Relu
    - Flatten
    - Dense: {out_dim: 10}
'''


def test_good_spec_loads(tmp_path):
    assert spec.load(_write(tmp_path, GOOD)) == stax.serial(
        stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(), stax.Flatten(), stax.Dense(10))


def test_wrong_type(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace('out_chan: 4', 'out_chan: wide')))
    assert msg.startswith(f'{tmp_path / "bad.yaml"}: net.serial[0].Conv.out_chan: ')
    assert 'integer' in msg and "'wide'" in msg
    msg = _error(_write(tmp_path, GOOD.replace('out_dim: 10', 'out_dim: true')))
    assert 'net.serial[3].Dense.out_dim: expected a number, got true' in msg


def test_bad_value_names_the_choices(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace('SAME', 'SAEM')))
    assert msg.endswith('net.serial[0].Conv.padding: must be one of VALID, SAME or CIRCULAR '
                        "(got 'SAEM')")
    msg = _error({'serial': [{'Conv': {'out_chan': 1, 'filter_shape': [3, 'x']}}]})
    assert msg.startswith('serial[0].Conv.filter_shape[1]: ')


def test_unknown_layer(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace('- Relu', '- Rleu')))
    assert "net.serial[1].Rleu: unknown layer 'Rleu'; did you mean Relu?" in msg
    assert 'Conv' in msg  # lists the known layers


def test_unknown_key(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace('out_dim: 10', 'out_dim: 10, W_sdt: 2')))
    assert 'net.serial[3].Dense.W_sdt: unknown argument (the arguments of Dense are' in msg
    msg = _error(_write(tmp_path, GOOD.replace('name: t', 'nmae: t')))
    assert 'unknown top-level key(s) nmae' in msg


def test_missing_field(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace('out_dim: 10', 'W_std: 2.0')))
    assert msg.endswith('net.serial[3].Dense.out_dim: missing required argument')
    msg = _error(_write(tmp_path, 'name: t\ninput_shape: [-1, 3]\n'))
    assert 'missing required key net' in msg


def test_yaml_syntax_error(tmp_path):
    path = _write(tmp_path, GOOD.replace('- Relu', '- Relu: {a: [1, 2}'))
    msg = _error(path)
    assert msg.startswith(f'{path}: YAML syntax error at line 6, column ')


def test_python_object_tag_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    text = GOOD.replace('- Relu', f'- !!python/object/apply:os.system ["touch {marker}"]')
    msg = _error(_write(tmp_path, text))
    assert 'python/object' in msg and 'line 6' in msg and 'not allowed' in msg
    msg = _error(_write(tmp_path, 'net: !!python/name:os.system\n'))
    assert 'python/name' in msg
    assert not marker.exists()


def test_other_malformed_documents(tmp_path):
    assert 'is empty' in _error(_write(tmp_path, '\n'))
    assert 'does not exist' in _error(tmp_path / 'missing.yaml')
    msg = _error(_write(tmp_path, GOOD.replace('[-1, 8, 8, 1]', '[-1, a]')))
    assert 'input_shape: must be a list of integers' in msg
    msg = _error(_write(tmp_path, '{"net": {"Dense": {"out_dim": 1}', 'bad.json'))
    assert 'JSON syntax error at line 1' in msg
    msg = _error({'serial': {'Relu': None}})
    assert msg == 'serial: must be a list of layers, got dict'
    msg = _error({'serial': [{'Dense': {'out_dim': 1}, 'Relu': None}]})
    assert msg.startswith('serial[0]: a layer must be a name or a one-key mapping')


# ----------------------------------------------------------------------------- dimension numbers
# and input ranks: one line naming the layer and the field, from a spec or from ntc.stax


@pytest.mark.parametrize('dn, problem', [
    (('NHWC', 'HWOO', 'NHWC'), "the rhs spec 'HWOO' must name O and I and each axis once"),
    (('NHWC', 'XYIO', 'NHWC'), "the rhs spec 'XYIO' must have the spatial axes of the lhs spec"),
    (('nhwc', 'hwio', 'nhwc'), "the lhs spec 'nhwc' must name N and C"),
    (('', '', ''), "the lhs spec '' must name N and C"),
    (('NHXC', 'HWIO', 'NHWC'), "the rhs spec 'HWIO' must have the spatial axes of the lhs"),
    (('NHC', 'HIO', 'NHC'), '1 spatial axes for a 2-d filter'),
])
def test_bad_dimension_numbers_name_layer_and_field(dn, problem):
    example = "e.g. ('NHWC', 'HWIO', 'NHWC')"
    with pytest.raises(ValidationError) as e:
        stax.Conv(4, (3, 3), dimension_numbers=dn)
    assert str(e.value).startswith(f'Conv.dimension_numbers: Value error, {problem}')
    assert example in str(e.value)
    data = {'serial': [{'Conv': {'out_chan': 4, 'filter_shape': [3, 3],
                                 'dimension_numbers': list(dn)}}, 'Relu']}
    with pytest.raises(ValidationError) as e:
        spec.parse(data)
    assert str(e.value).startswith(f'serial[0].Conv.dimension_numbers: {problem}')
    assert '\n' not in str(e.value)


def test_valid_dimension_numbers_still_work():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4))   # N, C, H, W
    nchw = stax.Conv(2, (3, 2), dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    nhwc = stax.Conv(2, (3, 2))
    k1 = np.asarray(nchw.kernel_fn(x, None, 'nngp'))
    k2 = np.asarray(nhwc.kernel_fn(x.transpose(0, 2, 3, 1), None, 'nngp'))
    np.testing.assert_allclose(k1, k2, rtol=1e-12)


@pytest.mark.parametrize('shape, hint', [
    ((2, 5, 3), 'give the Conv a 1-d filter'),
    ((2, 3), 'use Dense for inputs without spatial axes'),
])
def test_rank_mismatch_is_one_line_with_the_layer_path(shape, hint):
    net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu())
    x = np.ones(shape)
    with pytest.raises(ShapeError) as e:
        net.kernel_fn(x, None, 'nngp')
    text = str(e.value)
    assert text.startswith("serial[0].Conv: dimension_numbers ('NHWC', 'HWIO', 'NHWC') take "
                           f'inputs of rank 4 (N, H, W, C), got input shape {shape} of rank '
                           f'{len(shape)}')
    assert hint in text and '\n' not in text and 'pydantic' not in text
    loaded = spec.parse({'serial': [{'Conv': {'out_chan': 4, 'filter_shape': [3, 3],
                                              'padding': 'SAME'}}, 'Relu']})
    with pytest.raises(ShapeError, match=r"^serial\[0\]\.Conv: dimension_numbers"):
        ntc.compile(loaded, (-1,) + shape[1:])


@pytest.mark.parametrize('axis', [4, -3])
def test_out_of_range_batch_axis_is_refused(axis):
    """Today a batch_axis of 4 on a rank-2 input wraps round to axis 0 without a word."""
    net = stax.serial(stax.Dense(2, batch_axis=axis), stax.Relu())
    with pytest.raises(ShapeError, match=rf'^serial\[0\]\.Dense: batch_axis={axis} is out of '
                       r'range for input shape \(3, 4\) of rank 2 \(use an axis in -2\.\.1\)'):
        net.kernel_fn(np.ones((3, 4)), None, 'nngp')
