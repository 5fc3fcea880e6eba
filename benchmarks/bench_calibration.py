"""Calibration of the Monte-Carlo tolerance of `ntc.testing.check_against_monte_carlo`.

    python benchmarks/bench_calibration.py [--quick] [--seeds 200]

1. False-failure rate: on correct rules, run the check with `--seeds` different keys on a few
   test networks (dense and conv, both parameterizations) and count the seeds where it fails.
   The threshold k is the Bonferroni t quantile for alpha = 1e-4 over the entries compared,
   so the family-wise rate should stay well below 1%.
2. Error vs width x samples: the mean relative error of the Monte-Carlo estimate (over a few
   seeds) on a two-hidden-layer net, which has both sampling error (~1/sqrt(n)) and finite-width
   bias (~1/width), on a grid of widths and sample counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
jax.config.update('jax_enable_x64', True)

from ntc import stax  # noqa: E402
from ntc.testing.cases import CASES, harness_net  # noqa: E402
from ntc.testing.layer import example_inputs, with_parameterization  # noqa: E402
from ntc.testing.monte_carlo import check_against_monte_carlo, relative_error  # noqa: E402


def false_failures(seeds: int, n_samples: int) -> None:
    configs = [(f'{kind}[{p}]', with_parameterization(harness_net(CASES[kind][i]), p),
                CASES[kind][i].input_shape)
               for kind, i in (('Relu', 0), ('Erf', 0), ('LayerNorm', 0), ('Conv', 0))
               for p in ('ntk', 'standard')]
    print(f'false failures over {seeds} seeds ({n_samples} samples, width 512):')
    print(f'{"net":<22} {"failures":>8} {"rate":>7} {"max|z|":>7} {"k":>5} {"s/seed":>7}')
    total = runs = 0
    for name, net, shape in configs:
        x1, x2 = example_inputs(shape)
        t = time.time()
        reps = [check_against_monte_carlo(net, x1, x2, 512, n_samples, key=s)
                for s in range(seeds)]
        fails = sum(not r.ok for r in reps)
        total, runs = total + fails, runs + seeds
        print(f'{name:<22} {fails:>8} {fails / seeds:>7.2%} '
              f'{max(r.worst for r in reps):>7.2f} {reps[0].k:>5.2f} '
              f'{(time.time() - t) / seeds:>7.3f}', flush=True)
    print(f'{"all":<22} {total:>8} {total / runs:>7.2%}')


def error_grid(widths, samples, seeds: int) -> None:
    net = stax.serial(stax.Dense(8, 1.3, 0.2), stax.Relu(), stax.Dense(8, 1.1, 0.1), stax.Erf(),
                      stax.Dense(4))
    x1, x2 = example_inputs((-1, 4))
    print(f'\nmean relative error of the MC estimate (NNGP and NTK), {seeds} seeds')
    print('width \\ samples ' + ''.join(f'{n:>10}' for n in samples))
    for w in widths:
        errs = [np.mean([relative_error(check_against_monte_carlo(net, x1, x2, w, n, key=s))
                         for s in range(seeds)]) for n in samples]
        print(f'{w:<16}' + ''.join(f'{e:>10.4f}' for e in errs), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='20 seeds, a small grid')
    ap.add_argument('--seeds', type=int, default=200)
    ap.add_argument('--samples', type=int, default=128)
    args = ap.parse_args(argv)
    seeds = 20 if args.quick else args.seeds
    false_failures(seeds, args.samples)
    if args.quick:
        error_grid((32, 128), (16, 64), 2)
    else:
        error_grid((32, 128, 512), (16, 64, 256), 4)


if __name__ == '__main__':
    main()
