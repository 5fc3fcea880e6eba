"""Multi-process kernel jobs on JAX's own distributed runtime (`jax.distributed`).

A job is one kernel computed by N processes (typically one per GPU host) that share a tile store
on a common file system:

1. `initialize` joins the job: `jax.distributed.initialize(coordinator, N, I)`, from arguments or
   from the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, or a
   cluster JAX detects by itself, such as SLURM).  Arguments are checked before JAX sees them,
   and a coordinator that does not answer within `connect_timeout` seconds is an error, not a
   hang.
2. Process 0 opens (or, with `resume`, continues) the store and writes its manifest; every other
   process attaches to it, which compares its own job (plan fingerprint, input hashes, dtype,
   kernels, tile grid) with the manifest.  The verdicts go through the coordination service's
   key-value store, and if any process disagrees, every process raises `DistributedError`.
3. Process 0 splits the tiles still to do (the upper triangle only, when x2 is x1) into one
   share per process, balanced by cost: each tile's FLOPs from the plan's cost model, each
   process's capacity from its number of local devices, greedy longest-first (Graham 1969).
4. Every process computes its share with `ntc.batch`'s machinery (tiles spread over its local
   devices with `jax.shard_map`) and saves each tile atomically to the store, in its own journal.
5. Once every process has reported its share done, process 0 assembles the result from the
   store; the others wait for that and return None.  A process that fails reports it through
   the key-value store, and the others raise instead of waiting for it.

A process that dies loses only the tile it was computing; JAX then stops the other processes
(heartbeat timeout), and a rerun with `resume=True`, with any number of processes, computes only
the tiles missing from the store.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import jax
import numpy as np

from ..errors import DistributedError, NtcError
from .batching import BatchedKernelFn, BatchStats, tile_grid
from .store import TileStore

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
_FOREVER_S = 7 * 24 * 3600


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in a job: its id, the number of processes, the coordinator."""

    process_id: int
    num_processes: int
    coordinator: str | None


_INFO: ProcessInfo | None = None


def _int_env(name: str):
    v = os.environ.get(name)
    if v is None or v == '':
        return None
    try:
        return int(v)
    except ValueError:
        raise DistributedError(f'the environment variable {name}={v!r} is not an integer') \
            from None


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) from 'HOST:PORT' ('[v6addr]:PORT' for IPv6)."""
    host, sep, port = str(address).rpartition(':')
    host = host.strip('[]')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f'coordinator address {address!r} is not HOST:PORT',
                               hint='e.g. --coordinator node001:12345')
    return host, int(port)


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Poll until a TCP connection to the coordinator succeeds; DistributedError after
    `timeout` seconds.  (JAX itself aborts the process when the coordinator stays silent.)"""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(timeout, 0.1))):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise DistributedError(
        f'cannot reach the coordinator at {address} after {timeout:g} s '
        f'({getattr(last, "strerror", None) or last})',
        hint='start process 0 (it runs the coordinator) on that host and port, check the '
             'address and the firewall, or raise the connection timeout')


def _check_coordinator_port(address: str) -> None:
    """Process 0 runs the coordinator service on the address's port: it must be free here."""
    _, port = parse_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('', port))
        except OSError as e:
            raise DistributedError(f'process 0 cannot run the coordinator on port {port}: '
                                   f'{e.strerror or e}',
                                   hint='choose a free port for --coordinator') from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, connect_timeout: float = 60.,
               initialization_timeout: int = 300, heartbeat_timeout: int = 100) -> ProcessInfo:
    """Join a multi-process job with `jax.distributed.initialize`.

    Unset arguments come from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`; with none of them set, a SLURM job step with several tasks supplies them
    as JAX's own SLURM detection does, and failing that the process runs alone.  One process
    (N = 1) needs no runtime.  On CPU the gloo collectives are selected, so that cross-process
    computations work on loopback.
    A process whose peer dies is stopped by JAX after `heartbeat_timeout` seconds.
    """
    global _INFO
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int_env(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int_env(ENV_PROCESS_ID)
    if coordinator is None and num_processes is None and process_id is None:
        slurm = _slurm_params()
        if slurm is None:
            if _INFO is None and jax.distributed.is_initialized():
                _INFO = ProcessInfo(jax.process_index(), jax.process_count(), None)
            return _INFO or ProcessInfo(0, 1, None)
        coordinator, num_processes, process_id = slurm
    if num_processes is None or (num_processes > 1 and (coordinator is None
                                                        or process_id is None)):
        raise DistributedError(
            'a multi-process job needs the coordinator address, the number of processes and '
            'this process\'s id',
            hint='pass --coordinator HOST:PORT --num-processes N --process-id I, or set '
                 f'{ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}')
    if not isinstance(num_processes, int) or num_processes < 1:
        raise DistributedError(f'the number of processes must be a positive integer, got '
                               f'{num_processes!r}')
    process_id = 0 if process_id is None else process_id
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise DistributedError(
            f'process id {process_id!r} is out of range for {num_processes} processes',
            hint=f'process ids run from 0 to {num_processes - 1}')
    info = ProcessInfo(process_id, num_processes, coordinator)
    if _INFO is not None:
        if info != _INFO:
            raise DistributedError(f'this process already joined a job as {_INFO}, not {info}',
                                   hint='one process takes part in one job')
        return _INFO
    if num_processes == 1:
        _INFO = info
        return info
    parse_address(coordinator)
    if process_id == 0:
        _check_coordinator_port(coordinator)
    else:
        wait_for_coordinator(coordinator, connect_timeout)
    _use_gloo_on_cpu()
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=int(initialization_timeout),
                                   heartbeat_timeout_seconds=int(heartbeat_timeout))
    except RuntimeError as e:
        raise DistributedError(f'jax.distributed.initialize failed: {e}',
                               hint='call ntc.distributed.initialize before any JAX '
                                    'computation in this process') from None
    # Start the backend now: its start is collective (every process publishes its devices),
    # so a process that fails later cannot leave the others stuck inside it.
    jax.devices()
    _INFO = info
    return info


def _slurm_params():
    """(coordinator, N, I) of a SLURM job step with several tasks, as JAX derives them (first
    node of SLURM_STEP_NODELIST, port from SLURM_JOB_ID or JAX_COORDINATOR_PORT); else None."""
    need = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID')
    if not all(os.environ.get(v) for v in need) or (_int_env('SLURM_NTASKS') or 1) <= 1:
        return None
    from jax._src.clusters.slurm_cluster import SlurmCluster
    address = SlurmCluster.get_coordinator_address(None, os.environ.get('JAX_COORDINATOR_PORT'))
    return address, _int_env('SLURM_NTASKS'), _int_env('SLURM_PROCID')


def _use_gloo_on_cpu() -> None:
    platforms = os.environ.get('JAX_PLATFORMS', '') or str(jax.config.jax_platforms or '')
    if platforms.split(',')[0] in ('', 'cpu'):
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def process_info() -> ProcessInfo:
    """This process's place in the job (process 0 of 1 when no job was joined)."""
    return _INFO or ProcessInfo(jax.process_index(), jax.process_count(), None)


# ----------------------------------------------------------------------------- coordination


class _Coordinator:
    """Key-value exchange and barriers through JAX's coordination service (a dict when alone)."""

    def __init__(self, info: ProcessInfo, timeout_s: float):
        self.info = info
        self.timeout_ms = int(min(timeout_s, _FOREVER_S) * 1000)
        self.local: dict[str, str] = {}
        self.client = None
        if info.num_processes > 1:
            from jax._src import distributed as jd
            self.client = jd.global_state.client
            if self.client is None:
                raise DistributedError('this process has not joined the job',
                                       hint='call ntc.runtime.distributed.initialize first')

    def set(self, key: str, value) -> None:
        text = json.dumps(value)
        if self.client is None:
            self.local[key] = text
        else:
            self.client.key_value_set(key, text, allow_overwrite=True)

    def get(self, key: str, who: str):
        """The value at `key`, waiting for it in one-second slices; between slices, a failure
        another process reported (`report_failure`) is raised here, so no process waits for
        one that has given up."""
        if self.client is None:
            return json.loads(self.local[key])
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            try:
                return json.loads(self.client.blocking_key_value_get(key, 1000))
            except jax.errors.JaxRuntimeError as e:
                last = str(e).splitlines()[0][:200]
            self.check_failures()
            if time.monotonic() >= deadline:
                raise DistributedError(f'no answer from {who} within {self.timeout_ms / 1000:g} '
                                       f's ({last})',
                                       hint='check that process\'s log; rerun with resume')

    def check_failures(self) -> None:
        failed = self.client.key_value_dir_get(f'{_FAILED}/')
        if failed:
            who, msg = sorted(failed)[0]
            raise DistributedError(f'process {who.rsplit("/", 1)[-1]} failed: {msg}',
                                   hint='fix that process\'s problem and rerun with resume')


_FAILED = 'ntc/failed'


def report_failure(message: str) -> None:
    """Tell the other processes of the job that this one gives up (they raise instead of
    waiting for it)."""
    from jax._src import distributed as jd
    client = jd.global_state.client
    if client is not None and _INFO is not None:
        with contextlib.suppress(jax.errors.JaxRuntimeError):  # the coordinator is gone
            client.key_value_set(f'{_FAILED}/{_INFO.process_id}', str(message)[:2000],
                                 allow_overwrite=True)


# ----------------------------------------------------------------------------- shares


def partition_tiles(costs, capacities) -> list[list[int]]:
    """Split tiles with the given costs among processes with the given capacities (work per
    second, e.g. local device counts): longest processing time first, each tile to the
    process that would finish it earliest (Graham 1969; within 4/3 of the optimal makespan).
    Returns the tile indices of each process, in increasing order."""
    caps = [float(c) for c in capacities]
    if not caps or min(caps) <= 0:
        raise DistributedError(f'process capacities must be positive, got {capacities}')
    load = [0.0] * len(caps)
    shares: list[list[int]] = [[] for _ in caps]
    for t in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        p = min(range(len(caps)), key=lambda q: ((load[q] + costs[t]) / caps[q], q))
        load[p] += costs[t]
        shares[p].append(t)
    return [sorted(s) for s in shares]


def tile_cost(plan, tile: int) -> float:
    """Modelled FLOPs of one tile (its padded rows are computed too, so every tile of a grid
    costs the same); tile² when the kernel function has no plan."""
    if plan is None:
        return float(tile * tile)
    return max(plan.total('flops', tile, tile), 1.0)


@dataclass
class DistributedStats:
    """What a multi-process call did: this process's tiles, every process's share, and the
    time spent computing and waiting."""

    process_id: int = 0
    num_processes: int = 1
    tile: int = 0
    tiles_total: int = 0
    tiles_resumed: int = 0
    share: list = field(default_factory=list)
    share_sizes: list = field(default_factory=list)
    share_costs: list = field(default_factory=list)
    tiles_computed: int = 0
    per_device: Counter = field(default_factory=Counter)
    seconds_setup: float = 0.
    seconds_compute: float = 0.
    seconds_wait: float = 0.
    seconds_assemble: float = 0.


class DistributedKernelFn:
    """A kernel function computed by all processes of a job into a shared tile store."""

    def __init__(self, kernel_fn, batch_size=None, *, store, resume=False, progress=None,
                 devices=None, fingerprint=None, timeout=_FOREVER_S, store_on_device=False):
        if store is None:
            raise DistributedError('a multi-process kernel needs a tile store that every '
                                   'process can reach', hint='pass store=PATH on a shared '
                                   'file system')
        self.inner = BatchedKernelFn(kernel_fn, batch_size, devices, store_on_device, progress,
                                     None, resume, fingerprint)
        self.store_path = store.path if isinstance(store, TileStore) else store
        self.resume = resume
        self.timeout = timeout
        self.stats = DistributedStats()
        self._calls = 0

    def __call__(self, x1, x2=None, get=None, *, out=None, **kwargs):
        self._calls += 1
        try:
            return self._call(x1, x2, get, out, kwargs)
        except DistributedError:
            raise
        except BaseException as e:
            report_failure(f'{type(e).__name__}: {e}')
            raise

    def _call(self, x1, x2, get, out, kwargs):
        info = process_info()
        coord = _Coordinator(info, self.timeout)
        key = f'ntc/kernel/{self._calls}'
        me, n_proc = info.process_id, info.num_processes
        t0 = time.perf_counter()
        inner = self.inner
        x1, x2n, symmetric, names, form, plan = inner.prepare_inputs(x1, x2, get, kwargs)
        n1, n2 = x1.shape[0], x2n.shape[0]

        # 1. process 0 opens the store; the others attach and compare their job with it
        store = TileStore(self.store_path, writer=me)
        if me == 0:
            try:
                tile = inner.choose_tile(plan, n1, n2, store=store)
                job = inner.job_identity(x1, x2n, symmetric, names, tile, plan, kwargs)
                store.open(job, self.resume)
            except NtcError as e:
                coord.set(f'{key}/setup', {'error': str(e)})
                raise
            coord.set(f'{key}/setup', {'tile': tile})
        setup = coord.get(f'{key}/setup', 'process 0')
        if 'error' in setup:
            raise DistributedError(f'process 0 could not start the job: {setup["error"]}')
        tile = setup['tile']
        job = inner.job_identity(x1, x2n, symmetric, names, tile, plan, kwargs)
        verdict = {'devices': len(inner.devices), 'differ': []}
        if me != 0:
            try:
                verdict['differ'] = store.attach(job)
            except NtcError as e:
                verdict['error'] = str(e)
        coord.set(f'{key}/verdict/{me}', verdict)
        verdicts = [coord.get(f'{key}/verdict/{p}', f'process {p}') for p in range(n_proc)]
        _check_verdicts(verdicts, self.store_path)

        # 2. process 0 splits the tiles left to do into cost-balanced shares
        grid = tile_grid(n1, n2, tile, symmetric)
        if me == 0:
            store.refresh()
            todo = [t for t in grid if not store.has(*t)]
            cost = tile_cost(plan, tile)
            parts = partition_tiles([cost] * len(todo), [v['devices'] for v in verdicts])
            shares = [[list(todo[k]) for k in part] for part in parts]
            coord.set(f'{key}/shares', {'shares': shares, 'cost': cost,
                                        'resumed': len(grid) - len(todo)})
        plan_msg = coord.get(f'{key}/shares', 'process 0')
        shares = plan_msg['shares']
        share = [tuple(t) for t in shares[me]]
        self.stats = st = DistributedStats(
            process_id=me, num_processes=n_proc, tile=tile, tiles_total=len(grid),
            tiles_resumed=plan_msg['resumed'], share=share, share_sizes=[len(s) for s in shares],
            share_costs=[len(s) * plan_msg['cost'] for s in shares])
        st.seconds_setup = time.perf_counter() - t0

        # 3. every process computes its share into the store
        t1 = time.perf_counter()
        if share:
            inner.compute_tiles(store, x1, x2n, symmetric, names, tile, share, kwargs)
            st.tiles_computed = inner.stats.tiles_computed
            st.per_device = inner.stats.per_device
        st.seconds_compute = time.perf_counter() - t1
        t2 = time.perf_counter()
        coord.set(f'{key}/computed/{me}', st.tiles_computed)
        if me != 0:  # wait for the assembly, so that no process leaves the job early
            coord.get(f'{key}/assembled', 'process 0')
            st.seconds_wait = time.perf_counter() - t2
            return None
        for p in range(n_proc):
            coord.get(f'{key}/computed/{p}', f'process {p}')
        st.seconds_wait = time.perf_counter() - t2

        # 4. process 0 assembles the result from the store (any tile still missing, for
        #    instance one whose file was damaged, is recomputed here rather than used)
        t3 = time.perf_counter()
        result = inner.assemble_from_store(store, x1, x2n, symmetric, names, form, tile, plan,
                                           out, kwargs)
        st.tiles_computed += inner.stats.tiles_computed
        st.seconds_assemble = time.perf_counter() - t3
        coord.set(f'{key}/assembled', True)
        return result


def _check_verdicts(verdicts, path) -> None:
    bad = []
    for p, v in enumerate(verdicts):
        if v.get('error'):
            bad.append(f'process {p}: {v["error"]}')
        elif v['differ']:
            bad.append(f'process {p} has a different {", ".join(v["differ"])}')
    if bad:
        raise DistributedError(
            f'the processes disagree with the job in {path}/manifest.json (written by process '
            f'0): {"; ".join(bad)}',
            hint='every process must run the same network, inputs, kernels and tile size')


def distributed_batch(kernel_fn, batch_size: int | None = None, *, store, resume: bool = False,
                      progress: bool | None = None, devices=None, fingerprint: str | None = None,
                      timeout: float = _FOREVER_S) -> DistributedKernelFn:
    """`ntc.batch` across all processes of a job (see `initialize`): every process calls the
    result with the same arguments; each computes a cost-balanced share of the tiles into the
    shared `store` (a directory every process can reach), and process 0 returns the assembled
    kernel (in host memory, or in `out=`), the others None.  `timeout` bounds every wait for
    another process, in seconds."""
    return DistributedKernelFn(kernel_fn, batch_size, store=store, resume=resume,
                               progress=progress, devices=devices, fingerprint=fingerprint,
                               timeout=timeout)


# ----------------------------------------------------------------------------- kernels on meshes


def load_rows(store: TileStore | str | os.PathLike, name: str, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of the 2-D kernel `name` kept as tiles in a store (mirrored tiles of a
    symmetric job included)."""
    store = TileStore(store) if not isinstance(store, TileStore) else store
    job = store.job
    store.refresh()
    if name not in job.get:
        raise DistributedError(f'the store {store.path} holds {job.get}, not {name!r}')
    tile = job.tile
    rows = None
    for i in range(r0 // tile, math.ceil(r1 / tile)):
        lo, hi = max(r0, i * tile), min(r1, (i + 1) * tile)
        for j in range(math.ceil(job.n2 / tile)):
            a, b = (i, j) if not job.symmetric or j >= i else (j, i)
            arrays = store.load(a, b)
            if arrays is None:
                raise DistributedError(f'tile ({a}, {b}) is missing from {store.path}',
                                       hint='finish the kernel job with resume first')
            t = arrays[name]
            if t.ndim != 2:
                raise DistributedError(f'the kernel {name!r} has shape {t.shape[2:]} per pair; '
                                       'only 2-D kernels can be solved against')
            if (a, b) != (i, j):
                t = t.T
            c0, c1 = j * tile, min(job.n2, (j + 1) * tile)
            block = t[lo - i * tile:hi - i * tile, :c1 - c0]
            if rows is None:
                rows = np.empty((r1 - r0, job.n2), block.dtype)
            rows[lo - r0:hi - r0, c0:c1] = block
    return rows


class ShardedKernel:
    """An n × n kernel held row-block-wise across the devices of a mesh, as `array`: padded to
    a multiple of the device count with an identity block (which decouples from the rest and
    is cut off every solution), so any n splits over any number of devices."""

    def __init__(self, array, n: int):
        self.array = array
        self.n = n
        self.shape = (n, n)
        self.dtype = array.dtype

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.array[:self.n, :self.n], dtype)


def row_sharded_kernel(source, name: str = 'nngp', mesh=None) -> ShardedKernel:
    """The kernel sharded row-block-wise over `mesh` (default: every device of every process),
    for `gp_inference(..., solver='cg')`.  `source` is a square 2-D array (every process holds
    it) or a tile store; from a store each process reads only the rows of its own devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = mesh or Mesh(np.array(jax.devices()), ('rows',))
    axis = mesh.axis_names[0]
    sharding = NamedSharding(mesh, PartitionSpec(axis, None))
    if isinstance(source, (TileStore, str, os.PathLike)):
        store = TileStore(source) if not isinstance(source, TileStore) else source
        n = store.job.n1
        if store.job.n1 != store.job.n2:
            raise DistributedError(f'the kernel in {store.path} is {store.job.n1}x'
                                   f'{store.job.n2}: a solve needs the square train kernel')

        def read(r0, r1):
            return load_rows(store, name, r0, r1)
    else:
        k = np.asarray(source)
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise DistributedError(f'row_sharded_kernel needs a square 2-D kernel, got shape '
                                   f'{k.shape}')
        n = k.shape[0]

        def read(r0, r1):
            return k[r0:r1]
    size = mesh.shape[axis]
    n_pad = -(-n // size) * size

    def block(idx):
        r0 = idx[0].start or 0
        r1 = n_pad if idx[0].stop is None else idx[0].stop
        rows = np.zeros((r1 - r0, n_pad), np.float64)
        if r0 < n:
            part = read(r0, min(r1, n))
            rows = rows.astype(part.dtype)
            rows[:part.shape[0], :n] = part
        for r in range(max(r0, n), r1):
            rows[r - r0, r] = 1.0
        return rows
    dtype = read(0, 1).dtype
    return ShardedKernel(jax.make_array_from_callback((n_pad, n_pad), sharding,
                                                      lambda idx: block(idx).astype(dtype)), n)


__all__ = ['initialize', 'process_info', 'ProcessInfo', 'distributed_batch',
           'DistributedKernelFn', 'DistributedStats', 'partition_tiles', 'tile_cost',
           'row_sharded_kernel', 'ShardedKernel', 'load_rows', 'wait_for_coordinator',
           'BatchStats', 'estimate', 'JobEstimate', 'report_failure']


# ----------------------------------------------------------------------------- planning a job


@dataclass
class JobEstimate:
    """A kernel job's cost from the plan's cost model (see `estimate`)."""

    n: int
    devices: int
    tile: int
    tiles: int
    tile_flops: float
    tile_bytes: float
    tile_seconds: float
    device_hours: float
    wall_hours: float
    device_memory: float
    store_bytes: float
    output_bytes: float

    def __str__(self) -> str:
        return (f'n={self.n:,} on {self.devices} devices: tile {self.tile} '
                f'({self.tiles:,} tiles, {self.tile_flops:.3g} FLOPs and {self.tile_bytes:.3g} '
                f'bytes each, {self.tile_seconds:.3g} s), {self.device_hours:,.0f} device-hours, '
                f'{self.wall_hours:,.1f} h wall, {_size(self.device_memory)} live per device, '
                f'store {_size(self.store_bytes)}, output {_size(self.output_bytes)}')


def _size(b: float) -> str:
    for unit, scale in (('PB', 1e15), ('TB', 1e12), ('GB', 1e9), ('MB', 1e6)):
        if b >= scale:
            return f'{b / scale:,.3g} {unit}'
    return f'{b:,.0f} B'


def estimate(plan, n: int, devices: int, *, device_memory: float = 80e9,
             device_flops: float = 60e12, device_bandwidth: float = 3.35e12,
             efficiency: float = 0.5, memory_safety: float = 3.0, symmetric: bool = True,
             dtype_bytes: int = 4) -> JobEstimate:
    """Time, memory and disk of computing `plan`'s n × n kernel on `devices` devices, from the
    plan's cost model: the tile is the largest whose modelled peak live bytes (times
    `memory_safety`, as `ntc.batch` does) fit in `device_memory`; a tile takes the longer of
    its FLOPs at `device_flops` and twice its bytes written (written once, read back once) at
    `device_bandwidth`, both at `efficiency` (a roofline model); tiles are equal, so the wall
    time is ⌈tiles / devices⌉ tiles.  The defaults describe an H100 SXM in float32."""
    lo, hi = 1, max(1, n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan.peak_bytes(mid, mid) * memory_safety <= device_memory:
            lo = mid
        else:
            hi = mid - 1
    tile = lo
    t = math.ceil(n / tile)
    tiles = t * (t + 1) // 2 if symmetric else t * t
    flops, nbytes = plan.total('flops', tile, tile), plan.total('bytes', tile, tile)
    seconds = max(flops / device_flops, 2 * nbytes / device_bandwidth) / efficiency
    per_pair = len([g for g in plan.opts.get if g in ('nngp', 'ntk')]) * dtype_bytes
    return JobEstimate(n=n, devices=devices, tile=tile, tiles=tiles, tile_flops=flops,
                       tile_bytes=nbytes, tile_seconds=seconds,
                       device_hours=tiles * seconds / 3600,
                       wall_hours=math.ceil(tiles / devices) * seconds / 3600,
                       device_memory=plan.peak_bytes(tile, tile),
                       store_bytes=tiles * tile * tile * per_pair,
                       output_bytes=float(n) * n * per_pair)
