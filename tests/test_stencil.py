"""The one-pass window sum over several axis pairs equals the pair-by-pair sums."""

import numpy as np
import pytest

from ntc.covariance.stencil import diagonal_window_sum, diagonal_window_sum_nd


@pytest.mark.parametrize('k, stride, lo, hi, interior, circular', [
    ((3, 3), (1, 1), (1, 1), (1, 1), (0, 0), False),  # SAME 3×3
    ((3, 2), (2, 1), (1, 0), (1, 1), (0, 0), False),  # strided, uneven pads
    ((2, 3), (1, 1), (1, 2), (1, 2), (1, 1), False),  # input dilation (transposed conv)
    ((3, 3), (1, 2), (1, 1), (1, 1), (0, 0), True),  # circular
    ((1, 4), (1, 1), (0, 0), (0, 0), (0, 0), False),  # VALID
])
def test_one_pass_equals_pair_by_pair(k, stride, lo, hi, interior, circular):
    x = np.random.RandomState(0).randn(2, 3, 6, 6, 5, 5)
    want = x
    for axis, args in zip((2, 4), zip(k, stride, lo, hi)):
        want = diagonal_window_sum(want, axis, *args, circular, interior[(axis - 2) // 2])
    pairs = [(axis, *args) for axis, args in zip((2, 4), zip(k, stride, lo, hi, interior))]
    got = diagonal_window_sum_nd(x, pairs, circular)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
