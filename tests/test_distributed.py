"""Multi-process kernel jobs on jax.distributed (CPU loopback): 3 processes compute one kernel
exactly, solve against it with distributed CG, survive a SIGKILL via the tile store, and refuse
bad launches with clear errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ntc.errors import DistributedError
from ntc.runtime import predict
from ntc.runtime.batching import batch
from ntc.runtime.distributed import initialize, partition_tiles, tile_cost

# 2 local devices per process; compiled tile programs are shared through JAX's persistent cache
# (the test run's, `JAX_COMPILATION_CACHE_DIR` from tests/conftest.py)
ENV = dict(os.environ, JAX_PLATFORMS='cpu', JAX_ENABLE_X64='1',
           XLA_FLAGS='--xla_force_host_platform_device_count=2',
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

NET_MODULE = '''
from ntc import stax
net = stax.serial(stax.Conv(3, (3, 3), padding='SAME'), stax.Relu(), stax.GlobalAvgPool(),
                  stax.Dense(1))
'''

WORKER = '''
import json, sys
import numpy as np
from ntc.runtime import distributed, predict
coord, n, pid, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
info = distributed.initialize(coord, n, pid, connect_timeout=60)
import jax
sys.path.insert(0, root)
from mynet import net
x, xt, y = (np.load(f'{root}/{k}.npy') for k in ('x', 'xt', 'y'))
fn = distributed.distributed_batch(net.kernel_fn, 3, store=f'{root}/store', progress=False)
k = fn(x, None, ('nngp', 'ntk'))
s = fn.stats
json.dump(dict(share=s.share, computed=s.tiles_computed, devices=len(jax.local_devices()),
               global_devices=len(jax.devices()), per_device=dict(s.per_device)),
          open(f'{root}/stats{pid}.json', 'w'))
if pid == 0:
    np.savez(f'{root}/kernel.npz', nngp=k.nngp, ntk=k.ntk)
else:
    assert k is None
# conjugate gradients on the NTK, row blocks read from the tiles by the process owning them
K = distributed.row_sharded_kernel(f'{root}/store', 'ntk')
shards = K.array.addressable_shards
assert len(shards) == 2 and shards[0].data.shape[0] == len(x) // 6
f = predict.gp_inference(K, y, diag_reg=1e-3, solver='cg', preconditioner='pivchol8')
mean = f('ntk', net.kernel_fn(xt, x, 'ntk'))
np.save(f'{root}/mean{pid}.npy', np.asarray(mean))
json.dump(f.solver_info['ntk'][0].iterations, open(f'{root}/cg{pid}.json', 'w'))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(args, **kw):
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def finish(procs, timeout=240):
    outs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, err))
    return outs


def cli(root, *args):
    return ['-m', 'ntc.cli', 'kernel', str(root / 'mynet.py'), '--x1', str(root / 'x.npy'),
            '--tile', '2', '--no-progress', *args]


def test_partition_balances_cost_not_count():
    shares = partition_tiles([1.0] * 10, [1, 1, 1])
    assert sorted(sum(shares, [])) == list(range(10)) and sorted(map(len, shares)) == [3, 3, 4]
    # a process with two devices does twice the work of a process with one
    assert list(map(len, partition_tiles([1.0] * 12, [2, 1, 1]))) == [6, 3, 3]
    # unequal costs: the expensive tile goes alone, the cheap ones share
    shares = partition_tiles([8.0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1])
    assert shares[0] == [0] and shares[1] == list(range(1, 9))
    with pytest.raises(DistributedError, match='positive'):
        partition_tiles([1.0], [0])
    assert tile_cost(None, 4) == 16


def test_bad_launches_are_refused_before_jax_is_touched():
    with pytest.raises(DistributedError, match='process id 3 is out of range for 3 processes.*'
                       '0 to 2'):
        initialize('127.0.0.1:1234', 3, 3)
    with pytest.raises(DistributedError, match='out of range'):
        initialize('127.0.0.1:1234', 3, -1)
    with pytest.raises(DistributedError, match='not HOST:PORT'):
        initialize('localhost', 2, 1)
    with pytest.raises(DistributedError, match='--num-processes'):
        initialize('127.0.0.1:1234', None, 1)
    port = free_port()
    t = time.monotonic()
    with pytest.raises(DistributedError, match=f'cannot reach the coordinator at 127.0.0.1:'
                       f'{port} after 1 s.*process 0'):
        initialize(f'127.0.0.1:{port}', 2, 1, connect_timeout=1.0)
    assert time.monotonic() - t < 10


def test_slurm_job_steps_supply_the_parameters(monkeypatch):
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    monkeypatch.setenv('SLURM_STEP_NODELIST', 'gpu[007-009],big1')
    monkeypatch.setenv('SLURM_NTASKS', '3')
    monkeypatch.setenv('SLURM_PROCID', '3')
    with pytest.raises(DistributedError, match='process id 3 is out of range for 3'):
        initialize()
    monkeypatch.setenv('SLURM_PROCID', '1')
    monkeypatch.setenv('JAX_COORDINATOR_PORT', str(free_port()))
    with pytest.raises(DistributedError, match='cannot reach the coordinator at gpu007:'):
        initialize(connect_timeout=0.3)
    monkeypatch.setenv('SLURM_NTASKS', '1')  # a one-task step runs alone
    assert initialize().num_processes == 1


@pytest.fixture
def job(tmp_path):
    (tmp_path / 'mynet.py').write_text(NET_MODULE)
    rng = np.random.RandomState(3)
    np.save(tmp_path / 'x.npy', rng.randn(18, 4, 4, 2))
    np.save(tmp_path / 'xt.npy', rng.randn(4, 4, 4, 2))
    np.save(tmp_path / 'y.npy', rng.randn(18, 2))
    return tmp_path


def _net(root):
    sys.path.insert(0, str(root))
    try:
        import importlib

        import mynet
        importlib.reload(mynet)
        return mynet.net
    finally:
        sys.path.remove(str(root))


def test_three_processes_compute_one_kernel_and_solve_it_with_cg(job):
    (job / 'worker.py').write_text(WORKER)
    coord = f'127.0.0.1:{free_port()}'
    procs = [launch([str(job / 'worker.py'), coord, '3', str(i), str(job)]) for i in range(3)]
    for rc, err in finish(procs):
        assert rc == 0, err[-3000:]
    net, x = _net(job), np.load(job / 'x.npy')
    want = batch(net.kernel_fn, 3, progress=False)(x, None, ('nngp', 'ntk'))
    got = np.load(job / 'kernel.npz')
    np.testing.assert_array_equal(got['nngp'], np.asarray(want.nngp))  # exactly
    np.testing.assert_array_equal(got['ntk'], np.asarray(want.ntk))
    stats = [json.loads((job / f'stats{i}.json').read_text()) for i in range(3)]
    shares = [tuple(map(tuple, s['share'])) for s in stats]
    everything = sorted(sum(shares, ()))
    assert everything == sorted({(i, j) for i in range(6) for j in range(i, 6)})  # 21, disjoint
    assert sorted(map(len, shares)) == [7, 7, 7]
    for s in stats:
        assert s['devices'] == 2 and s['global_devices'] == 6 and s['computed'] >= 7
        assert len(s['per_device']) == 2  # each process spreads its tiles over its devices
    # distributed CG agrees with a Cholesky solve of the assembled kernel
    xt, y = np.load(job / 'xt.npy'), np.load(job / 'y.npy')
    chol = predict.gp_inference(got['ntk'], y, diag_reg=1e-3)('ntk', net.kernel_fn(xt, x, 'ntk'))
    for i in range(3):
        mean = np.load(job / f'mean{i}.npy')
        assert np.max(np.abs(mean - chol)) <= 1e-6 * np.max(np.abs(chol))
    assert json.loads((job / 'cg0.json').read_text()) > 1


def _journal_tiles(store):
    keys = set()
    for f in store.glob('manifest*.log'):
        keys |= {ln.split()[0] for ln in f.read_text().splitlines() if len(ln.split()) == 3}
    return keys


def test_killed_process_then_resume_with_two_processes(job):
    net, x = _net(job), np.load(job / 'x.npy')
    want = batch(net.kernel_fn, 2, progress=False)(x, None, 'nngp')
    store, total = job / 'k.npy.tiles', 45  # 9 x 9 tiles, upper triangle
    coord = f'127.0.0.1:{free_port()}'
    procs = [launch(cli(job, '--out', str(job / 'k.npy'), '--coordinator', coord,
                        '--num-processes', '3', '--process-id', str(i),
                        '--heartbeat-timeout', '3')) for i in range(3)]
    deadline = time.time() + 180
    victim = store / 'manifest.p2.log'
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if victim.exists() and len(victim.read_text().splitlines()) >= 2:
            break
        time.sleep(0.002)
    assert all(p.poll() is None for p in procs), 'the job finished before it could be killed'
    procs[2].send_signal(signal.SIGKILL)
    # the survivors are stopped by JAX's heartbeat check: a bounded wait, no hang
    outs = finish(procs[:2], timeout=120)
    assert all(rc != 0 for rc, _ in outs)
    done = _journal_tiles(store)
    assert 2 <= len(done) < total
    # resume with a different number of processes: only the missing tiles are computed
    coord = f'127.0.0.1:{free_port()}'
    procs = [launch(cli(job, '--out', str(job / 'k.npy'), '--resume', '--coordinator', coord,
                        '--num-processes', '2', '--process-id', str(i))) for i in range(2)]
    outs = finish(procs)
    for rc, err in outs:
        assert rc == 0, err[-3000:]
    msg = outs[0][1]
    assert f'{total - len(done)} tiles computed by 2 processes, {len(done)} resumed' in msg
    assert 'process 1 of 2' in outs[1][1]
    np.testing.assert_array_equal(np.load(job / 'k.npy'), np.asarray(want))


def test_processes_that_disagree_on_the_inputs_are_stopped(job):
    x = np.load(job / 'x.npy')
    np.save(job / 'x_other.npy', x + 1e-9)
    coord = f'127.0.0.1:{free_port()}'
    common = ['--out', str(job / 'k.npy'), '--coordinator', coord, '--num-processes', '2']
    p0 = launch(cli(job, *common, '--process-id', '0'))
    args1 = cli(job, *common, '--process-id', '1')
    args1[args1.index('--x1') + 1] = str(job / 'x_other.npy')
    p1 = launch(args1)
    for rc, err in finish([p0, p1]):
        assert rc == 1, err[-3000:]
        assert 'disagree with the job in' in err and 'process 1 has a different x1' in err
    # a process that fails (here: a missing input file) stops the others instead of hanging
    coord = f'127.0.0.1:{free_port()}'
    common[common.index('--coordinator') + 1] = coord
    common[common.index('--out') + 1] = str(job / 'k2.npy')
    p0 = launch(cli(job, *common, '--process-id', '0'))
    args1 = cli(job, *common, '--process-id', '1')
    args1[args1.index('--x1') + 1] = str(job / 'missing.npy')
    p1 = launch(args1)
    (rc0, err0), (rc1, err1) = finish([p0, p1], timeout=120)
    assert rc1 == 1 and 'missing.npy does not exist' in err1
    assert rc0 == 1 and 'process 1 failed' in err0 and 'missing.npy' in err0, err0[-2000:]
    # a bad process id from the command line: one line, exit 1
    bad = launch(cli(job, *common, '--process-id', '2'))
    rc, err = finish([bad])[0]
    assert rc == 1 and 'process id 2 is out of range for 2 processes' in err


def test_job_estimate_follows_the_plan_cost_model():
    import ntc
    from ntc import stax
    from ntc.runtime.distributed import estimate
    net = stax.serial(stax.Conv(1, (3, 3), padding='SAME'), stax.Relu(), stax.AvgPool((2, 2)),
                      stax.Flatten(), stax.Dense(10))
    plan = ntc.compile(net, (-1, 8, 8, 3), ('nngp', 'ntk'))
    # a budget the memory model binds at (pair blocks keep the peak to one block plus the output)
    e = estimate(plan, 1000, 4, device_memory=1e6)
    assert e.tile < 1000
    assert plan.peak_bytes(e.tile, e.tile) * 3 <= 1e6 < plan.peak_bytes(e.tile + 1, e.tile + 1) * 3
    t = -(-1000 // e.tile)
    assert e.tiles == t * (t + 1) // 2 and e.store_bytes == e.tiles * e.tile ** 2 * 2 * 4
    assert e.tile_flops == plan.total('flops', e.tile, e.tile)
    assert e.device_hours * 3600 == pytest.approx(e.tiles * e.tile_seconds)
    assert e.wall_hours == pytest.approx(-(-e.tiles // 4) * e.tile_seconds / 3600)
    assert estimate(plan, 1000, 8, device_memory=1e6).wall_hours < e.wall_hours
