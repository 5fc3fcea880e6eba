"""The `ntc` command line, run as a subprocess: exit codes, output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / 'specs'


def ntc(*args, cwd=ROOT):
    """Run `python -m ntc.cli ARGS` (the console script's code) and return the result."""
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['JAX_PLATFORMS'] = 'cpu'
    return subprocess.run([sys.executable, '-m', 'ntc.cli', *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def one_line_error(res, code):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr
    return lines[0]


def test_help_lists_every_command():
    res = ntc('--help')
    assert res.returncode == 0
    for cmd in ('plan', 'kernel', 'predict', 'demo', 'bench', 'schema'):
        assert cmd in res.stdout


def test_argument_errors_are_one_line(tmp_path):
    line = one_line_error(ntc(), 2)
    assert line.startswith('ntc: error:') and 'command' in line
    line = one_line_error(ntc('plan', SPECS / 'fc_relu.yaml', '--input-shape', '3,x'), 2)
    assert "expected comma-separated integers, got '3,x'" in line


def test_plan_table_json_dot_and_spec_errors(tmp_path):
    res = ntc('plan', SPECS / 'digits_myrtle.yaml', '--n', '100')
    assert res.returncode == 0, res.stderr
    assert 'AvgPool' in res.stdout and 'sp=FULL' in res.stdout and 'total FLOPs' in res.stdout
    bad = tmp_path / 'bad.yaml'
    bad.write_text('net:\n  serial:\n    - Conv: {out_chan: 2, filter_shape: [3], '
                   'padding: HALF}\n')
    line = one_line_error(ntc('plan', bad, '--input-shape', '8,1'), 1)
    assert line == (f'ntc: error: {bad}: net.serial[0].Conv.padding: must be one of VALID, '
                    "SAME or CIRCULAR (got 'HALF')")


def test_plan_formats(capsys):
    from ntc.cli import main
    spec = str(SPECS / 'digits_flatten.yaml')
    assert main(['plan', spec, '--format', 'json']) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [n['op'] for n in plan['nodes']][-2:] == ['Flatten', 'Dense']
    assert plan['nodes'][1]['layout']['spatial'] == 'DIAG'
    assert main(['plan', spec, '--format', 'dot']) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph plan {') and dot.rstrip().endswith('}')
    assert dot.count('->') == len(plan['nodes']) - 1


def _fc_kernels(x1, x2):
    """NTK of specs/fc_erf.yaml (float64: conftest enables x64), computed in-process."""
    from ntc import spec
    net = spec.load(SPECS / 'fc_erf.yaml')
    return np.asarray(net.kernel_fn(x1, None, 'ntk')), np.asarray(net.kernel_fn(x2, x1, 'ntk'))


def test_predict_matches_closed_form(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.uniform(-3, 3, (6, 1))
    y_train = np.sin(x_train) + 0.1 * rng.normal(size=(6, 1))
    x_test = np.linspace(-3, 3, 9)[:, None]
    for name, arr in (('x', x_train), ('y', y_train), ('t', x_test)):
        np.save(tmp_path / f'{name}.npy', arr)
    common = ('predict', SPECS / 'fc_erf.yaml', '--train', tmp_path / 'x.npy',
              tmp_path / 'y.npy', '--test', tmp_path / 't.npy', '--get', 'ntk')
    from ntc.cli import main
    assert main([str(a) for a in common] + ['--x64', '--out', str(tmp_path / 'inf.npy')]) == 0
    res = ntc(*common, '--t', '3', '--learning-rate', '0.5', '--cov',
              '--out', tmp_path / 't3.npy')
    assert res.returncode == 0, res.stderr
    assert 'NTK ensemble predictions at t = 3 for 9 test inputs' in res.stderr

    k_dd, k_td = _fc_kernels(x_train, x_test)
    mean_inf = k_td @ np.linalg.solve(k_dd, y_train)              # Θ_td Θ^{-1} y
    lam, v = np.linalg.eigh(k_dd)                                 # gradient flow at t = 3
    decay = v @ np.diag((1 - np.exp(-0.5 * 3 * lam / y_train.size)) / lam) @ v.T
    mean_t3 = k_td @ decay @ y_train
    np.testing.assert_allclose(np.load(tmp_path / 'inf.npy'), mean_inf, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.load(tmp_path / 't3.npy'), mean_t3, rtol=2e-3, atol=2e-3)
    cov = np.load(tmp_path / 't3.cov.npy')
    assert cov.shape == (9, 9) and np.allclose(cov, cov.T, atol=1e-5)


def _main_error(capsys, argv) -> str:
    from ntc.cli import main
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_predict_and_kernel_file_errors(tmp_path, capsys):
    np.save(tmp_path / 'x.npy', np.zeros((4, 1)))
    np.save(tmp_path / 'y.npy', np.zeros((3, 1)))
    line = _main_error(capsys, ['predict', SPECS / 'fc_erf.yaml', '--train', tmp_path / 'x.npy',
                                tmp_path / 'y.npy', '--test', tmp_path / 'x.npy', '--out',
                                tmp_path / 'p.npy'])
    assert line == ('ntc: error: --train: X has 4 rows but Y has 3 (pass one target row per '
                    'training input)')
    line = _main_error(capsys, ['predict', SPECS / 'fc_erf.yaml', '--train', tmp_path / 'x.npy',
                                tmp_path / 'x.npy', '--test', tmp_path / 'x.npy', '--out',
                                tmp_path / 'no' / 'p.npy'])
    assert 'does not exist (create it first)' in line
    line = _main_error(capsys, ['kernel', SPECS / 'fc_erf.yaml', '--x1', tmp_path / 'none.npy',
                                '--out', tmp_path / 'k.npy'])
    assert 'does not exist' in line


def test_schema_and_bench_help(capsys):
    from ntc.cli import main
    assert main(['schema']) == 0
    schema = json.loads(capsys.readouterr().out)
    assert 'Conv' in schema['$defs'] and schema['title'] == 'ntc architecture spec'
    with pytest.raises(SystemExit) as info:
        main(['bench', '--help'])
    assert info.value.code == 0 and 'usage: ntc bench' in capsys.readouterr().out


@pytest.mark.parametrize('cmd', ['plan', 'kernel', 'predict', 'demo', 'schema'])
def test_subcommand_help(cmd, capsys):
    from ntc.cli import main
    with pytest.raises(SystemExit) as info:
        main([cmd, '--help'])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f'usage: ntc {cmd}')
