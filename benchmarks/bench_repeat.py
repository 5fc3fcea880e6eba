"""Compile time and program size of `repeat(layer, n)` against `serial(*[layer] * n)`.

    python benchmarks/bench_repeat.py [--depths 10 100 1000] [--unrolled-max 100] [--json out]

For each depth it compiles the kernel of ``Dense(64) -> repeat(Dense(64) -> Relu, n) ->
Dense(1)`` on 8 inputs of 16 features (NNGP and NTK, float32, CPU), and reports

- `passes`: building and running the compiler passes (`ntc.compile`),
- `trace+lower`: tracing the plan's function and lowering it to StableHLO,
- `xla`: XLA compilation,
- `hlo`: size of the StableHLO text (characters),
- `run`: one evaluation after compilation,

for the looped net and (up to `--unrolled-max`) for the unrolled serial net.  The loop's body
is compiled once, so its compile time and program size stay flat as n grows while the unrolled
net's grow linearly.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import ntc
from ntc import stax


def measure(net, x) -> dict:
    t0 = time.perf_counter()
    plan = ntc.compile(net, x.shape, ('nngp', 'ntk'))
    t1 = time.perf_counter()
    lowered = plan.fn.lower(x, None)
    text = lowered.as_text()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    jax.block_until_ready(compiled(x, None))
    t4 = time.perf_counter()
    return dict(passes=t1 - t0, trace_lower=t2 - t1, xla=t3 - t2, hlo=len(text), run=t4 - t3)


def block():
    return stax.serial(stax.Dense(64, 1.4, 0.1), stax.Relu())


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--depths', type=int, nargs='+', default=[10, 100, 1000])
    ap.add_argument('--unrolled-max', type=int, default=100,
                    help='largest depth also compiled unrolled (slow: linear in depth)')
    ap.add_argument('--json', help='write the rows to this file')
    args = ap.parse_args(argv)
    x = np.random.RandomState(0).randn(8, 16).astype(np.float32)
    rows = []
    print(f'{"depth":>6} {"net":>9} {"passes s":>9} {"trace+lower s":>14} {"xla s":>8} '
          f'{"hlo chars":>10} {"run ms":>8}')
    for n in args.depths:
        nets = [('repeat', stax.serial(stax.Dense(64), stax.repeat(block(), n), stax.Dense(1)))]
        if n <= args.unrolled_max:
            nets.append(('unrolled', stax.serial(stax.Dense(64), *[block()] * n, stax.Dense(1))))
        for name, net in nets:
            r = dict(depth=n, net=name, **measure(net, x))
            rows.append(r)
            print(f'{n:>6} {name:>9} {r["passes"]:>9.3f} {r["trace_lower"]:>14.3f} '
                  f'{r["xla"]:>8.3f} {r["hlo"]:>10} {1e3 * r["run"]:>8.2f}', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
