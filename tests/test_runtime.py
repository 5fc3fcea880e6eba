"""ntc.batch: tiled == untiled, sharded == single device, symmetric tiles, resumable stores."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import InputError, StoreError
from ntc.runtime.batching import batch
from ntc.runtime.store import JOURNAL, TileStore

GET = ('nngp', 'ntk', 'cov1', 'cov2')
CONV = stax.serial(stax.Conv(3, (3, 3), padding='SAME', W_std=1.3, b_std=0.1), stax.Relu(),
                   stax.Conv(3, (2, 2), padding='VALID'), stax.Erf(), stax.GlobalAvgPool(),
                   stax.Dense(1))
DENSE = stax.serial(stax.Dense(8, 1.4, 0.1), stax.Erf(), stax.Dense(8), stax.Gelu(),
                    stax.Dense(1))
RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(37, 5, 5, 2), RNG.randn(13, 5, 5, 2)
D1, D2 = RNG.randn(37, 6), RNG.randn(13, 6)


def assert_same(got, want, rtol=1e-12):
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=1e-14)


@pytest.mark.parametrize('net, x1, x2', [(CONV, X1, X2), (CONV, X1, None),
                                          (DENSE, D1, D2), (DENSE, D1, None)])
def test_batched_equals_unbatched_with_ragged_tiles(net, x1, x2):
    want = net.kernel_fn(x1, x2, GET)
    fn = batch(net.kernel_fn, batch_size=8, progress=False)
    assert_same(fn(x1, x2, GET), want)
    assert fn.stats.tile == 8 and fn.stats.grid[0] == 5


def test_symmetric_inputs_compute_only_the_upper_triangle():
    fn = batch(DENSE.kernel_fn, batch_size=8, progress=False)
    fn(D1, None, 'nngp')
    s = fn.stats
    assert s.tiles_total == 25 and s.tiles_computed == 15 and s.tiles_skipped_symmetric == 10
    fn(D1, D1, 'nngp')  # x2 is x1 counts as symmetric too
    assert fn.stats.tiles_computed == 15


def test_four_devices_split_the_work_and_agree_with_one():
    devices = jax.devices()
    assert len(devices) == 4, 'conftest simulates 4 CPU devices'
    one = batch(CONV.kernel_fn, 8, devices=devices[:1], progress=False)
    four = batch(CONV.kernel_fn, 8, devices=devices, progress=False)
    assert_same(four(X1, X2, GET), one(X1, X2, GET), rtol=0)
    per = four.stats.per_device
    assert len(per) == 4 and sum(per.values()) == 10 and min(per.values()) >= 2


def test_spatial_outputs_are_mirrored_pair_by_pair():
    net = stax.serial(stax.Conv(3, (3, 3), padding='SAME'), stax.Relu(), stax.Conv(2, (3, 1)))
    want = net.kernel_fn(X1[:9], None, ('nngp', 'ntk'))
    assert_same(batch(net.kernel_fn, 4, progress=False)(X1[:9], None, ('nngp', 'ntk')), want)


def test_plans_and_foreign_kernel_functions_batch_too():
    plan = ntc.compile(DENSE, D1.shape, ('nngp', 'ntk'))
    assert_same(batch(plan, 10, progress=False)(D1, D2), plan(D1, D2))

    def linear_kernel_fn(x1, x2=None, get=None):
        x2 = x1 if x2 is None else x2
        return x1 @ x2.T / x1.shape[1]

    got = batch(linear_kernel_fn, 7, progress=False)(D1, None, 'nngp')
    np.testing.assert_allclose(got, D1 @ D1.T / 6, rtol=1e-12)


def test_host_and_memory_mapped_results(tmp_path):
    fn = batch(DENSE.kernel_fn, 16, store_on_device=False, progress=False)
    out = tmp_path / 'k.npy'
    got = fn(D1, D2, ('nngp', 'ntk'), out=out)
    assert isinstance(got.nngp, np.memmap)
    want = DENSE.kernel_fn(D1, D2, ('nngp', 'ntk'))
    np.testing.assert_allclose(np.load(tmp_path / 'k.nngp.npy'), want.nngp, rtol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / 'k.ntk.npy'), want.ntk, rtol=1e-12)


def test_resume_skips_finished_tiles_and_recomputes_damaged_ones(tmp_path):
    store = tmp_path / 'store'
    want = batch(CONV.kernel_fn, 8, progress=False)(X1, None, 'ntk')
    first = batch(CONV.kernel_fn, 8, progress=False, store=store)
    first(X1, None, 'ntk')
    # damage one tile file and truncate another: both must be recomputed, never used
    files = sorted(store.glob('tile_*.npz'))
    files[0].write_bytes(files[0].read_bytes()[:-40] + b'\0' * 40)
    files[1].write_bytes(files[1].read_bytes()[:100])
    again = batch(CONV.kernel_fn, 8, progress=False, store=store, resume=True)
    got = again(X1, None, 'ntk')
    assert again.stats.tiles_resumed == 13 and again.stats.tiles_computed == 2
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_store_of_another_job_is_refused(tmp_path):
    store = tmp_path / 'store'
    batch(DENSE.kernel_fn, 8, progress=False, store=store)(D1, None, 'nngp')
    other = stax.serial(stax.Dense(8, 2.0), stax.Erf(), stax.Dense(1))
    with pytest.raises(StoreError, match='another job.*plan'):
        batch(other.kernel_fn, 8, progress=False, store=store, resume=True)(D1, None, 'nngp')
    with pytest.raises(StoreError, match='another job.*x1'):
        batch(DENSE.kernel_fn, 8, progress=False, store=store, resume=True)(D1 + 1, None, 'nngp')
    with pytest.raises(StoreError, match='resume=True'):
        batch(DENSE.kernel_fn, 8, progress=False, store=store)(D1, None, 'nngp')


def test_bad_runtime_inputs(tmp_path):
    for bad in (-3, 2.5):
        with pytest.raises(InputError, match='non-negative integer'):
            batch(DENSE.kernel_fn, bad)
    with pytest.raises(InputError, match='same feature shape'):
        batch(DENSE.kernel_fn, 8, progress=False)(D1, np.ones((3, 5)))
    with pytest.raises(StoreError, match='does not exist'):
        batch(DENSE.kernel_fn, 8, progress=False)(D1, None, out=tmp_path / 'no' / 'k.npy')
    with pytest.raises(StoreError, match='does not exist'):
        TileStore(tmp_path / 'no' / 'store').open(None, False)


def test_automatic_tile_size_fits_the_memory_model():
    fn = batch(CONV.kernel_fn, progress=False)
    fn(X1, X2, 'nngp')
    assert 1 <= fn.stats.tile <= 37


def _run_cli(*args, **kw):
    return subprocess.Popen([sys.executable, '-m', 'ntc.cli', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


NET_MODULE = '''
from ntc import stax
net = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                  stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                  stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                  stax.GlobalAvgPool(), stax.Dense(1))
'''


def test_killed_kernel_job_resumes_without_recomputing(tmp_path):
    (tmp_path / 'mynet.py').write_text(NET_MODULE)
    x = np.random.RandomState(1).randn(60, 8, 8, 3).astype(np.float32)
    np.save(tmp_path / 'x.npy', x)
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
    args = ['kernel', str(tmp_path / 'mynet.py'), '--x1', str(tmp_path / 'x.npy'), '--tile', '3']
    # the uninterrupted run
    full = _run_cli(*args, '--out', str(tmp_path / 'full.npy'), env=env)
    assert full.wait(timeout=300) == 0, full.stderr.read()
    # the interrupted run: SIGKILL once a few tiles are in the journal
    proc = _run_cli(*args, '--out', str(tmp_path / 'k.npy'), env=env)
    journal = tmp_path / 'k.npy.tiles' / JOURNAL
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, 'the job finished before it could be killed'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines())
    assert 5 <= done_before < 210
    resumed = _run_cli(*args, '--out', str(tmp_path / 'k.npy'), '--resume', env=env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    msg = resumed.stderr.read()
    computed = int(msg.split(' tiles computed')[0].split()[-1])
    resumed_tiles = int(msg.split(' resumed')[0].split()[-1])
    assert resumed_tiles >= done_before - 1 and computed + resumed_tiles == 210
    np.testing.assert_array_equal(np.load(tmp_path / 'k.npy'), np.load(tmp_path / 'full.npy'))


def test_nt_style_device_count_is_accepted():
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = np.random.RandomState(0).randn(9, 3)
    want = net.kernel_fn(x, None, 'nngp')
    for count, used in ((-1, 4), (0, 1), (2, 2)):
        batched = ntc.batch(net.kernel_fn, 4, count)
        np.testing.assert_allclose(batched(x, None, 'nngp'), want, rtol=1e-12)
        assert len(batched.devices) == used
    with pytest.raises(ntc.NtcError, match='device_count=9'):
        ntc.batch(net.kernel_fn, 4, 9)
