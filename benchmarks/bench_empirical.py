"""Time the two empirical-NTK implementations of `ntc.runtime.empirical` on a few networks.

    python benchmarks/bench_empirical.py [--quick] [--float32]

For each network (wide vs deep MLPs, a small CNN; few vs many outputs) it jits
`empirical_ntk_fn(..., implementation=1)` (Jacobian contraction) and `implementation=2`
(NTK-vector products), checks they agree, and reports the median wall time of a call, which
one is faster, and which one `implementation=0` (AUTO, XLA's FLOP count) picks.  Expectation
(Novak et al. 2022, "Fast finite width neural tangent kernel"): Jacobian contraction wins when
the forward pass is expensive relative to the parameter count (convolutions, few outputs);
NTK-vector products win for fully-connected layers and many outputs, where contracting the
Jacobians (outputs² x parameters) dominates.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ntc.runtime.empirical import empirical_ntk_fn  # noqa: E402


def mlp(width: int, depth: int, outputs: int, d_in: int):
    """Erf MLP in NTK parameterisation; returns (params, apply)."""
    sizes = [d_in] + [width] * depth + [outputs]
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
    params = [{'w': jax.random.normal(k, (a, b)), 'b': jnp.zeros(b)}
              for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def apply(p, x):
        for i, layer in enumerate(p):
            x = x @ layer['w'] / math.sqrt(layer['w'].shape[0]) + 0.1 * layer['b']
            if i < len(p) - 1:
                x = jax.scipy.special.erf(x)
        return x

    return params, apply


def cnn(channels: int, outputs: int):
    """Three 3x3 SAME convolutions on 16x16x3 images, global average pooling, dense readout."""
    shapes = [(3, 3, 3, channels), (3, 3, channels, channels), (3, 3, channels, channels)]
    keys = jax.random.split(jax.random.PRNGKey(1), len(shapes) + 1)
    params = {'convs': [jax.random.normal(k, s) for k, s in zip(keys, shapes)],
              'dense': jax.random.normal(keys[-1], (channels, outputs))}

    def apply(p, x):
        for w in p['convs']:
            fan_in = w.shape[0] * w.shape[1] * w.shape[2]
            x = jax.lax.conv_general_dilated(x, w / math.sqrt(fan_in), (1, 1), 'SAME',
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
            x = jax.nn.relu(x)
        return jnp.mean(x, axis=(1, 2)) @ p['dense'] / math.sqrt(x.shape[-1])

    return params, apply


def timed(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))             # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smaller networks, one repeat')
    parser.add_argument('--float32', action='store_true', help='run in float32 (default 64)')
    args = parser.parse_args(argv)
    jax.config.update('jax_enable_x64', not args.float32)
    scale = 4 if args.quick else 1
    repeats = 1 if args.quick else 3
    n = 16 if args.quick else 32
    rng = np.random.RandomState(0)
    x_vec = jnp.asarray(rng.randn(n, 16))
    x_img = jnp.asarray(rng.randn(n // 2, 16, 16, 3))

    wide1, wide2 = 4096 // scale, 1024 // scale
    depth = 8 // (2 if args.quick else 1)
    channels = 32 // (2 if args.quick else 1)
    cases = []
    for outputs in (1, 10):
        cases.append((f'wide MLP w={wide1} d=1', *mlp(wide1, 1, outputs, 16), x_vec))
    # many outputs: Jacobians of N x 100 x params floats, so fewer examples and a narrower net
    cases.append((f'wide MLP w={wide2} d=1', *mlp(wide2, 1, 100, 16), x_vec[:16]))
    for outputs in (1, 10):
        cases.append((f'wide MLP w={wide2} d=2', *mlp(wide2, 2, outputs, 16), x_vec))
    for outputs in (1, 10):
        cases.append((f'deep MLP w=128 d={depth}', *mlp(128, depth, outputs, 16), x_vec))
    for outputs in (1, 10):
        cases.append((f'CNN c={channels} 3 convs', *cnn(channels, outputs), x_img))
    print(f'{jax.devices()[0].platform} backend, '
          f'{"float32" if args.float32 else "float64"}, median of {repeats} calls, '
          'kernel over all output channels averaged (trace_axes=(-1,))')
    header = (f'{"network":23} {"outputs":>7} {"params":>9} {"N":>4} {"jacobian [s]":>12} '
              f'{"ntk-vp [s]":>11} {"faster":>13} {"auto picks":>13}')
    print(header)
    print('-' * len(header))
    for name, params, apply, x in cases:
        n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
        outputs = jax.eval_shape(apply, params, x).shape[-1]
        fns = {impl: jax.jit(empirical_ntk_fn(apply, vmap_axes=0, implementation=impl))
               for impl in (1, 2)}
        t_jc = timed(fns[1], x, None, params, repeats=repeats)
        t_vp = timed(fns[2], x, None, params, repeats=repeats)
        k1, k2 = fns[1](x, None, params), fns[2](x, None, params)
        err = float(jnp.max(jnp.abs(k1 - k2)) / jnp.max(jnp.abs(k1)))
        tol = 1e-4 if args.float32 else 1e-10
        if not err < tol:
            print(f'  implementations disagree on {name}: relative error {err:.2e}')
            return 1
        auto = empirical_ntk_fn(apply, vmap_axes=0, implementation=0)
        auto(x, None, params)
        picked = next(iter(auto.chosen.values()))
        faster = 'jacobian' if t_jc < t_vp else 'ntk-vp'
        ratio = max(t_jc, t_vp) / min(t_jc, t_vp)
        print(f'{name:23} {outputs:>7} {n_params:>9} {x.shape[0]:>4} {t_jc:>12.4f} '
              f'{t_vp:>11.4f} {faster:>8} {ratio:>3.1f}x '
              f'{"jacobian" if picked == 1 else "ntk-vp":>13}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
