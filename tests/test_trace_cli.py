"""`ntc plan --flax FILE.py:Model`: the plan of a traced Flax module, with what was recognised."""

import textwrap

import pytest

from ntc.cli import main

pytest.importorskip('flax.linen')

MODEL = textwrap.dedent('''
    import flax.linen as nn

    input_shape = [8, 8, 3]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(16, (3, 3), padding='SAME')(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            return nn.Dense(10)(x.mean(axis=(1, 2)))
''')


def test_plan_of_a_flax_module(tmp_path, capsys):
    path = tmp_path / 'cnn.py'
    path.write_text(MODEL)
    assert main(['plan', '--flax', f'{path}:Model']) == 0
    out = capsys.readouterr().out
    assert 'stax.Conv(' in out and "parameterization='standard'" in out
    assert 'standard parameterisation' in out
    for kind in ('Conv', 'Relu', 'AvgPool', 'GlobalAvgPool', 'Dense'):
        assert kind in out.split('total FLOPs')[0]
    assert main(['plan', '--flax', f'{path}:Model', '--input-shape', '6,6,3',
                 '--format', 'json']) == 0


def test_plan_needs_a_spec_or_a_flax_module(tmp_path, capsys):
    assert main(['plan']) == 1
    assert 'either a SPEC or --flax' in capsys.readouterr().err
    assert main(['plan', '--flax', f'{tmp_path}/missing.py:Model']) == 1
