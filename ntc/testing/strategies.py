"""Hypothesis strategies that generate valid architectures (as `ntc.stax` nets) and inputs.

Validity is guaranteed by construction: a random affine layer precedes every nonlinearity and
LayerNorm, branches that are summed start with an affine layer of their own, and spatial sizes
are tracked so every window fits.  Generated nets print as the `ntc.stax` code that rebuilds
them, so a failing example is a copy-paste reproduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from .. import stax
from ..net import Net

# nonlinearities with parameter ranges that keep kernels well scaled for a few layers
ACTIVATIONS = {
    'Relu': lambda d: stax.Relu(),
    'LeakyRelu': lambda d: stax.LeakyRelu(d(st.floats(-0.5, 0.5))),
    'ABRelu': lambda d: stax.ABRelu(d(st.floats(-1, 1)), d(st.floats(-1, 1))),
    'Abs': lambda d: stax.Abs(),
    'Erf': lambda d: stax.Erf(d(st.floats(0.5, 2)), d(st.floats(0.3, 2)),
                              d(st.floats(-0.5, 0.5))),
    'Sigmoid_like': lambda d: stax.Sigmoid_like(),
    'Gelu': lambda d: stax.Gelu(),
    'Sin': lambda d: stax.Sin(d(st.floats(0.5, 1.5)), d(st.floats(0.3, 1.5)),
                              d(st.floats(-1, 1))),
    'Cos': lambda d: stax.Cos(d(st.floats(0.5, 1.5)), d(st.floats(0.3, 1.5)),
                              d(st.floats(-1, 1))),
    'Exp': lambda d: stax.Exp(d(st.floats(0.3, 1.0)), d(st.floats(-0.5, 0.5))),
    'Gaussian': lambda d: stax.Gaussian(d(st.floats(0.5, 1.5)), d(st.floats(-1, -0.1))),
    'Rbf': lambda d: stax.Rbf(d(st.floats(0.2, 1.0))),
    'Sign': lambda d: stax.Sign(),
    'Gabor': lambda d: stax.Gabor(),
    'Monomial': lambda d: stax.Monomial(d(st.integers(1, 3))),
    'RectifiedMonomial': lambda d: stax.RectifiedMonomial(d(st.integers(0, 3))),
    'Polynomial': lambda d: stax.Polynomial(d(st.lists(st.floats(-1, 1), min_size=1,
                                                            max_size=4))),
    'Hermite': lambda d: stax.Hermite(d(st.integers(1, 3))),
}

KINDS = tuple(ACTIVATIONS)


@dataclass
class _State:
    """Shape bookkeeping while a net is drawn."""

    spatial: list[int]
    channels: int


def _std(draw, lo=0.5, hi=2.0):
    return round(draw(st.floats(lo, hi)), 3)


def affine(draw, state: _State, *, width: int, kinds=('Dense', 'Conv')) -> Net:
    """A random Dense (or, on spatial inputs, Conv) layer with random parameters."""
    param = draw(st.sampled_from(['ntk', 'standard']))
    b_std = draw(st.one_of(st.none(), st.floats(0, 0.5).map(lambda v: round(v, 3))))
    use_conv = bool(state.spatial) and 'Conv' in kinds and (
        'Dense' not in kinds or draw(st.integers(0, 4)) > 0)  # Dense on images: per position
    if not use_conv:
        state.channels = width
        return stax.Dense(width, _std(draw), b_std, parameterization=param)
    filt, strides, padding = [], [], draw(st.sampled_from(['SAME', 'VALID', 'CIRCULAR']))
    new = []
    for n in state.spatial:
        k = draw(st.integers(1, min(3, n)))
        s = draw(st.integers(1, 2)) if n >= 4 else 1
        filt.append(k)
        strides.append(s)
        new.append((n - k) // s + 1 if padding == 'VALID' else -(-n // s))
    state.spatial, state.channels = new, width
    return stax.Conv(width, tuple(filt), tuple(strides), padding, _std(draw), b_std,
                     parameterization=param)


def activation(draw, kinds=None) -> Net:
    return ACTIVATIONS[draw(st.sampled_from(kinds or KINDS))](draw)


@st.composite
def dense_nets(draw, max_depth: int = 3, kinds=None, branches: bool = True) -> Net:
    """Dense stacks of random depth with random nonlinearities, parameterizations, stds,
    residual sums and concatenated branches; readout Dense."""
    state = _State(spatial=[], channels=0)
    layers = [affine(draw, state, width=8)]
    for _ in range(draw(st.integers(1, max_depth))):
        block = draw(st.sampled_from(['plain', 'residual', 'concat', 'layernorm'] if branches
                                     else ['plain']))
        if block == 'plain':
            layers += [activation(draw, kinds), affine(draw, state, width=8)]
        elif block == 'layernorm':
            layers += [stax.LayerNorm(), activation(draw, kinds), affine(draw, state, width=8)]
        elif block == 'residual':
            main = stax.serial(activation(draw, kinds), affine(draw, state, width=8))
            other = stax.Identity() if draw(st.booleans()) else affine(draw, state, width=8)
            layers += [stax.FanOut(2), stax.parallel(main, other), stax.FanInSum()]
        else:
            a = stax.serial(activation(draw, kinds), affine(draw, state, width=draw(
                st.integers(2, 8))))
            b = affine(draw, state, width=draw(st.integers(2, 8)))
            layers += [stax.FanOut(2), stax.parallel(a, b), stax.FanInConcat()]
            state.channels = 8  # any Dense follows
            layers.append(affine(draw, state, width=8))
    if draw(st.booleans()):
        layers += [activation(draw, kinds), affine(draw, state, width=1)]
    return stax.serial(*layers)


HEADS = ('flatten', 'gap', 'gsp', 'avgpool', 'sumpool', 'none')


@st.composite
def conv_nets(draw, spatial=(6, 5), max_depth: int = 3, kinds=None,
              heads=HEADS) -> tuple[Net, tuple[int, ...]]:
    """Conv stacks (all paddings, strides, filter shapes), optional residual blocks and
    spatial concatenation, and a pooling/Flatten/GAP head.  Returns (net, input_shape)."""
    state = _State(spatial=list(spatial), channels=2)
    layers = [affine(draw, state, width=4)]
    for _ in range(draw(st.integers(1, max_depth))):
        block = draw(st.sampled_from(['plain', 'residual', 'concat']))
        if block == 'plain':
            layers += [activation(draw, kinds), affine(draw, state, width=4)]
        elif block == 'residual':
            before = list(state.spatial)
            act = activation(draw, kinds)
            conv = stax.Conv(4, (3,) * len(before) if min(before) >= 3 else (1,) * len(before),
                             padding='SAME', W_std=_std(draw),
                             parameterization=draw(st.sampled_from(['ntk', 'standard'])))
            layers += [stax.FanOut(2), stax.parallel(stax.serial(act, conv), stax.Identity()),
                       stax.FanInSum()]
        else:
            axis = 1 + draw(st.integers(0, len(state.spatial) - 1))
            a = stax.Conv(4, (1,) * len(state.spatial), padding='SAME', W_std=_std(draw))
            b = stax.serial(activation(draw, kinds),
                            stax.Conv(4, (1,) * len(state.spatial), padding='SAME',
                                      W_std=_std(draw)))
            layers += [stax.FanOut(2), stax.parallel(a, b), stax.FanInConcat(axis=axis)]
            state.spatial[axis - 1] *= 2
            layers.append(affine(draw, state, width=4))
    head = draw(st.sampled_from(heads))
    act = activation(draw, kinds)
    if head == 'flatten':
        layers += [act, stax.Flatten(), stax.Dense(1, _std(draw))]
    elif head == 'gap':
        layers += [act, stax.GlobalAvgPool(), stax.Dense(1, _std(draw))]
    elif head == 'gsp':
        layers += [act, stax.GlobalSumPool(), stax.Dense(1, _std(draw))]
    elif head in ('avgpool', 'sumpool'):
        window = tuple(min(2, n) for n in state.spatial)
        padding = draw(st.sampled_from(['SAME', 'VALID']))
        pool = (stax.AvgPool(window, window, padding, normalize_edges=draw(st.booleans()))
                if head == 'avgpool' else stax.SumPool(window, window, padding))
        layers += [act, pool, stax.Flatten(), stax.Dense(1, _std(draw))]
    else:
        layers += [act]
    return stax.serial(*layers), (-1, *spatial, 2)


@st.composite
def inputs(draw, input_shape: tuple[int, ...], n1=(1, 4), n2=(1, 3)):
    """(x1, x2) float64 arrays fitting `input_shape` (x2 may be None)."""
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.RandomState(seed)
    a = draw(st.integers(*n1))
    feat = tuple(input_shape[1:])
    x1 = rng.randn(a, *feat)
    x2 = None if draw(st.booleans()) else rng.randn(draw(st.integers(*n2)), *feat)
    return x1, x2
