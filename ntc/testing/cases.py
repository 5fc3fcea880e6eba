"""CASES: one test case (or a few) per op kind, so every kernel rule is checked.

Adding a layer = adding ONE entry here, keyed by its op kind (the `op` field of its model):

    'MyLayer': [Case(stax.MyLayer(...), DENSE)],

`Case(layer, input_shape)` wraps `layer` as  affine(width) -> layer -> readout  (Dense(8) on
vectors; Conv(8, 3, SAME) on images, then Flatten and Dense(4)) and `ntc.testing.check_layer`
runs on it: Monte-Carlo against the finite network with hidden widths 512, in both
parameterizations, plus the reference lowering, symmetry, PSD, batching, layout and spec
invariants.  Options:

- `wrap=False`: `layer` is already a whole test network (needed for fan-ins, readout-like
  layers, or ops produced by passes such as `Affine` and `Transpose`);
- `finite=net`: a surrogate whose finite network has the same kernels (ops with no finite form);
- `x2=False`: test K(x, x) only (Dropout: a second batch would share its masks);
- `mc=False`: no finite network can estimate the kernel (say why in `note`);
- `width=128`: a smaller Monte-Carlo width (one-hidden-layer nets are unbiased at any width,
  so only the variance grows; convolutions at width 512 are slow on CPU);
- `get=('nngp',)`: Monte-Carlo on the NNGP only (when width x width layers make the empirical
  NTK too slow for CI).

`tests/test_harness_coverage.py` fails when an op kind in `KERNEL_RULES` has no entry here, and
the entry's network must contain that kind (in its source graph or its optimised plan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import stax
from ..net import Net

DENSE = (-1, 4)          # 4 features
IMAGE1 = (-1, 5, 2)      # 5 positions, 2 channels
IMAGE2 = (-1, 4, 3, 2)   # 4 x 3 positions, 2 channels


@dataclass(frozen=True)
class Case:
    """A test network for one op kind; see the module docstring."""

    layer: Net
    input_shape: tuple[int, ...] = DENSE
    wrap: bool = True
    finite: Net | None = None
    x2: bool = True
    mc: bool = True
    get: tuple[str, ...] = ('nngp', 'ntk')
    width: int | None = None
    note: str = ''


def _vec(*layers: Net) -> Net:
    """A whole test net on vectors: Dense(8) -> layers -> Dense(4)."""
    return stax.serial(stax.Dense(8, 1.2, 0.3), *layers, stax.Dense(4))


@stax.layer
def _nt_double():
    """An NT-style custom layer (one opaque `NTLayer` node): x -> 2x, so its kernels are 4 K."""
    def kernel_fn(k, **kwargs):
        def times4(x):
            return None if x is None else 4 * x
        return k.replace(nngp=times4(k.nngp), ntk=times4(k.ntk), cov1=times4(k.cov1),
                         cov2=times4(k.cov2))

    return (lambda key, shape: (shape, ())), (lambda params, x, **kwargs: 2 * x), kernel_fn


CONV_WIDTH = 128   # every image case below has one hidden layer: unbiased at any width


def _img(*layers: Net, dims: int = 1) -> Net:
    """A whole test net on images: Conv(8, SAME) -> Relu -> layers (ending in a readout)."""
    return stax.serial(stax.Conv(8, (3,) * dims, padding='SAME', W_std=1.2, b_std=0.3),
                       stax.Relu(), *layers)


def _branches(join: Net, a: Net, b: Net) -> Net:
    return stax.serial(stax.FanOut(2), stax.parallel(a, b), join)


def _exp_normalized_surrogate(gamma: float, shift: float) -> Net:
    """Inputs of equal norm after Dense(8, 1, 0) have variance q = 1 at every unit, and then
    φ(u) = exp(√γ·u + γ(shift - 1)/2) has E[φφ] = exp(γ(ρ + shift)) = ExpNormalized's kernel
    and E[φ'φ'] = γ·exp(γ(ρ + shift)), its derivative kernel."""
    return stax.serial(stax.Dense(8, 1.0, 0.0), stax.Exp(math.exp(gamma * (shift - 1) / 2),
                                                         math.sqrt(gamma)), stax.Dense(4))


def _sin(x):
    import jax.numpy as jnp
    return jnp.sin(x)


def _sin_nngp(c12, q1, q2):
    """E[sin(u) sin(v)] = exp(-(q1 + q2)/2)·sinh(c12) for (u, v) Gaussian (an independent
    closed form; the NTK part comes from its derivative by autodiff)."""
    import jax.numpy as jnp
    return jnp.exp(-(q1 + q2) / 2) * jnp.sinh(c12)


def _numerical_fn(x):
    import jax.numpy as jnp
    return jnp.tanh(x)


PADDINGS = ('SAME', 'VALID', 'CIRCULAR')
_SWAP = ('NHWC', 'HWIO', 'NWHC')  # the output swaps the two spatial axes

CASES: dict[str, list[Case]] = {
    # -- affine and structure
    'Dense': [Case(stax.Dense(8, 0.9, 0.4))],
    'Affine': [Case(stax.serial(stax.Dense(8, 1.3, 0.2), stax.Dense(8, 0.8, 0.5)),
                    note='canonicalize folds Dense∘Dense into Affine')],
    'Identity': [Case(stax.Identity())],
    'Conv': [Case(_img(stax.Conv(4, (3,), (s,), p, 0.9, 0.2), stax.Flatten()), IMAGE1,
                  wrap=False, width=CONV_WIDTH) for p in PADDINGS for s in (1, 2)]
    + [Case(_img(stax.Conv(4, (2, 3), (2, 1), p, 1.1), stax.Flatten(), dims=2), IMAGE2,
            wrap=False, width=CONV_WIDTH)
       for p in PADDINGS],
    'ConvTranspose': [Case(_img(stax.ConvTranspose(4, (3,), (s,), p, 0.9, 0.2),
                                stax.Flatten()), IMAGE1, wrap=False, width=CONV_WIDTH)
                      for p in PADDINGS for s in (1, 2)],
    'AvgPool': [Case(_img(stax.AvgPool((2,), (s,), p, normalize_edges=e), stax.Flatten(),
                          stax.Dense(4)), IMAGE1, wrap=False, width=CONV_WIDTH)
                for p in ('SAME', 'VALID') for s, e in ((1, False), (2, True))],
    'SumPool': [Case(_img(stax.SumPool((3,), (2,), p), stax.Flatten(), stax.Dense(4)), IMAGE1,
                     wrap=False, width=CONV_WIDTH) for p in ('SAME', 'VALID')],
    'GlobalAvgPool': [Case(_img(stax.GlobalAvgPool(), stax.Dense(4), dims=2), IMAGE2,
                           wrap=False, width=CONV_WIDTH)],
    'GlobalSumPool': [Case(_img(stax.GlobalSumPool(), stax.Dense(4)), IMAGE1, wrap=False,
                           width=CONV_WIDTH)],
    'Flatten': [Case(_img(stax.Flatten(), stax.Dense(4), dims=2), IMAGE2, wrap=False,
                     width=CONV_WIDTH)],
    'Transpose': [Case(stax.serial(
        stax.Conv(8, (3, 3), padding='SAME', W_std=1.2), stax.FanOut(2),
        stax.parallel(stax.Conv(8, (3, 3), padding='SAME', dimension_numbers=_SWAP),
                      stax.Conv(8, (3, 3), padding='SAME')),
        stax.FanInSum(), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(4)), (-1, 3, 3, 2),
        wrap=False, width=CONV_WIDTH,
        note='branches in different axis orders meet: choose_axis_orders inserts a Transpose')],
    'FanInSum': [Case(_branches(stax.FanInSum(), stax.Dense(8, 1.1, 0.2), stax.Dense(8, 0.7)),
                      wrap=False, width=CONV_WIDTH)],
    'FanInProd': [Case(_branches(stax.FanInProd(), stax.Dense(8, 1.1, 0.2), stax.Dense(8, 0.7)),
                       wrap=False, width=CONV_WIDTH)],
    'FanInConcat': [Case(_branches(stax.FanInConcat(), stax.serial(stax.Dense(8), stax.Relu()),
                                   stax.serial(stax.Dense(8, 0.5, 0.5), stax.Erf())),
                         wrap=False, width=CONV_WIDTH),
                    Case(_img(stax.FanOut(2),
                              stax.parallel(stax.Conv(8, (3,), padding='SAME', W_std=0.8),
                                            stax.Conv(8, (1,), padding='SAME', b_std=0.5)),
                              stax.FanInConcat(axis=1), stax.Relu(), stax.Flatten(),
                              stax.Dense(4)), IMAGE1, wrap=False,
                         width=CONV_WIDTH, note='concatenation along space')],
    'LayerNorm': [Case(stax.serial(stax.LayerNorm(), stax.Relu()))],
    'Dropout': [Case(stax.serial(stax.Relu(), stax.Dropout(0.7)), x2=False)],
    # -- nonlinearities
    'Relu': [Case(stax.Relu())],
    'LeakyRelu': [Case(stax.LeakyRelu(0.2))],
    'ABRelu': [Case(stax.ABRelu(-0.4, 0.9))],
    'Abs': [Case(stax.Abs())],
    'Erf': [Case(stax.Erf(1.2, 0.8, 0.1))],
    'Sigmoid_like': [Case(stax.Sigmoid_like())],
    'Gelu': [Case(stax.Gelu())],
    'Sin': [Case(stax.Sin(1.1, 0.9, 0.3))],
    'Cos': [Case(stax.Cos(0.9, 1.1, -0.2))],
    'Exp': [Case(stax.Exp(0.8, 0.4))],
    'ExpNormalized': [Case(stax.serial(stax.Dense(8, 1.0, 0.0), stax.ExpNormalized(0.5, -1.0),
                                       stax.Dense(4)),
                           wrap=False, finite=_exp_normalized_surrogate(0.5, -1.0),
                           note='no finite form; surrogate Exp on unit-variance inputs')],
    'Gaussian': [Case(stax.Gaussian(0.9, -0.3))],
    'Rbf': [Case(stax.Rbf(0.4))],
    'Sign': [Case(stax.Sign())],
    'Gabor': [Case(stax.Gabor())],
    'Monomial': [Case(stax.Monomial(2))],
    'RectifiedMonomial': [Case(stax.RectifiedMonomial(2))],
    'Polynomial': [Case(stax.Polynomial([0.1, -0.5, 0.3]))],
    'Hermite': [Case(stax.Hermite(3))],
    'Elementwise': [Case(stax.Elementwise(fn=_sin, nngp_fn=_sin_nngp))],
    'ElementwiseNumerical': [Case(stax.ElementwiseNumerical(_numerical_fn, deg=25))],
    # -- added with issues 2-5
    'ConvLocal': [Case(_img(stax.ConvLocal(4, (3,), (s,), p, 0.9, 0.2), stax.Flatten()), IMAGE1,
                       wrap=False, width=CONV_WIDTH) for p, s in (('SAME', 1), ('VALID', 2))],
    'DotGeneral': [Case(stax.serial(stax.Relu(), stax.DotGeneral(rhs=2.5)))],
    'Index': [Case(_img(stax.Index(idx=stax.Slice[:, 1:4]), stax.Flatten(), stax.Dense(4)),
                   IMAGE1, wrap=False, width=CONV_WIDTH)],
    'ImageResize': [Case(_img(stax.ImageResize((-1, 8, -1), 'linear'), stax.Flatten(),
                              stax.Dense(4)), IMAGE1, wrap=False, width=CONV_WIDTH)],
    'Aggregate': [Case(_img(stax.Aggregate(), stax.Flatten(), stax.Dense(4)), IMAGE1, wrap=False,
                       width=CONV_WIDTH,
                       note='without a pattern (the harness passes no kernel_fn inputs) '
                       'Aggregate is the identity; MC with patterns, DENSE and SPARSE: '
                       'tests/test_graph_layers.py')],
    'NTLayer': [Case(stax.serial(stax.Relu(), _nt_double()))],
    'GlobalSelfAttention': [Case(stax.GlobalSelfAttention(256, 256, 64, 4, W_key_std=1.2,
                                                          W_value_std=1.1, b_std=0.2,
                                                          pos_emb_type='SUM'), IMAGE1,
                                 note='key/value/head widths written large: widening only '
                                 'changes Dense and Conv')],
}


def harness_net(case: Case) -> Net:
    """The whole test network of a case (the wrapped layer, or the layer itself)."""
    return around(case.layer, case.input_shape) if case.wrap else case.layer


def around(layer: Net, input_shape) -> Net:
    """affine(8, widened to the MC width) -> layer -> readout, for vectors or images."""
    if len(input_shape) == 2:
        return _vec(layer)
    n = len(input_shape) - 2
    return stax.serial(stax.Conv(8, (3,) * n, padding='SAME', W_std=1.2, b_std=0.3), layer,
                       stax.Flatten(), stax.Dense(4))


__all__ = ['CASES', 'Case', 'around', 'harness_net', 'DENSE', 'IMAGE1', 'IMAGE2']
