"""`ntc bench` / `make bench`: time ntc on the bench kit's cases and report what the plan predicts.

For each case (the architectures of `../shared/bench/bench_case.py`, timed the same way: float32,
`jax.jit(kernel_fn, static_argnames='get')`, nngp+ntk, one compile call then the median of
steady-state calls) it prints compile time, median time, ms per kernel entry, the achieved GFLOP/s
from the plan's own FLOP count, the peak memory (the plan's peak-live model and, where XLA
reports it, the compiled program's temporary buffers) and, for the CNNs with FULL covariances,
the ratio to the memory floor (`floor_seconds`, as the bench kit's floor.sh).  With `--compare`
and the bench kit present, it also runs `../shared/bench/compare.sh CASE` and prints NT's time
and the ratio ntc/NT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from . import stax
from .api import compile as compile_plan


def _cnn(depth, top):
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(1, (3, 3), (1, 1), 'SAME'), stax.Relu()]
    return stax.serial(*layers, top)


def _wrn_block(ch, strides=(1, 1), mismatch=False):
    main = stax.serial(stax.Relu(), stax.Conv(ch, (3, 3), strides, padding='SAME'),
                       stax.Relu(), stax.Conv(ch, (3, 3), padding='SAME'))
    shortcut = stax.Conv(ch, (3, 3), strides, padding='SAME') if mismatch else stax.Identity()
    return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())


def _myrtle(depth_per_stage=3):
    """A Myrtle-style net: three stages of `depth_per_stage` × (Conv 3×3 SAME, Relu), 2×2
    average pooling between the stages, then global average pooling and a Dense readout."""
    stage = [stax.Conv(1, (3, 3), (1, 1), 'SAME'), stax.Relu()] * depth_per_stage
    pool = stax.AvgPool((2, 2), (2, 2))
    return stax.serial(*stage, pool, *stage, pool, *stage, stax.GlobalAvgPool(), stax.Dense(10))


def _wrn():
    return stax.serial(
        stax.Conv(16, (3, 3), padding='SAME'), _wrn_block(16, mismatch=True), _wrn_block(16),
        _wrn_block(32, (2, 2), True), _wrn_block(32), stax.GlobalAvgPool(), stax.Dense(10))


# name: (net builder, input shape, steady-state repeats) -- the bench kit's cases
CASES = {
    'fc10_n2000': (lambda: stax.serial(*([stax.Dense(512, 1.4, 0.1), stax.Relu()] * 10),
                                       stax.Dense(1)), (2000, 100), 5),
    'cnn21_flatten_8x8_n64': (lambda: _cnn(21, stax.Flatten()), (64, 8, 8, 3), 5),
    'cnn21_gap_8x8_n8': (lambda: _cnn(21, stax.GlobalAvgPool()), (8, 8, 8, 3), 3),
    'wrn_gap_8x8_n8': (_wrn, (8, 8, 8, 3), 3),
    'cnn21_gap_16x16_n4': (lambda: _cnn(21, stax.GlobalAvgPool()), (4, 16, 16, 3), 3),
    # ntc's own cases at CIFAR size (not in the bench kit: no NT comparison)
    'cnn21_gap_32x32_n2': (lambda: _cnn(21, stax.GlobalAvgPool()), (2, 32, 32, 3), 3),
    'myrtle_gap_32x32_n2': (_myrtle, (2, 32, 32, 3), 3),
}

#: the cases `../shared/bench/compare.sh` knows (the others have no NT comparison)
KIT_CASES = ('fc10_n2000', 'cnn21_flatten_8x8_n64', 'cnn21_gap_8x8_n8', 'wrn_gap_8x8_n8',
             'cnn21_gap_16x16_n4')

# case -> (N, ((H, layers at H), ...)) of its memory floor (`floor_seconds`): the CNNs with FULL
# covariances; a (Conv, Relu) pair is one layer, the Myrtle net has three stages of three
FLOORS = {'cnn21_gap_8x8_n8': (8, ((8, 21),)), 'cnn21_gap_16x16_n4': (4, ((16, 21),)),
          'cnn21_gap_32x32_n2': (2, ((32, 21),)),
          'myrtle_gap_32x32_n2': (2, ((32, 3), (16, 3), (8, 3)))}


def stages_floor_seconds(n: int, stages, repeats: int = 5) -> float:
    """The memory floor of a net whose layers run at several image sizes: the sum over
    `stages` = ((H, layers), ...) of `floor_seconds(H, n, layers)`."""
    return sum(floor_seconds(h, n, depth, repeats) for h, depth in stages)


def floor_seconds(h: int, n: int, depth: int, repeats: int = 5) -> float:
    """Median seconds to stream an nngp and an ntk covariance of shape (n, n, h, h, h, h)
    float32 once per layer for `depth` layers (one read and one write each, nothing computed):
    the memory floor of a layer-at-a-time kernel, as the bench kit's floor.sh measures it
    (its `floor_case.py H N DEPTH`)."""
    k = jax.numpy.ones((n, n, h, h, h, h), jax.numpy.float32)

    @jax.jit
    def stream(k, t):
        def layer(_, kt):
            k, t = kt
            return k * 0.999 + 1e-3, t * 0.998 + k * 1e-3
        return jax.lax.fori_loop(0, depth, layer, (k, t))

    jax.block_until_ready(stream(k, k))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(stream(k, k))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_jitted(kernel_fn, x1, x2, repeats: int):
    """(jitted function, compile seconds, median seconds): the bench kit's protocol, also the
    demo's: `jax.jit(kernel_fn, static_argnames='get')` on nngp+ntk, one call to compile, then
    the median of `repeats` steady-state calls."""
    f = jax.jit(kernel_fn, static_argnames='get')

    def call() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(f(x1, x2, get=('nngp', 'ntk')))
        return time.perf_counter() - t0
    compile_s = call()
    return f, compile_s, statistics.median(call() for _ in range(repeats))


def time_case(name: str) -> dict:
    """Compile and steady-state timings of one case, with the plan's FLOP and memory model."""
    build, shape, repeats = CASES[name]
    net = build()
    _, _, kernel_fn = net
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    f, compile_s, med = time_jitted(kernel_fn, x, x, repeats)
    plan = compile_plan(net, (-1,) + shape[1:], ('nngp', 'ntk'), dtype=np.float32)
    n = shape[0]
    flops = plan.total('flops', n, n)
    peak_model = plan.peak_bytes(n, n)
    temp = None
    try:
        stats = f.lower(x, x, get=('nngp', 'ntk')).compile().memory_analysis()
        temp = int(stats.temp_size_in_bytes + stats.output_size_in_bytes)
    except Exception:  # memory_analysis is not available on every backend
        pass
    floor = stages_floor_seconds(*FLOORS[name]) if name in FLOORS else None
    return dict(case=name, compile_s=round(compile_s, 3), median_s=round(med, 4),
                ms_per_entry=med / n ** 2 * 1e3, gflops=flops / med / 1e9,
                peak_model_mb=peak_model / 2 ** 20,
                xla_buffers_mb=None if temp is None else temp / 2 ** 20,
                floor_ratio=None if floor is None else med / floor)


def compare(name: str, rounds: int = 3) -> dict | None:
    """Run the bench kit's compare.sh (NT vs ntc, alternating) and parse its ratio."""
    script = Path(__file__).resolve().parents[1].parent / 'shared' / 'bench' / 'compare.sh'
    if not script.exists():
        return None
    out = subprocess.run([str(script), name, str(rounds)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    result = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ['nt'] and 'median_s' in parts:
            result['nt_median_s'] = float(parts[2])
            result['nt_compile_s'] = float(parts[4])
        if line.startswith('ratio'):
            result['ratio'] = float(parts[-1])
    return result or None


def main(argv=None) -> int:
    """Entry point of `ntc bench` and `make bench`."""
    p = argparse.ArgumentParser(prog='ntc bench', description=__doc__.splitlines()[0])
    p.add_argument('cases', nargs='*', choices=[[], *CASES], default=[],
                   help=f'cases to run (default: all of {", ".join(CASES)})')
    p.add_argument('--compare', action='store_true',
                   help='also run ../shared/bench/compare.sh for the ratio ntc/NT')
    p.add_argument('--json', action='store_true', help='print one JSON line per case')
    args = p.parse_args(argv)
    names = args.cases or list(CASES)
    print(f'{"case":24} {"compile s":>9} {"median s":>9} {"ms/entry":>9} {"GFLOP/s":>8} '
          f'{"peak MB":>8} {"ntc/floor":>9} {"NT s":>7} {"ntc/NT":>7}',
          file=sys.stderr if args.json else sys.stdout)
    for name in names:
        row = time_case(name)
        if args.compare and name in KIT_CASES:
            row.update(compare(name) or {})
        if args.json:
            print(json.dumps(row))
            continue
        nt = '-' if row.get('nt_median_s') is None else f'{row["nt_median_s"]:.4f}'
        ratio = '-' if row.get('ratio') is None else f'{row["ratio"]:.3f}'
        peak = row['xla_buffers_mb'] if row['xla_buffers_mb'] is not None else row['peak_model_mb']
        floor = '-' if row['floor_ratio'] is None else f'{row["floor_ratio"]:.2f}'
        print(f'{name:24} {row["compile_s"]:9.2f} {row["median_s"]:9.4f} '
              f'{row["ms_per_entry"]:9.4f} {row["gflops"]:8.2f} {peak:8.1f} {floor:>9} '
              f'{nt:>7} {ratio:>7}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
