"""The command line where it touches the world: unwritable outputs, damaged or hostile input
files, non-finite results and bad arguments each end in one line on stderr naming the place,
exit status 1 (2 for argument errors), nothing computed when the problem is known up front,
and never an output file that looks complete when the run failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntc.cli import main

ROOT = Path(__file__).resolve().parent.parent
NET = 'input_shape: [-1, 2]\nnet:\n  serial:\n    - Dense: {out_dim: 8, W_std: 1.5}\n' \
      '    - Relu\n    - Dense: {out_dim: 1}\n'


@pytest.fixture
def files(tmp_path):
    """A small spec, inputs and targets in tmp_path."""
    (tmp_path / 'net.yaml').write_text(NET)
    rng = np.random.default_rng(0)
    np.save(tmp_path / 'x.npy', rng.normal(size=(5, 2)))
    np.save(tmp_path / 'y.npy', rng.normal(size=(5,)))
    return tmp_path


def error_line(capsys, argv, code=1) -> str:
    """Run `ntc ARGV` in this process; check the exit status and that stderr is one line."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:   # argparse exits with status 2
        status = e.code
    assert status == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(('ntc: error:', 'ntc plan: error:')), err
    return err[0]


def kernel_argv(d, out, *more, x1='x.npy'):
    return ['kernel', d / 'net.yaml', '--x1', d / x1, '--out', out, *more]


def nothing_written(d, out) -> bool:
    """No output, no partial output and no tile store: nothing was computed."""
    return not Path(out).exists() and not Path(f'{out}.tiles').exists() and \
        not any('.partial' in p.name for p in d.iterdir())


# ----------------------------------------------------------------------------- --out


def test_out_that_is_a_directory(files, capsys):
    line = error_line(capsys, kernel_argv(files, files))
    assert line == f'ntc: error: --out {files} is a directory (name a file, e.g. ' \
                   f'{files / "kernel.npy"})'
    assert not (files.parent / f'{files.name}.tiles').exists()


def test_out_under_a_file(files, capsys):
    out = files / 'x.npy' / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out))
    assert line == f'ntc: error: cannot write {out}: {files / "x.npy"} is not a directory ' \
                   '(choose a path in a directory)'


@pytest.mark.parametrize('out', ['/proc/version', '/proc/self/k.npy'])
def test_out_in_proc(files, capsys, out):
    line = error_line(capsys, kernel_argv(files, out))
    assert line.startswith(f'ntc: error: cannot write --out {out}: ')
    assert 'writable file system' in line
    assert not Path(f'{out}.tiles').exists()


def test_out_on_a_read_only_file_system(files, capsys):
    ro = Path('/sys/kernel')   # sysfs refuses new files, even to root
    if not ro.is_dir():
        pytest.skip('no /sys')
    line = error_line(capsys, kernel_argv(files, ro / 'k.npy'))
    assert line.startswith(f'ntc: error: cannot write --out {ro / "k.npy"}: cannot create a '
                           f'file in {ro}')


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only tmpfs holding one file, old.npy (needs root and mount)."""
    d = tmp_path / 'ro'
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs',
                                            str(d)], capture_output=True).returncode != 0:
        pytest.skip('mounting a tmpfs needs root')
    try:
        np.save(d / 'old.npy', np.zeros(3))
        subprocess.run(['mount', '-o', 'remount,ro', str(d)], check=True)
        yield d
    finally:
        subprocess.run(['umount', str(d)], capture_output=True)


def test_out_on_a_read_only_mount(files, capsys, read_only_dir):
    out = read_only_dir / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out))
    assert line == (f'ntc: error: cannot write --out {out}: cannot create a file in '
                    f'{read_only_dir} (Read-only file system) (choose a path on a writable file '
                    'system)')
    old = read_only_dir / 'old.npy'
    line = error_line(capsys, kernel_argv(files, old))
    assert line == (f'ntc: error: cannot write --out {old}: Read-only file system (choose a path '
                    'on a writable file system)')


def test_out_that_is_a_device(files, capsys):
    line = error_line(capsys, kernel_argv(files, '/dev/null'))
    assert line == 'ntc: error: --out /dev/null is not a regular file (choose a path for a ' \
                   'new file)'


def test_store_that_is_a_file(files, capsys):
    out = files / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out, '--store', files / 'x.npy'))
    assert line == f'ntc: error: the tile store {files / "x.npy"} is not a directory (pass ' \
                   '--store DIR, a directory for the tiles)'
    assert not out.exists()


def test_store_on_a_virtual_file_system(files, capsys):
    out = files / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out, '--store', '/proc/self/tiles'))
    assert line.startswith('ntc: error: cannot write tile store /proc/self/tiles: cannot create '
                           'a file in /proc/self')
    assert not out.exists()


def test_non_finite_predictions_are_not_written(files, capsys, monkeypatch):
    import ntc.runtime.predict as predict

    def nan_ensemble(*args, **kwargs):
        return lambda t=None, x_test=None, get=None, compute_cov=False: np.array(
            [[0.5], [np.nan], [1.0], [2.0], [3.0]])
    monkeypatch.setattr(predict, 'gradient_descent_mse_ensemble', nan_ensemble)
    out = files / 'p.npy'
    line = error_line(capsys, ['predict', files / 'net.yaml', '--train', files / 'x.npy',
                               files / 'y.npy', '--test', files / 'x.npy', '--out', out])
    assert line == (f'ntc: error: the predicted mean has a non-finite value at [1, 0]; nothing '
                    f'was written to {out} (check the inputs, the targets and --diag-reg; try '
                    '--x64)')
    assert not out.exists() and not any('.partial' in p.name for p in files.iterdir())


def test_predict_out_checked_before_computing(files, capsys, monkeypatch):
    import ntc.runtime.predict as predict
    monkeypatch.setattr(predict, 'gradient_descent_mse_ensemble',
                        lambda *a, **k: pytest.fail('computed before checking --out'))
    line = error_line(capsys, ['predict', files / 'net.yaml', '--train', files / 'x.npy',
                               files / 'y.npy', '--test', files / 'x.npy', '--out', files])
    assert line.startswith(f'ntc: error: --out {files} is a directory')


# ----------------------------------------------------------------------------- input files


def write_bad_inputs(d: Path) -> dict[str, Path]:
    np.save(d / 'obj.npy', np.array([{'a': 1}, 2], dtype=object), allow_pickle=True)
    (d / 'text.npy').write_text('0.1 0.2\n0.3 0.4\n')
    good = (d / 'x.npy').read_bytes()
    (d / 'trunc.npy').write_bytes(good[:-16])
    (d / 'header.npy').write_bytes(good[:40])
    np.save(d / 'complex.npy', np.ones((5, 2), complex))
    np.save(d / 'strings.npy', np.array([['a', 'b']] * 5))
    np.save(d / 'empty.npy', np.zeros((0, 2)))
    (d / 'adir.npy').mkdir()
    return {n: d / f'{n}.npy' for n in ('obj', 'text', 'trunc', 'header', 'complex', 'strings',
                                        'empty', 'adir', 'missing')}


@pytest.mark.parametrize('name, expect', [
    ('obj', 'holds Python objects (a pickled array), which ntc never loads'),
    ('text', 'is not a .npy file (no NumPy header) (write arrays with numpy.save)'),
    ('trunc', 'is truncated: its header announces shape (5, 2) (208 bytes in all) but the '
              'file has 192 bytes'),
    ('header', 'has a damaged .npy header'),
    ('complex', 'holds complex128 values (ntc takes real numbers'),
    ('strings', 'holds <U1 values (ntc takes real numbers'),
    ('empty', 'holds an array of shape (0, 2), which has no inputs or no features'),
    ('adir', 'is not a regular file (pass a .npy file)'),
    ('missing', 'does not exist'),
])
def test_bad_input_files(files, capsys, name, expect):
    bad = write_bad_inputs(files)
    out = files / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out, x1=bad[name].name))
    assert line.startswith(f'ntc: error: --x1 {"file " if name != "adir" else ""}{bad[name]}')
    assert expect in line
    assert nothing_written(files, out)


def test_pickled_targets_in_predict(files, capsys):
    bad = write_bad_inputs(files)
    line = error_line(capsys, ['predict', files / 'net.yaml', '--train', files / 'x.npy',
                               bad['obj'], '--test', files / 'x.npy', '--out', files / 'p.npy'])
    assert line.startswith(f'ntc: error: --train Y file {bad["obj"]} holds Python objects')


def test_inputs_must_match_the_declared_input_shape(files, capsys):
    np.save(files / 'x3.npy', np.ones((5, 4, 2)))
    line = error_line(capsys, kernel_argv(files, files / 'k.npy', x1='x3.npy'))
    assert line == ('ntc: error: --x1 has shape (5, 4, 2) but the spec declares inputs of shape '
                    '(N, 2) (reshape the inputs or fix input_shape in the spec)')


def test_hostile_npy_in_a_subprocess(files):
    """The real process: no traceback, no unpickling, exit status 1."""
    bad = write_bad_inputs(files)
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['JAX_PLATFORMS'] = 'cpu'
    res = subprocess.run([sys.executable, '-m', 'ntc', *map(str, kernel_argv(
        files, files / 'k.npy', x1=bad['obj'].name))], cwd=ROOT, capture_output=True,
        text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count('\n') == 1 and 'Traceback' not in res.stderr
    assert 'holds Python objects' in res.stderr


# ----------------------------------------------------------------------------- spec files


def test_non_utf8_spec(files, capsys):
    spec = files / 'latin1.yaml'
    spec.write_bytes(('# caf\xe9\n' + NET).encode('latin-1'))
    line = error_line(capsys, ['plan', spec])
    assert line == f'ntc: error: {spec}: not UTF-8 text (byte 0xe9 at line 1, offset 5)'


def test_bad_dimension_numbers_in_a_spec(files, capsys):
    spec = files / 'conv.yaml'
    spec.write_text("input_shape: [-1, 6, 6, 2]\nnet:\n  serial:\n    - Conv: {out_chan: 4, "
                    "filter_shape: [3, 3], dimension_numbers: [NHWC, HWOO, NHWC]}\n")
    line = error_line(capsys, ['plan', spec])
    assert line.startswith(f'ntc: error: {spec}: net.serial[0].Conv.dimension_numbers: the rhs '
                           "spec 'HWOO' must name O and I")


def test_rank_mismatch_names_the_layer(files, capsys):
    spec = files / 'conv.yaml'
    spec.write_text('input_shape: [-1, 6, 2]\nnet:\n  serial:\n    - Conv: {out_chan: 4, '
                    'filter_shape: [3, 3]}\n    - Relu\n')
    line = error_line(capsys, ['plan', spec])
    assert line == ("ntc: error: serial[0].Conv: dimension_numbers ('NHWC', 'HWIO', 'NHWC') "
                    'take inputs of rank 4 (N, H, W, C), got input shape (-1, 6, 2) of rank 3 '
                    '(reshape the inputs, or give the Conv a 1-d filter)')


def test_alias_bomb_via_the_cli(files, capsys):
    from test_spec_limits import alias_bomb
    spec = files / 'bomb.yaml'
    spec.write_text(alias_bomb(8))
    line = error_line(capsys, ['plan', spec, '--input-shape', '2'])
    assert line.startswith(f'ntc: error: {spec}: the spec expands to more than 100000 nodes')


def test_errors_in_a_python_net(files, capsys):
    (files / 'boom.py').write_text('import ntc\n\nraise RuntimeError("no data")\n')
    line = error_line(capsys, ['plan', files / 'boom.py'])
    assert line == (f'ntc: error: {files / "boom.py"} failed to run: RuntimeError: no data '
                    f'({files / "boom.py"}, line 3) (fix the Python file that defines `net`)')
    (files / 'syntax.py').write_text('net = (\n')
    line = error_line(capsys, ['plan', files / 'syntax.py'])
    assert line == f"ntc: error: {files / 'syntax.py'}, line 1: SyntaxError: '(' was never closed"
    (files / 'imports.py').write_text('import no_such_package_xyz\n')
    line = error_line(capsys, ['plan', files / 'imports.py'])
    assert line.startswith(f'ntc: error: {files / "imports.py"} failed to run: '
                           "ModuleNotFoundError: No module named 'no_such_package_xyz' (")
    line = error_line(capsys, ['plan', 'no_such_package_xyz.net'])
    assert line.startswith("ntc: error: cannot import 'no_such_package_xyz.net': no module")
    for source in ('..relative', ''):
        line = error_line(capsys, ['plan', source])
        assert 'is not a spec file (.yaml/.yml/.json), a .py file or a module name' in line


# ----------------------------------------------------------------------------- results


def test_nan_kernel_exits_1_and_writes_nothing(files, capsys):
    x = np.random.default_rng(1).normal(size=(5, 2))
    x[3, 1] = np.nan
    np.save(files / 'xnan.npy', x)
    out = files / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out, x1='xnan.npy'))
    assert line == (f'ntc: error: --x1 file {files / "xnan.npy"} has a non-finite value (nan) '
                    'at [3, 1] (remove or impute NaN and infinite entries)')
    assert not out.exists()
    assert not any('.partial' in p.name for p in files.iterdir())


def test_non_finite_result_is_refused_and_the_old_output_kept(files, capsys, monkeypatch):
    """Whatever produced it, a non-finite kernel never reaches --out: a previous good output
    stays as it was, and no partial file is left."""
    out = files / 'k.npy'
    assert main([str(a) for a in kernel_argv(files, out, '--get', 'nngp,ntk')]) == 0
    capsys.readouterr()
    before = {n: np.load(files / f'k.{n}.npy') for n in ('nngp', 'ntk')}
    from ntc.runtime import batching
    place = batching.BatchedKernelFn._place

    def poisoned(self, result, arrays, i, j, *rest):
        if i == j == 0:
            ntk = np.array(arrays['ntk'])
            ntk[0, 0] = np.inf
            arrays = {**arrays, 'ntk': ntk}
        return place(self, result, arrays, i, j, *rest)
    monkeypatch.setattr(batching.BatchedKernelFn, '_place', poisoned)
    line = error_line(capsys, kernel_argv(files, out, '--get', 'nngp,ntk', '--store',
                                          files / 'other.tiles'))
    assert line == (f'ntc: error: the ntk kernel has a non-finite value at [0, 0]; nothing was '
                    f'written to {files / "k.ntk.npy"} (check the inputs and the layer '
                    'parameters)')
    for n in ('nngp', 'ntk'):
        np.testing.assert_array_equal(np.load(files / f'k.{n}.npy'), before[n])
    assert not any('.partial' in p.name for p in files.iterdir())


def test_failure_while_computing_leaves_no_output(files, capsys, monkeypatch):
    from ntc.runtime import batching

    def full_disk(self, *a, **k):
        raise OSError(28, 'No space left on device', str(files / 'k.npy.tiles'))
    monkeypatch.setattr(batching.BatchedKernelFn, '_finish', full_disk)
    out = files / 'k.npy'
    line = error_line(capsys, kernel_argv(files, out))
    assert line == f'ntc: error: No space left on device ({files / "k.npy.tiles"})'
    assert not out.exists()
    assert not any('.partial' in p.name for p in files.iterdir())


def test_kernel_writes_the_right_kernel(files, capsys):
    """The happy path through the temporary file: the kernel equals a direct computation."""
    from ntc import spec
    out = files / 'k.npy'
    assert main([str(a) for a in kernel_argv(files, out, '--tile', '2')]) == 0
    x = np.load(files / 'x.npy')
    want = np.asarray(spec.load(files / 'net.yaml').kernel_fn(x, None, 'nngp'))
    np.testing.assert_allclose(np.load(out), want, rtol=1e-12)
    assert sorted(p.name for p in files.iterdir() if p.name.startswith('k.')) == \
        ['k.npy', 'k.npy.tiles']


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize('argv, expect', [
    (['predict', '{d}/net.yaml', '--train', '{d}/x.npy', '{d}/y.npy', '--test', '{d}/x.npy',
      '--out', '{d}/p.npy', '--learning-rate', 'nan'], '--learning-rate must be a finite '
     'positive number, got nan'),
    (['predict', '{d}/net.yaml', '--train', '{d}/x.npy', '{d}/y.npy', '--test', '{d}/x.npy',
      '--out', '{d}/p.npy', '--diag-reg', 'inf'], '--diag-reg must be a finite non-negative '
     'number, got inf'),
    (['plan', '{d}/net.yaml', '--n', '-3'], '--n must be a positive integer, got -3'),
    (['plan', '{d}/net.yaml', '--input-shape', '0'], 'expected positive sizes'),
    (['kernel', '{d}/net.yaml', '--x1', '{d}/x.npy', '--out', '{d}/k.npy', '--get', 'cov1'],
     "--get: ntc kernel writes the nngp and ntk kernels, got 'cov1'"),
    (['kernel', '{d}/net.yaml', '--x1', '{d}/x.npy', '--out', '{d}/k.npy',
      '--connect-timeout', '-1'], '--connect-timeout must be a finite positive number'),
])
def test_argument_errors_exit_2(files, capsys, argv, expect):
    line = error_line(capsys, [a.format(d=files) for a in argv], code=2)
    assert expect in line


def test_demo_out_under_a_file(files, capsys):
    line = error_line(capsys, ['demo', '--quick', '--out', files / 'x.npy' / 'demo'])
    assert line == (f'ntc: error: cannot create the output folder --out {files / "x.npy"}/demo: '
                    'Not a directory (choose a writable folder)')


NAN_NET = '''
import jax.numpy as jnp
from ntc import stax
# a nonlinearity whose kernel rule breaks down for large correlations: NaN past 0.5
rule = lambda cov12, var1, var2: jnp.where(cov12 > 0.5, jnp.nan, cov12)
net = stax.serial(stax.Dense(4), stax.Elementwise(fn=lambda x: x, nngp_fn=rule), stax.Dense(1))
'''


def test_nan_from_the_network_exits_1_and_writes_nothing(files, capsys):
    """The issue's example: a NaN made by the network itself (here an Elementwise rule), which
    today's main writes to --out and exits 0."""
    (files / 'nan_net.py').write_text(NAN_NET)
    out = files / 'k.npy'
    line = error_line(capsys, ['kernel', files / 'nan_net.py', '--x1', files / 'x.npy',
                               '--out', out])
    assert 'non-finite' in line or 'NaN' in line, line
    assert not out.exists()
    assert not any('.partial' in p.name for p in files.iterdir())


def test_closed_pipe_stops_quietly():
    """`ntc schema | head -1`: no 'Broken pipe' error, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader is gone before ntc writes anything
    try:
        res = subprocess.run([sys.executable, '-m', 'ntc', 'schema'], cwd=ROOT, env=env,
                             stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert res.returncode == 1
    assert res.stderr.decode() == ''
