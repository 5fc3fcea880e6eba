"""NT's kernel composition for a network with several inputs and outputs: the nested tuple of
Kernels one `kernel_fn` returns is the input of the next, `readout(readin(x1, x2))` equals the
kernel of `serial(readin, readout)`, also under `jit` and through `ntc.batch` (both stages)."""

from functools import partial

import jax
import numpy as np
import pytest

import ntc
from ntc import stax


def branches(n):
    return stax.parallel(stax.Dense(n), stax.parallel(stax.Dense(n + 1), stax.Dense(n + 2)))


def close(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope='module')
def inputs():
    r = np.random.RandomState(0)
    x1 = (r.randn(4, 3), (r.randn(4, 3), r.randn(4, 3)))
    x2 = (r.randn(5, 3), (r.randn(5, 3), r.randn(5, 3)))
    return x1, x2


@pytest.mark.parametrize('get', ['nngp', ('nngp', 'ntk'), None])
@pytest.mark.parametrize('same', [True, False])
def test_composition_equals_serial(inputs, get, same):
    x1, x2 = inputs
    x2 = None if same else x2
    readin, readout = branches(16), branches(1)
    expected = stax.serial(readin, readout).kernel_fn(x1, x2, get)
    composed = jax.jit(partial(readout.kernel_fn, get=get))(jax.jit(readin.kernel_fn)(x1, x2))
    if get is None:     # Kernels: compare their kernels
        def pick(k):
            return k.nngp, k.ntk
        expected = jax.tree_util.tree_map(pick, expected, is_leaf=lambda v: hasattr(v, 'nngp'))
        composed = jax.tree_util.tree_map(pick, composed, is_leaf=lambda v: hasattr(v, 'nngp'))
    close(composed, expected)


@pytest.mark.parametrize('get', ['nngp', ('nngp', 'ntk')])
@pytest.mark.parametrize('same', [True, False])
def test_batched_composition(inputs, get, same):
    x1, x2 = inputs
    x2 = None if same else x2
    readin, readout = branches(16), branches(1)
    k_in, k_out = jax.jit(readin.kernel_fn), jax.jit(partial(readout.kernel_fn, get=get))
    expected = k_out(k_in(x1, x2))
    got = ntc.batch(k_out, 2)(ntc.batch(k_in, 2)(x1, x2))
    close(got, expected)
