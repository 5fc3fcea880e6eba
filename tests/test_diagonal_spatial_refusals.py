"""`diagonal_spatial=True` where the output has no spatial axes (NT's DiagonalTest, issue 15):
there the flag cannot ask for a layout, so it can only mean NT's reading, the kernel computed
from the spatial diagonals alone.  A layer that reads the covariance of every pair of positions
(global or local average pooling of a spatial value) cannot give it, and kernel_fn raises a
ValueError, as NT 0.6.5 does on these networks (observed with ../shared/bench/side_by_side.sh).
Where the flag is meaningful the kernels stay NT's."""

import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import InputError, NtcError

X1 = np.random.RandomState(0).randn(2, 5, 6, 3)
X2 = np.random.RandomState(1).randn(3, 5, 6, 3)


def conv_stack(readin, readout):
    """NT's DiagonalTest network: readin, Conv(SAME), Relu, Conv(SAME), Erf, readout."""
    fs = (2, 3) if readin is stax.Identity else ()
    return stax.serial(readin(), stax.Conv(1, fs, padding='SAME'), stax.Relu(),
                       stax.Conv(1, fs, padding='SAME'), stax.Erf(), readout())


REFUSED = {
    'conv-GAP': (conv_stack(stax.Identity, stax.GlobalAvgPool), 'serial[5].GlobalAvgPool'),
    'dense-GAP': (stax.serial(stax.Dense(2), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)),
                  'serial[2].GlobalAvgPool'),
    'conv1x1-GAP': (stax.serial(stax.Conv(2, (1, 1)), stax.Relu(), stax.GlobalAvgPool()),
                    'serial[2].GlobalAvgPool'),
    'avgpool-flatten': (stax.serial(stax.Conv(2, (2, 2)), stax.Relu(), stax.AvgPool((2, 2)),
                                    stax.Flatten()), 'serial[2].AvgPool'),
}


@pytest.mark.parametrize('name', sorted(REFUSED))
@pytest.mark.parametrize('x2', [None, X2], ids=['same', 'other'])
def test_pooling_of_positions_without_spatial_output_is_refused(name, x2):
    net, path = REFUSED[name]
    with pytest.raises(InputError) as info:
        net.kernel_fn(X1, x2, diagonal_spatial=True)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, NtcError)
    assert err.path == path
    assert 'drop diagonal_spatial=True' in str(err)
    assert '\n' not in str(err)
    # without the flag the network is fine
    assert net.kernel_fn(X1, x2, 'nngp').shape == (2, 2 if x2 is None else 3)


def test_compile_refuses_too():
    net, path = REFUSED['conv-GAP']
    with pytest.raises(InputError, match='diagonal_spatial'):
        ntc.compile(net, X1.shape, 'nngp', diagonal_spatial=True)


def test_global_pooling_read_in_is_refused():
    """GlobalAvgPool of the input reads every pair of input positions too.  (NT returns a
    kernel there that takes the input's off-diagonal spatial covariances as zero; ntc refuses
    rather than return another kernel than the network's, see docs/porting.md.)"""
    net = conv_stack(stax.GlobalAvgPool, stax.Flatten)
    with pytest.raises(InputError, match='GlobalAvgPool'):
        net.kernel_fn(X1, X2, diagonal_spatial=True)


@pytest.mark.parametrize('readin', [stax.Identity, stax.Flatten], ids=['id', 'flatten'])
def test_flatten_readout_gives_the_kernel_without_the_flag(readin):
    """Flatten averages the diagonal only: the same kernel with or without the flag (NT)."""
    net = conv_stack(readin, stax.Flatten)
    for x2 in (None, X2):
        diag = net.kernel_fn(X1, x2, ('nngp', 'ntk'), diagonal_spatial=True)
        full = net.kernel_fn(X1, x2, ('nngp', 'ntk'))
        for a, b in zip(diag, full):
            assert a.shape == (2, 2 if x2 is None else 3)
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_spatial_output_returns_the_diagonal_layout():
    """Output with spatial axes: (N1, N2, H, W), the diagonal of the full kernel (NT); also
    after AvgPool, which NT refuses (a documented difference: ntc computes the full
    covariance inside and returns the diagonal asked for)."""
    for readout in (stax.Identity, lambda: stax.AvgPool((2, 2), padding='SAME')):
        net = conv_stack(stax.Identity, readout)
        full = net.kernel_fn(X1, X2, 'nngp')
        diag = net.kernel_fn(X1, X2, 'nngp', diagonal_spatial=True)
        assert diag.shape == (2, 3, 5, 6)
        np.testing.assert_allclose(diag, np.einsum('abiijj->abij', full), rtol=1e-12,
                                   atol=1e-14)
