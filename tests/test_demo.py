"""`ntc demo --quick` runs end to end as a subprocess and writes its PNGs and results; NT's speed
is printed only when NT was timed in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ntc import demo, spec
from ntc.demo import choose_pool_size

ROOT = Path(__file__).resolve().parent.parent


def fake_nt(tmp_path) -> Path:
    """A stand-in `neural_tangents` package (ntc's stax under NT's name) for timing tests."""
    pkg = tmp_path / 'fake_nt' / 'neural_tangents'
    pkg.mkdir(parents=True)
    (pkg / '__init__.py').write_text("from ntc import stax\n__version__ = 'stand-in'\n")
    return pkg.parent


def test_choose_pool_size():
    # 50-tiles, 800 test digits: n = 300 needs 6·7/2 + 16·6 = 117 tiles, n = 250 needs 95
    assert choose_pool_size(1.0, 50, 800, 100., 100, 1000) == 250
    assert choose_pool_size(1.0, 50, 800, 117., 100, 1000) == 300
    assert choose_pool_size(1.0, 50, 800, 0., 300, 1000) == 300     # never below the minimum
    assert choose_pool_size(1e-6, 50, 800, 100., 300, 1000) == 1000  # capped


def test_nt_speed_is_measured_in_this_run_or_not_claimed(tmp_path, monkeypatch, capsys):
    net = spec.load_document(ROOT / 'specs' / 'digits_flatten.yaml')['net']
    x = np.random.RandomState(0).randn(12, 8, 8, 1).astype(np.float32)
    # no NT venv: nothing is claimed about NT's speed
    monkeypatch.delenv('NTC_NT_PYTHON', raising=False)
    monkeypatch.setattr(demo, 'NT_VENV', tmp_path / 'no-venv')
    res = demo.compare_with_nt(net, x[:6], x[6:], 6, 'Flatten net')
    text = capsys.readouterr().out
    assert 'NT not timed in this run' in text and 'setup_nt.sh' in text and 'µs' not in text
    assert 'no-venv' in res['skipped']
    # an "NT" that is there (a stand-in package): its time is measured now, on the same tile
    monkeypatch.setenv('NTC_NT_PYTHON', sys.executable)
    monkeypatch.setenv('PYTHONPATH', f'{fake_nt(tmp_path)}{os.pathsep}{ROOT}')
    res = demo.compare_with_nt(net, x[:6], x[6:], 6, 'Flatten net')
    text = capsys.readouterr().out
    assert res['version'] == 'stand-in' and res['tile'] == [6, 6]
    assert res['us_per_entry'] == res['median_s'] / 36 * 1e6 > 0 and res['ntc_us_per_entry'] > 0
    assert f'NT stand-in {res["us_per_entry"]:.1f} µs per entry' in text
    # an NT python that fails says so, without a number
    monkeypatch.setenv('NTC_NT_PYTHON', str(tmp_path / 'missing-python'))
    res = demo.compare_with_nt(net, x[:6], x[6:], 6, 'Flatten net')
    assert 'cannot run' in res['skipped'] and 'µs' not in capsys.readouterr().out


def test_quick_demo(tmp_path):
    out = tmp_path / 'out'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['JAX_PLATFORMS'] = 'cpu'
    env['NTC_NT_PYTHON'] = sys.executable              # a stand-in NT, timed in the run
    env['PYTHONPATH'] = f'{fake_nt(tmp_path)}{os.pathsep}{ROOT}'   # this checkout's ntc
    res = subprocess.run([sys.executable, '-m', 'ntc.cli', 'demo', '--quick', '--out', str(out)],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout
    # both plans are printed, and the pooling one is visibly the expensive one
    assert 'specs/digits_myrtle.yaml (WITH pooling)' in text
    assert 'specs/digits_flatten.yaml (WITHOUT pooling)' in text
    assert 'sp=FULL' in text and 'sp=DIAG' in text
    assert '150 train, 150 test' in text and 'Pooling net kernels: 30 train, 150 test' in text
    assert 'kernel tiles' in res.stderr          # the progress bars
    # no speed of NT that was not measured in this run
    assert 'NT measured on this CPU' not in text
    assert text.count('in this run: ntc') == 2 and 'NT stand-in' in text
    for name in ('figure1_sin_regression.png', 'digits_accuracy.png', 'results.json'):
        path = out / name
        assert path.exists() and str(path.resolve()) in text
    for png in out.glob('*.png'):
        data = png.read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 20_000
    r = json.loads((out / 'results.json').read_text())
    assert r['flops_per_entry']['myrtle'] > 10 * r['flops_per_entry']['flatten']
    # plausible accuracies even at 150 training digits (10 classes: chance is 10%)
    assert r['flatten']['nngp']['150'] >= 0.85 and r['flatten']['ntk']['150'] >= 0.85
    assert r['rbf']['150'] >= 0.8 and r['pool']['nngp']['30'] >= 0.4
    fig = r['figure1']
    assert 0 < fig['final_test_loss_infinite'] < 0.2 and fig['final_test_loss_finite'] < 1.0
    assert 0 < fig['learning_rate'] < 10
    for k, tile in (('flatten', 75), ('pool', 30)):
        assert r['nt'][k]['version'] == 'stand-in' and r['nt'][k]['tile'] == [tile, tile]
    assert 'AccuracyWarning' not in res.stderr


def test_accuracy_warnings_of_the_solves_are_reported_in_the_demo_output(capsys):
    from collections import namedtuple
    pair = namedtuple('Pair', 'nngp ntk')
    q, _ = np.linalg.qr(np.random.RandomState(0).randn(20, 20))
    fair = ((q * np.logspace(0, -5.5, 20)) @ q.T).astype(np.float32)  # κ·ε(float32) ≈ 0.04
    k_dd = pair(fair, np.eye(20, dtype=np.float32))
    k_td = pair(fair[:5], np.eye(20, dtype=np.float32)[:5])
    labels = np.arange(20) % 10
    out = demo.kernel_inference(k_dd, k_td, labels, labels[:5], [20], diag_reg=0.)
    text = capsys.readouterr().out
    assert len(out['warnings']) == 1 and 'train-train nngp kernel' in out['warnings'][0]
    assert 'ntc.AccuracyWarning, n=20: the train-train nngp kernel is ill-conditioned' in text
    assert out['ntk'][20] == 1.0      # the identity NTK interpolates the training labels
