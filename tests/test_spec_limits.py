"""Spec files are bounded: alias bombs, self-referencing aliases, deep nesting, non-UTF-8 text,
huge files and non-finite parameters are refused with one `ValidationError` naming the file,
quickly, never a hang, a RecursionError or a traceback."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ntc import spec
from ntc.errors import NtcError, ValidationError


def alias_bomb(levels: int, width: int = 10) -> str:
    """A spec whose serial at level i holds `width` aliases of level i-1: width**levels Relus."""
    lines = ['net:', '  serial:', '    - serial: &a0 [' + ', '.join(['Relu'] * width) + ']']
    for i in range(1, levels):
        lines.append(f'    - serial: &a{i} [' + ', '.join([f'{{serial: *a{i - 1}}}'] * width)
                     + ']')
    return '\n'.join(lines) + '\n'


def test_alias_bomb_is_refused_quickly(tmp_path):
    # 5 levels: 10**5 Relus from 0.8 kB; today's main spends seconds building all of them
    f = tmp_path / 'bomb.yaml'
    f.write_text(alias_bomb(5))
    assert f.stat().st_size < 800
    start = time.perf_counter()
    with pytest.raises(ValidationError, match=r'bomb\.yaml: the spec expands to more than '
                       r'100000 nodes'):
        spec.load(f)
    assert time.perf_counter() - start < 2.0


def test_eight_level_alias_bomb_is_refused(tmp_path):
    f = tmp_path / 'bomb8.yaml'
    f.write_text(alias_bomb(8))
    start = time.perf_counter()
    with pytest.raises(ValidationError, match='expands to more than'):
        spec.load(f)
    assert time.perf_counter() - start < 2.0


def test_aliases_within_the_bound_still_load(tmp_path):
    f = tmp_path / 'small.yaml'
    f.write_text(alias_bomb(2, width=3))   # 3 + 3 * 3 Relus
    net = spec.load(f)
    assert spec.dumps(net).count('Relu') == 12


@pytest.mark.parametrize('text', ['net: &a {serial: [Relu, *a]}\n',
                                  'net: {serial: &a [Relu, {serial: *a}]}\n'])
def test_recursive_alias_is_refused(tmp_path, text):
    f = tmp_path / 'rec.yaml'
    f.write_text(text)
    with pytest.raises(ValidationError, match=r'rec\.yaml: the spec contains itself'):
        spec.load(f)


@pytest.mark.parametrize('suffix', ['yaml', 'json'])
def test_deep_nesting_is_an_ntc_error_not_recursion_error(tmp_path, suffix):
    depth = 10_000
    if suffix == 'json':
        text = '{"net": ' + '{"serial": [' * depth + '"Relu"' + ']}' * depth + '}\n'
    else:
        text = 'net: ' + '{serial: [' * depth + 'Relu' + ']}' * depth + '\n'
    f = tmp_path / f'deep.{suffix}'
    f.write_text(text)
    with pytest.raises(ValidationError, match=rf'deep\.{suffix}: the spec nests more than 200 '
                       'levels deep'):
        spec.load(f)


def test_deep_plain_data_and_text_are_refused():
    data = 'Relu'
    for _ in range(10_000):
        data = {'serial': [data]}
    with pytest.raises(ValidationError, match='nests more than 200 levels'):
        spec.parse(data)
    with pytest.raises(ValidationError, match='nests more than 200 levels'):
        spec.loads('[' * 5000 + ']' * 5000)
    text = '{"serial": [' * 10_000 + '"Relu"' + ']}' * 10_000
    with pytest.raises(ValidationError, match='nests more than 200 levels'):
        spec.loads(text, 'json')


def test_nesting_within_the_bound_compiles():
    data = {'Dense': {'out_dim': 3}}
    for _ in range(60):   # 60 nested serials: 121 levels of data
        data = {'serial': [data, 'Relu', {'Dense': {'out_dim': 3}}]}
    x = np.random.default_rng(0).normal(size=(3, 2))
    k = np.asarray(spec.parse(data).kernel_fn(x, None, 'nngp'))
    assert k.shape == (3, 3) and np.isfinite(k).all()


def test_non_utf8_spec_names_the_file(tmp_path):
    f = tmp_path / 'latin1.yaml'
    f.write_bytes('net: Dense\ndescription: caf\xe9\n'.encode('latin-1'))
    with pytest.raises(ValidationError, match=r'latin1\.yaml: not UTF-8 text \(byte 0xe9 at '
                       r'line 2'):
        spec.load(f)


def test_spec_that_is_a_directory(tmp_path):
    d = tmp_path / 'dir.yaml'
    d.mkdir()
    with pytest.raises(ValidationError, match=r'dir\.yaml is not a regular file'):
        spec.load(d)


def test_huge_spec_file_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(spec, 'MAX_BYTES', 1000)
    f = tmp_path / 'big.yaml'
    f.write_text('net:\n  serial:\n' + '    - Relu\n' * 200)
    with pytest.raises(ValidationError, match=r'big\.yaml: the spec file has 2215 bytes; '
                       'specs are at most 1000'):
        spec.load(f)


def test_negative_parameter_names_file_and_field(tmp_path):
    f = tmp_path / 'neg.yaml'
    f.write_text('net:\n  serial:\n    - Dense: {out_dim: 4, W_std: -1.0}\n')
    with pytest.raises(ValidationError, match=r'neg\.yaml: net\.serial\[0\]\.Dense\.W_std: '):
        spec.load(f)


def test_overflowing_parameter_names_file_and_field(tmp_path):
    # YAML reads 1e400 as inf: a kernel of no meaning
    f = tmp_path / 'inf.yaml'
    f.write_text('net:\n  serial:\n    - Dense: {out_dim: 4, W_std: 1e400}\n')
    with pytest.raises(NtcError, match=r"inf\.yaml: net\.serial\[0\]\.Dense\.W_std: .*finite "
                       r".*'1e400'"):
        spec.load(f)
    for text in ('.nan', '-.inf', '.inf', '1.0e+400'):
        with pytest.raises(NtcError, match=r'^net\.Conv\.b_std: '):
            spec.loads(f'net: {{Conv: {{out_chan: 2, filter_shape: [3], b_std: {text}}}}}')


@pytest.mark.parametrize('shape', ['[-1, 0]', '[-1, 8, -3, 1]'])
def test_input_shape_sizes_are_positive(tmp_path, shape):
    f = tmp_path / 'shape.yaml'
    f.write_text(f'input_shape: {shape}\nnet: Relu\n')
    with pytest.raises(ValidationError, match=r'shape\.yaml: input_shape: sizes must be '
                       r'positive \(-1 for the batch axis\)'):
        spec.load(f)
