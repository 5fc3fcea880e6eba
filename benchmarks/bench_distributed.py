"""Tile throughput of a kernel job with 1 and 2 processes, and what coordination costs.

    python benchmarks/bench_distributed.py [--quick] [--n 96] [--tile 8] [--json out.json]

Every configuration runs in fresh processes on CPU loopback (one CPU device each), on the same
convolutional kernel, into a fresh tile store:

- `batch`: one process, plain `ntc.batch(..., store=...)`: the baseline.
- `1 proc`: `distributed_batch` with one process (no runtime: the coordination code path alone).
- `2 procs`: two processes joined with `jax.distributed.initialize` on 127.0.0.1, sharing the
  tiles through the store; process 0 assembles.

For each it reports the wall time of the whole command, the time from the start of the call to
its return, the time spent computing tiles (per process: the slowest one is the critical path),
and the coordination overhead: joining the runtime, agreeing on the job through the manifest and
the key-value store, waiting at the barrier, and assembling from the store.  Tile throughput is
tiles / (slowest compute time).  On a machine with C cores, P processes can at best speed the
compute up min(P, C)-fold; the JIT compilation that every process repeats is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NET = '''
from ntc import stax
net = stax.serial(stax.Conv(8, (3, 3), padding='SAME', W_std=1.4, b_std=0.1), stax.Relu(),
                  stax.Conv(8, (3, 3), padding='SAME', W_std=1.4, b_std=0.1), stax.Relu(),
                  stax.GlobalAvgPool(), stax.Dense(1))
'''


def worker(argv) -> None:
    """One process of a configuration; prints one JSON line of timings."""
    t_start = time.perf_counter()
    mode, coord, n_proc, pid, root, tile = argv[0], argv[1], int(argv[2]), int(argv[3]), \
        Path(argv[4]), int(argv[5])
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(root))
    from ntc.runtime import distributed
    t0 = time.perf_counter()
    if mode == 'dist' and n_proc > 1:
        distributed.initialize(coord, n_proc, pid, connect_timeout=60)
    t_init = time.perf_counter() - t0
    import numpy as np
    from mynet import net

    from ntc.runtime.batching import batch
    x = np.load(root / 'x.npy')
    store = root / 'store'
    # compile once outside the timed call (every process pays this once per program)
    t0 = time.perf_counter()
    warm = batch(net.kernel_fn, tile, progress=False)
    warm(x[:2 * tile], None, 'nngp')
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mode == 'batch':
        fn = batch(net.kernel_fn, tile, progress=False, store=store, store_on_device=False)
        fn(x, None, 'nngp', out=root / 'k.npy')
        rec = dict(compute=time.perf_counter() - t0, setup=0., wait=0., assemble=0.,
                   tiles=fn.stats.tiles_computed)
    else:
        fn = distributed.distributed_batch(net.kernel_fn, tile, store=store, progress=False)
        fn(x, None, 'nngp', out=root / 'k.npy')
        s = fn.stats
        rec = dict(compute=s.seconds_compute, setup=s.seconds_setup, wait=s.seconds_wait,
                   assemble=s.seconds_assemble, tiles=s.tiles_computed)
    rec.update(pid=pid, call=time.perf_counter() - t0, init=t_init, compile=t_compile,
               process=time.perf_counter() - t_start)
    print(json.dumps(rec), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(mode: str, n_proc: int, n: int, tile: int, tmp: Path) -> dict:
    import numpy as np
    root = Path(tempfile.mkdtemp(dir=tmp))
    (root / 'mynet.py').write_text(NET)
    np.save(root / 'x.npy', np.random.RandomState(0).randn(n, 8, 8, 3).astype(np.float32))
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=1')
    coord = f'127.0.0.1:{free_port()}'
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, '--worker', mode, coord, str(n_proc),
                               str(i), str(root), str(tile)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for i in range(n_proc)]
    recs = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode:
            raise SystemExit(f'{mode} process failed:\n{err[-3000:]}')
        recs.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    k = np.load(root / 'k.npy')
    return dict(mode=mode, processes=n_proc, wall=wall, recs=recs, kernel=k)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == '--worker':
        return worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=96, help='examples (the kernel is n x n)')
    ap.add_argument('--tile', type=int, default=8)
    ap.add_argument('--quick', action='store_true', help='n=48')
    ap.add_argument('--json', help='also write the results here')
    args = ap.parse_args()
    n = 48 if args.quick else args.n
    t = -(-n // args.tile)
    total = t * (t + 1) // 2
    print(f'kernel {n}x{n}, tile {args.tile}: {total} tiles (upper triangle); '
          f'{os.cpu_count()} CPU cores')
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for mode, n_proc in (('batch', 1), ('dist', 1), ('dist', 2)):
            r = run(mode, n_proc, n, args.tile, Path(tmp))
            import numpy as np
            if ref is None:
                ref = r['kernel']
            assert np.array_equal(r['kernel'], ref), 'the configurations disagree'
            recs = r['recs']
            compute = max(x['compute'] for x in recs)
            coord = max(x['init'] + x['setup'] + x['wait'] for x in recs) + \
                sum(x['assemble'] for x in recs)
            call = max(x['call'] for x in recs)
            label = 'batch' if mode == 'batch' else f'{n_proc} proc' + ('s' if n_proc > 1 else '')
            res = dict(config=label, wall_s=r['wall'], call_s=call, compute_s=compute,
                       compile_s=max(x['compile'] for x in recs), coordination_s=coord,
                       tiles_per_s=total / compute,
                       tiles_per_process=[x['tiles'] for x in recs])
            results.append(res)
            rows.append(res)
    head = f'{"config":<9}{"wall s":>8}{"call s":>8}{"compute s":>11}{"compile s":>11}' \
           f'{"coord s":>9}{"tiles/s":>9}  tiles per process'
    print(head)
    for r in rows:
        print(f'{r["config"]:<9}{r["wall_s"]:>8.2f}{r["call_s"]:>8.2f}{r["compute_s"]:>11.2f}'
              f'{r["compile_s"]:>11.2f}{r["coordination_s"]:>9.2f}{r["tiles_per_s"]:>9.1f}  '
              f'{r["tiles_per_process"]}')
    base = rows[0]['tiles_per_s']
    print(f'throughput vs batch: 1 proc {rows[1]["tiles_per_s"] / base:.2f}x, '
          f'2 procs {rows[2]["tiles_per_s"] / base:.2f}x; all results identical')
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
