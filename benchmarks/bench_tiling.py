"""Tiling overhead: `ntc.batch` at its automatic tile size (and at fixed sizes) against one big
jitted call, on kernels that fit in memory.  Target (issue 4): at most 10% overhead at the
automatic tile size.

    python benchmarks/bench_tiling.py [--quick]
"""

import argparse
import statistics
import time

import jax
import numpy as np

import ntc
from ntc import stax


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='smaller kernels, fewer repeats')
    args = p.parse_args()
    repeats = 2 if args.quick else 5
    cases = {
        'fc10 relu': (stax.serial(*([stax.Dense(512, 1.4, 0.1), stax.Relu()] * 10),
                                  stax.Dense(1)), (1000 if args.quick else 3000, 100)),
        'cnn8 flatten': (stax.serial(*([stax.Conv(1, (3, 3), padding='SAME'), stax.Relu()] * 8),
                                     stax.Flatten(), stax.Dense(1)),
                         (128 if args.quick else 384, 8, 8, 3)),
    }
    print(f'{"case":14} {"N":>5} {"tile":>6} {"tiles":>6} {"one call s":>10} {"tiled s":>8} '
          f'{"overhead":>8}')
    for name, (net, shape) in cases.items():
        _, _, kernel_fn = net
        x = np.random.RandomState(0).randn(*shape).astype(np.float32)
        whole = jax.jit(kernel_fn, static_argnames='get')
        t_whole = _median_time(lambda f=whole, x=x: f(x, None, get=('nngp', 'ntk')), repeats)
        for tile in (None, shape[0] // 4):
            batched = ntc.batch(kernel_fn, batch_size=tile, progress=False)
            t_tiled = _median_time(lambda b=batched, x=x: b(x, None, ('nngp', 'ntk')), repeats)
            stats = batched.stats
            label = f'{stats.tile}' + ('*' if tile is None else '')
            print(f'{name:14} {shape[0]:5} {label:>6} {stats.tiles_computed:6} {t_whole:10.3f} '
                  f'{t_tiled:8.3f} {100 * (t_tiled / t_whole - 1):7.1f}%')
    print('* automatic tile size (from the plan\'s memory model and free device memory)')


if __name__ == '__main__':
    main()
