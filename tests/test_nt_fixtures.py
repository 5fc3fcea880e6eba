"""Exact float64 agreement with neural-tangents 0.6.5 on the fixture zoo (`tests/nt_zoo.py`).

The fixtures were computed by NT itself (`tests/data/make_nt_fixtures.py`).  Cases whose layers
ntc does not build yet are skipped; cases where ntc knowingly differs from NT are listed in
`DEVIATIONS` with the reason and the test that shows ntc is right; for those the test asserts
that the difference is still there (so a change of either side is noticed).

Convention: NT keeps a hidden `is_reversed` flag and, after an odd number of convolutions, returns
the spatial axis pairs of a spatial output in reversed order.  ntc always returns them in input
order, (N1, N2, S1, S1', S2, S2', ...), so the NT arrays are put back in input order before
comparison.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from ntc import stax
from tests.nt_zoo import ZOO, Pattern

DATA = Path(__file__).parent / 'data' / 'nt'
INDEX = json.loads((DATA / 'index.json').read_text())

# name -> why ntc differs from NT (each reason names the test that checks ntc's value).
DEVIATIONS = {
    'act_hermite_2': 'NT uses the c12^n approximation of the Hermite kernel, exact only for unit '
                     'variances; ntc uses the exact formula (tests/test_activation_math.py, MC)',
    'act_hermite_3': 'same as act_hermite_2',
    'act_hermite_4': 'same as act_hermite_2',
    'image_resize_linear_up': 'after an odd number of Convs NT stores the spatial axes reversed '
                              'but resizes in input order (H to W\'s size and back); ntc gives '
                              'the finite network\'s kernel (tests/test_index_resize.py: '
                              'Monte-Carlo, and exact agreement with NT on transposed inputs)',
}
DEVIATIONS.update({name: 'same as image_resize_linear_up' for name in (
    'image_resize_nearest_up', 'image_resize_linear_down', 'image_resize_linear_down_noaa',
    'image_resize_then_relu', 'image_resize_linear_spatial_out',
    'image_resize_nearest_down_spatial_out')})


def unreverse(k: np.ndarray, n_spatial: int) -> np.ndarray:
    """NT's reversed spatial pairs (N1, N2, Sd, Sd', ..., S1, S1') back to input order."""
    pairs = [(2 + 2 * i, 3 + 2 * i) for i in reversed(range(n_spatial))]
    return k.transpose(0, 1, *[a for p in pairs for a in p])


def nt_expected(name, key, data):
    k = data[key]
    info = INDEX[name]
    if info.get('is_reversed') and k.ndim > 2 and k.ndim % 2 == 0:
        k = unreverse(k, (k.ndim - 2) // 2)
    return k


def relative_error(got, want, what):
    got = np.asarray(got)
    want = np.broadcast_to(want, got.shape) if np.ndim(want) == 0 else want
    assert got.shape == want.shape, f'{what}: shape {got.shape} != NT {want.shape}'
    scale = max(np.max(np.abs(want)), 1e-300)
    return np.max(np.abs(got - want)) / scale


CASES = sorted(n for n in ZOO if (DATA / f'{n}.npz').exists())


@pytest.mark.parametrize('name', CASES)
def test_kernels_match_neural_tangents(name):
    builder, _, x2_shape, kwargs = ZOO[name]
    try:
        _, _, kernel_fn = builder(stax)
    except AttributeError as e:
        pytest.skip(f'layer not in ntc.stax yet: {e}')
    data = np.load(DATA / f'{name}.npz')
    x1 = data['x1']
    x2 = data.get('x2')
    kw = dict(kwargs)
    if isinstance(kw.get('pattern'), Pattern):
        kw12 = dict(kw, pattern=(data['pattern1'], data['pattern2'] if x2 is not None
                                 else data['pattern1']))
        kw11 = dict(kw, pattern=(data['pattern1'], data['pattern1']))
    else:
        kw12 = kw11 = kw
    checks = [('12', x2 if x2 is not None else x1, kw12), ('11', None, kw11)]
    for suffix, second, kwargs_ in checks:
        keys = [g for g in ('nngp', 'ntk') if f'{g}_{suffix}' in data]
        if not keys:
            continue
        got = kernel_fn(x1, second, tuple(keys), **kwargs_)
        for g, value in zip(keys, got):
            what = f'{name}.{g}_{suffix}'
            want = nt_expected(name, f'{g}_{suffix}', data)
            if name in DEVIATIONS and np.shape(value) != np.shape(want):
                continue  # NT's shape is part of the deviation
            err = relative_error(value, want, what)
            if name in DEVIATIONS:
                assert err > 1e-3, f'{what} now agrees with NT; remove it from DEVIATIONS'
            else:
                assert err <= 1e-8, f'{what}: relative error {err:.2e}'
