"""`ntc demo --quick` runs end to end as a subprocess and writes its PNGs and results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ntc.demo import choose_pool_size

ROOT = Path(__file__).resolve().parent.parent


def test_choose_pool_size():
    # 50-tiles, 800 test digits: n = 300 needs 6·7/2 + 16·6 = 117 tiles, n = 250 needs 95
    assert choose_pool_size(1.0, 50, 800, 100., 100, 1000) == 250
    assert choose_pool_size(1.0, 50, 800, 117., 100, 1000) == 300
    assert choose_pool_size(1.0, 50, 800, 0., 300, 1000) == 300     # never below the minimum
    assert choose_pool_size(1e-6, 50, 800, 100., 300, 1000) == 1000  # capped


def test_quick_demo(tmp_path):
    out = tmp_path / 'out'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['JAX_PLATFORMS'] = 'cpu'
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
