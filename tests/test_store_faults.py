"""Fault injection for the tile store: every case ends in the kernel of a clean run or a clear
StoreError/NumericalError, and no finished tile is recomputed without reason."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc.runtime.batching as batching
from ntc import stax
from ntc.errors import NumericalError, StoreError
from ntc.fingerprint import Unfingerprintable, value_fingerprint
from ntc.runtime.batching import batch
from ntc.runtime.monte_carlo import monte_carlo_kernel_fn
from ntc.runtime.store import JOURNAL, MANIFEST, TileStore

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.RandomState(0)
X = RNG.randn(12, 3)
DENSE = stax.serial(stax.Dense(8, 1.4, 0.1), stax.Erf(), stax.Dense(1))
SCALE = 1.0  # a global that a user function reads


def scaled(c):
    """Dense -> Elementwise(v -> c v) -> Dense: the NNGP is c² times that of c = 1."""
    return stax.serial(stax.Dense(4, 1.0, 0.0), stax.Elementwise(
        fn=lambda v: c * v, nngp_fn=lambda k12, k11, k22: c ** 2 * k12), stax.Dense(1, 1.0, 0.0))


def journal_lines(store: Path) -> list[str]:
    return [ln for f in store.glob('manifest*.log') for ln in f.read_text().splitlines()]


# -- job identity ----------------------------------------------------------------------------


def test_captured_constants_are_part_of_the_job(tmp_path):
    # the 9x example: the second job "resumed" every tile of the first
    store = tmp_path / 's'
    one = batch(scaled(1.0).kernel_fn, 4, progress=False, store=store, resume=True)
    k1 = np.asarray(one(X, None, 'nngp'))
    net3 = scaled(3.0)
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(net3.kernel_fn, 4, progress=False, store=store, resume=True)(X, None, 'nngp')
    k3 = batch(net3.kernel_fn, 4, progress=False, store=tmp_path / 's3')(X, None, 'nngp')
    np.testing.assert_allclose(np.asarray(k3), 9 * k1, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(k3), net3.kernel_fn(X, None, 'nngp'), rtol=1e-12)


def test_globals_and_defaults_read_by_user_functions_are_part_of_the_job(tmp_path, monkeypatch):
    def net_reading(d=1.0):
        return stax.serial(stax.Dense(4), stax.Elementwise(
            fn=lambda v: SCALE * v, nngp_fn=lambda k12, k11, k22, d=d: SCALE ** 2 * d * k12),
            stax.Dense(1))

    store = tmp_path / 's'
    batch(net_reading().kernel_fn, 4, progress=False, store=store)(X, None, 'nngp')
    monkeypatch.setattr(sys.modules[__name__], 'SCALE', 2.0)
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(net_reading().kernel_fn, 4, progress=False, store=store, resume=True)(X)
    monkeypatch.setattr(sys.modules[__name__], 'SCALE', 1.0)
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(net_reading(d=4.0).kernel_fn, 4, progress=False, store=store, resume=True)(
            X, None, 'nngp')
    again = batch(net_reading().kernel_fn, 4, progress=False, store=store, resume=True)
    again(X, None, 'nngp')
    assert again.stats.tiles_resumed == 6 and again.stats.tiles_computed == 0


def test_value_fingerprints_follow_what_functions_capture():
    def const(c):
        return lambda v: c * v

    assert value_fingerprint(const(1.0)) == value_fingerprint(const(1.0))
    assert value_fingerprint(const(1.0)) != value_fingerprint(const(3.0))
    # through library wrappers (their closures hold the user function)
    assert value_fingerprint(jax.vmap(const(1.0))) != value_fingerprint(jax.vmap(const(3.0)))
    assert value_fingerprint(jax.jit(const(1.0))) != value_fingerprint(jax.jit(const(3.0)))
    # arrays by content, PRNG keys by their data
    a = np.arange(6.0)
    assert value_fingerprint(const(a)) != value_fingerprint(const(a + 1e-12))
    assert value_fingerprint(jax.random.PRNGKey(1)) != value_fingerprint(jax.random.PRNGKey(2))
    nested = 1.0
    for _ in range(20):
        nested = [nested]
    with pytest.raises(Unfingerprintable, match='nests deeper than'):
        value_fingerprint(const(nested))


def test_a_function_with_no_stable_value_needs_a_job_name(tmp_path):
    lock = threading.Lock()

    def opaque(x1, x2=None, get=None):
        with lock:
            return x1 @ (x1 if x2 is None else x2).T

    with pytest.raises(StoreError, match="cannot tell this job.*lock.*fingerprint="):
        batch(opaque, 4, progress=False, store=tmp_path / 's')(X, None, 'nngp')
    named = batch(opaque, 4, progress=False, store=tmp_path / 's', fingerprint='linear-v1')
    np.testing.assert_allclose(named(X, None, 'nngp'), X @ X.T, rtol=1e-12)
    again = batch(opaque, 4, progress=False, store=tmp_path / 's', fingerprint='linear-v1',
                  resume=True)
    again(X, None, 'nngp')
    assert again.stats.tiles_resumed == 6


def test_keywords_are_part_of_the_job(tmp_path):
    def scaled_linear(x1, x2=None, get=None, scale=1.0):
        return scale * x1 @ (x1 if x2 is None else x2).T

    store = tmp_path / 's'
    batch(scaled_linear, 4, progress=False, store=store)(X, None, 'nngp', scale=2.0)
    with pytest.raises(StoreError, match='another job.*kwargs'):
        batch(scaled_linear, 4, progress=False, store=store, resume=True)(
            X, None, 'nngp', scale=3.0)
    # ntc kernel inputs too: mask_constant changes which entries count
    net_store = tmp_path / 'm'
    batch(DENSE.kernel_fn, 4, progress=False, store=net_store)(X, None, 'nngp',
                                                               mask_constant=10.0)
    with pytest.raises(StoreError, match='another job.*kwargs'):
        batch(DENSE.kernel_fn, 4, progress=False, store=net_store, resume=True)(
            X, None, 'nngp', mask_constant=X[0, 0])


def test_monte_carlo_kernels_of_different_keys_or_nets_do_not_share_tiles(tmp_path):
    net = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(1))

    def mc(seed, n=net):
        return monte_carlo_kernel_fn(n.init_fn, n.apply_fn, jax.random.PRNGKey(seed), 2,
                                    device_count=0)

    x = X[:6]
    store = tmp_path / 's'
    first = batch(mc(1), 6, progress=False, store=store)
    k1 = first(x, None, 'nngp')
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(mc(2), 6, progress=False, store=store, resume=True)(x, None, 'nngp')
    other = stax.serial(stax.Dense(16, 2.0), stax.Relu(), stax.Dense(1))
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(mc(1, other), 6, progress=False, store=store, resume=True)(x, None, 'nngp')
    again = batch(mc(1), 6, progress=False, store=store, resume=True)
    np.testing.assert_array_equal(np.asarray(again(x, None, 'nngp')), np.asarray(k1))
    assert again.stats.tiles_resumed == 1 and again.stats.tiles_computed == 0


def test_precision_is_part_of_the_job(tmp_path):
    store = tmp_path / 's'
    jax.config.update('jax_enable_x64', False)
    try:  # the crashed job ran in float32
        k32 = batch(DENSE.kernel_fn, 4, progress=False, store=store)(X, None, 'nngp')
        assert k32.dtype == np.float32
    finally:
        jax.config.update('jax_enable_x64', True)
    with pytest.raises(StoreError, match='precision: x32 in the store, x64 now'):
        batch(DENSE.kernel_fn, 4, progress=False, store=store, resume=True)(X, None, 'nngp')
    k64 = batch(DENSE.kernel_fn, 4, progress=False, store=tmp_path / 't')(X, None, 'nngp')
    assert k64.dtype == np.float64
    np.testing.assert_allclose(k64, DENSE.kernel_fn(X, None, 'nngp'), rtol=1e-12)


# -- journals, manifest, lock ---------------------------------------------------------------------


def test_a_store_without_its_manifest_is_refused(tmp_path):
    store = tmp_path / 's'
    batch(DENSE.kernel_fn, 4, progress=False, store=store)(X, None, 'nngp')
    (store / MANIFEST).unlink()  # a natural way to "reset" a store
    other = stax.serial(stax.Dense(8, 2.0), stax.Relu(), stax.Dense(1))
    for resume in (False, True):
        with pytest.raises(StoreError, match='no manifest.json.*unknown job.*delete'):
            batch(other.kernel_fn, 4, progress=False, store=store, resume=resume)(X, None, 'nngp')
    shutil.rmtree(store)
    fn = batch(other.kernel_fn, 4, progress=False, store=store)
    np.testing.assert_allclose(fn(X, None, 'nngp'), other.kernel_fn(X, None, 'nngp'), rtol=1e-12)


def test_journal_lines_of_another_job_never_count(tmp_path):
    other = stax.serial(stax.Dense(8, 2.0), stax.Relu(), stax.Dense(1))
    a, b = tmp_path / 'a', tmp_path / 'b'
    batch(DENSE.kernel_fn, 4, progress=False, store=a)(X, None, 'nngp')
    batch(other.kernel_fn, 4, progress=False, store=b)(X, None, 'nngp')
    # b's tiles and journal are replaced by a's (same keys, valid digests, another job id),
    # plus a journal line in the old format without a job id
    for f in b.glob('tile_*.npz'):
        f.unlink()
    (b / JOURNAL).unlink()
    for f in a.glob('tile_*.npz'):
        shutil.copy(f, b / f.name)
    shutil.copy(a / JOURNAL, b / 'manifest.p7.log')
    old = ' '.join((a / JOURNAL).read_text().splitlines()[0].split()[:2])
    (b / 'manifest.p8.log').write_text(old + '\n')
    fn = batch(other.kernel_fn, 4, progress=False, store=b, resume=True)
    got = fn(X, None, 'nngp')
    assert fn.stats.tiles_resumed == 0 and fn.stats.tiles_computed == 6
    np.testing.assert_allclose(got, other.kernel_fn(X, None, 'nngp'), rtol=1e-12)


def test_two_jobs_on_one_store_are_refused_and_a_dead_holder_frees_it(tmp_path):
    store = tmp_path / 's'
    store.mkdir()
    held = TileStore(store)
    held.lock()  # another job in this process, before any manifest exists
    with pytest.raises(StoreError, match='in use by another job'):
        batch(DENSE.kernel_fn, 4, progress=False, store=store)(X, None, 'nngp')
    assert not (store / MANIFEST).exists()
    held.close()
    # another process holds it, then dies from SIGKILL: the OS releases the lock
    code = ('import sys, time; from ntc.runtime.store import TileStore; '
            's = TileStore(sys.argv[1]); s.lock(); print("locked", flush=True); time.sleep(600)')
    proc = subprocess.Popen([sys.executable, '-c', code, str(store)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
    try:
        assert proc.stdout.readline().strip() == 'locked'
        with pytest.raises(StoreError, match=f'in use by another job \\(pid {proc.pid}'):
            batch(DENSE.kernel_fn, 4, progress=False, store=store)(X, None, 'nngp')
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fn = batch(DENSE.kernel_fn, 4, progress=False, store=store)
    np.testing.assert_allclose(fn(X, None, 'nngp'), DENSE.kernel_fn(X, None, 'nngp'), rtol=1e-12)


# -- tile grid ---------------------------------------------------------------------------------


def test_a_changed_memory_budget_reuses_the_recorded_tile(tmp_path, monkeypatch):
    x1, x2 = RNG.randn(16, 3), RNG.randn(16, 3)
    plan = batching.compile_plan(DENSE, x1.shape, ('nngp',), dtype=x1.dtype)
    budget = {'bytes': plan.peak_bytes(4, 4) * batching.MEMORY_SAFETY * 1.01}
    monkeypatch.setattr(batching, 'free_device_bytes', lambda device: budget['bytes'])
    store = tmp_path / 's'
    first = batch(DENSE.kernel_fn, progress=False, store=store)
    want = first(x1, x2, 'nngp')
    assert first.stats.tile == 4 and first.stats.tiles_computed == 16
    for f in sorted(store.glob('tile_*.npz'))[:5]:  # as if the job had crashed
        f.unlink()
    budget['bytes'] *= 100  # much more memory free now: the automatic tile would be 16
    assert batching.auto_tile(plan, 16, None) == 16
    again = batch(DENSE.kernel_fn, progress=False, store=store, resume=True)
    got = again(x1, x2, 'nngp')
    assert again.stats.tile == 4
    assert again.stats.tiles_resumed == 11 and again.stats.tiles_computed == 5
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(StoreError, match='tile: 4 in the store, 8 now'):
        batch(DENSE.kernel_fn, 8, progress=False, store=store, resume=True)(x1, x2, 'nngp')


# -- finiteness --------------------------------------------------------------------------------


def test_a_non_finite_tile_is_named_and_never_saved(tmp_path):
    def log_linear(x1, x2=None, get=None):
        return jnp.log(x1 @ (x1 if x2 is None else x2).T)

    x = np.abs(RNG.randn(9, 3)) + 0.1
    x[3:6] *= -1  # rows 3:6 against any other row: log of a negative number
    store = tmp_path / 's'
    with pytest.raises(NumericalError, match=r'tile \(0, 1\).*rows 0:3, columns 3:6.*x1\[0:3\]'):
        batch(log_linear, 3, progress=False, store=store)(x, None, 'nngp', out=tmp_path / 'k.npy')
    saved = {ln.split()[0] for ln in journal_lines(store)}
    assert saved == {'0_0', '1_1', '2_2', '0_2'}  # the finite tiles, not (0, 1) nor (1, 2)
    assert not (tmp_path / 'k.npy').exists() and not list(tmp_path.glob('k.npy*'))


# -- full and read-only disks --------------------------------------------------------------------


def mount_tmpfs(tmp_path, request, size='64k') -> Path:
    """A small tmpfs mounted in tmp_path, unmounted after the test; the test is skipped where
    mounting is not permitted (not root, or no CAP_SYS_ADMIN)."""
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {r.stderr.decode().strip()}')
    request.addfinalizer(lambda: subprocess.run(['umount', '-l', str(mnt)], check=True))
    return mnt


@pytest.fixture
def tmpfs(tmp_path, request):
    """A 64 KiB tmpfs."""
    return mount_tmpfs(tmp_path, request)


def test_a_full_disk_is_a_store_error_and_what_was_saved_resumes(tmp_path, tmpfs):
    x = RNG.randn(48, 3)
    want = DENSE.kernel_fn(x, None, 'nngp')
    store = tmpfs / 's'
    with pytest.raises(StoreError, match='cannot write .*disk is full.*resume=True'):
        batch(DENSE.kernel_fn, 4, progress=False, store=store)(x, None, 'nngp')
    assert not list(store.glob('.tile_*'))  # no temporary file left behind
    done = {ln.split()[0] for ln in journal_lines(store) if len(ln.split()) == 3}
    assert 3 <= len(done) < 78
    big = tmp_path / 'big'
    shutil.copytree(store, big)
    fn = batch(DENSE.kernel_fn, 4, progress=False, store=big, resume=True)
    got = fn(x, None, 'nngp')
    assert fn.stats.tiles_resumed == len(done) and fn.stats.tiles_computed == 78 - len(done)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_an_output_too_big_for_the_disk_fails_before_computing(tmpfs):
    x = RNG.randn(100, 3)  # 100 × 100 float64: 80 kB on a 64 kB disk
    fn = batch(DENSE.kernel_fn, 50, progress=False)
    with pytest.raises(StoreError, match='k.npy.partial: the disk is full'):
        fn(x, None, 'nngp', out=tmpfs / 'k.npy')
    assert fn.stats.tiles_computed == 0
    assert list(tmpfs.iterdir()) == []  # no full-size file of zeros with a valid header
    small = batch(DENSE.kernel_fn, 10, progress=False)
    got = small(x[:40], None, 'nngp', out=tmpfs / 'k.npy')
    np.testing.assert_allclose(np.load(tmpfs / 'k.npy'), DENSE.kernel_fn(x[:40], None, 'nngp'),
                               rtol=1e-12)
    assert isinstance(got, jax.Array) and sorted(p.name for p in tmpfs.iterdir()) == ['k.npy']


def test_a_read_only_store(tmp_path, request):
    tmpfs = mount_tmpfs(tmp_path, request, '1m')
    done, part = tmpfs / 'done', tmpfs / 'part'
    want = batch(DENSE.kernel_fn, 4, progress=False, store=done)(X, None, 'nngp')
    batch(DENSE.kernel_fn, 4, progress=False, store=part)(X, None, 'nngp')
    (part / 'tile_0_1.npz').unlink()
    subprocess.run(['mount', '-o', 'remount,ro', str(tmpfs)], check=True)
    with pytest.raises(StoreError, match='cannot write .*read-only'):
        batch(DENSE.kernel_fn, 4, progress=False, store=tmpfs / 'new')(X, None, 'nngp')
    # a finished store can still be read from read-only media
    fn = batch(DENSE.kernel_fn, 4, progress=False, store=done, resume=True)
    np.testing.assert_array_equal(np.asarray(fn(X, None, 'nngp')), np.asarray(want))
    assert fn.stats.tiles_resumed == 6
    with pytest.raises(StoreError, match='cannot write .*tile_0_1.npz: the file system is read-'):
        batch(DENSE.kernel_fn, 4, progress=False, store=part, resume=True)(X, None, 'nngp')


# -- kill -9 ---------------------------------------------------------------------------------------


JOB = '''
import sys
import jax
jax.config.update('jax_enable_x64', True)
import numpy as np
import ntc
from ntc import stax
net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                  stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                  stax.GlobalAvgPool(), stax.Dense(1))
x = np.load(sys.argv[1])
ntc.batch(net.kernel_fn, 2, progress=False, store=sys.argv[2], resume=True)(x, None, 'nngp')
'''
KILL_NET = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                       stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1))


@pytest.mark.parametrize('kill_after', [1, 4, 12])
def test_kill_9_at_several_points_resumes_losslessly(tmp_path, kill_after):
    x = RNG.randn(16, 6, 6, 2)
    np.save(tmp_path / 'x.npy', x)
    store = tmp_path / 's'
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
    proc = subprocess.Popen([sys.executable, '-c', JOB, str(tmp_path / 'x.npy'), str(store)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(journal_lines(store)) >= kill_after if store.exists() else False:
            break
        time.sleep(0.002)
    assert proc.poll() is None, 'the job ended before it could be killed: ' + \
        proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(journal_lines(store))
    assert kill_after <= done < 36
    fn = batch(KILL_NET.kernel_fn, 2, progress=False, store=store, resume=True)
    got = fn(x, None, 'nngp')
    assert fn.stats.tiles_resumed >= done - 1  # the last journal line may be torn
    assert fn.stats.tiles_resumed + fn.stats.tiles_computed == 36
    np.testing.assert_allclose(np.asarray(got), np.asarray(KILL_NET.kernel_fn(x, None, 'nngp')),
                               rtol=1e-12)


def test_cli_kernel_out_on_a_full_disk_fails_cleanly(tmp_path, tmpfs):
    # `ntc kernel --out` died with SIGBUS and left a full-size .npy of zeros with a valid header
    (tmp_path / 'net.py').write_text('from ntc import stax\nnet = stax.serial(stax.Dense(4), '
                                     'stax.Relu(), stax.Dense(1))\n')
    np.save(tmp_path / 'x.npy', RNG.randn(200, 3))  # 200 × 200 × 4 bytes: 160 kB
    r = subprocess.run([sys.executable, '-m', 'ntc.cli', 'kernel', str(tmp_path / 'net.py'),
                        '--x1', str(tmp_path / 'x.npy'), '--out', str(tmpfs / 'k.npy'),
                        '--store', str(tmp_path / 'store'), '--tile', '100'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=''))
    assert r.returncode == 1, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'k.npy.partial: the disk is full' in lines[0]
    assert list(tmpfs.iterdir()) == [] and journal_lines(tmp_path / 'store') == []


def test_an_automatic_tile_that_runs_out_of_memory_is_halved_with_a_store(tmp_path, monkeypatch):
    x1, x2 = RNG.randn(16, 3), RNG.randn(16, 3)
    plan = batching.compile_plan(DENSE, x1.shape, ('nngp',), dtype=x1.dtype)
    monkeypatch.setattr(batching, 'free_device_bytes',
                        lambda device: plan.peak_bytes(8, 8) * batching.MEMORY_SAFETY * 1.01)
    run_group = batching.BatchedKernelFn._run_group

    def small_memory(self, group, sym_tile, x1p, x2p, tile, *args):  # tiles over 4 do not fit
        if group and tile > 4:
            raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: out of memory (simulated)')
        return run_group(self, group, sym_tile, x1p, x2p, tile, *args)

    monkeypatch.setattr(batching.BatchedKernelFn, '_run_group', small_memory)
    store = tmp_path / 's'
    fn = batch(DENSE.kernel_fn, progress=False, store=store)
    got = fn(x1, x2, 'nngp')
    assert fn.stats.tile == 4 and fn.stats.tiles_computed == 16
    np.testing.assert_allclose(got, DENSE.kernel_fn(x1, x2, 'nngp'), rtol=1e-12)
    again = batch(DENSE.kernel_fn, progress=False, store=store, resume=True)
    again(x1, x2, 'nngp')  # the recorded tile 4, not the 8 the memory model offers
    assert again.stats.tile == 4 and again.stats.tiles_resumed == 16


RACE = '''
import sys
import time
from pathlib import Path
import jax
jax.config.update('jax_enable_x64', True)
import numpy as np
import ntc
from ntc import stax
from ntc.errors import StoreError
w = float(sys.argv[3])
net = stax.serial(stax.Dense(8, w), stax.Relu(), stax.Dense(1))
from ntc.runtime.store import TileStore
read = TileStore._read_manifest


def slow_read(self, *args):  # widen the window between finding no manifest and writing one
    found = read(self, *args)
    if found is None:
        time.sleep(0.5)
    return found


TileStore._read_manifest = slow_read
x = np.load(sys.argv[1])
open(sys.argv[4] + '.ready', 'w').close()  # start together: wait for the other job
while len(list(Path(sys.argv[2]).parent.glob('*.ready'))) < 2:
    time.sleep(0.001)
try:
    k = ntc.batch(net.kernel_fn, 2, progress=False, store=sys.argv[2], resume=True)(x, None, 'nngp')
except StoreError as e:
    print('refused:', e)
    sys.exit(3)
np.save(sys.argv[4], np.asarray(k))
'''


def test_two_jobs_started_at_once_on_an_empty_store(tmp_path):
    # before, both wrote a manifest and a later --resume of one returned the other's kernel
    x = RNG.randn(16, 3)
    np.save(tmp_path / 'x.npy', x)
    store = tmp_path / 's'
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
    procs = [subprocess.Popen([sys.executable, '-c', RACE, str(tmp_path / 'x.npy'), str(store),
                               w, str(tmp_path / f'k{w}.npy')], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in ('1.0', '2.0')]
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) == [0, 3], [p.stderr.read()[-1000:] for p in procs]
    loser = procs[codes.index(3)].stdout.read()
    assert 'in use by another job' in loser or 'another job (different plan)' in loser
    w_won = ('1.0', '2.0')[codes.index(0)]
    net = stax.serial(stax.Dense(8, float(w_won)), stax.Relu(), stax.Dense(1))
    np.testing.assert_allclose(np.load(tmp_path / f'k{w_won}.npy'),
                               np.asarray(net.kernel_fn(x, None, 'nngp')), rtol=1e-12)
    # resuming the job that lost is refused, never answered with the winner's kernel
    w_lost = float(('1.0', '2.0')[codes.index(3)])
    lost = stax.serial(stax.Dense(8, w_lost), stax.Relu(), stax.Dense(1))
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(lost.kernel_fn, 2, progress=False, store=store, resume=True)(x, None, 'nngp')
