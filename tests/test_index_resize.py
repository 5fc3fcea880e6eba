"""Index / Slice, ImageResize and DotGeneral: independent formulas, neural-tangents fixtures
(ImageResize up to NT's axis swap), errors, layouts, the reference lowering and Monte-Carlo.

NT fixtures for `index_*` and `dotgeneral_*` are checked in tests/test_nt_fixtures.py."""

import json
from pathlib import Path

import numpy as np
import pytest

from ntc import stax
from ntc.api import compile as compile_plan
from ntc.errors import NoClosedFormError, ShapeError, ValidationError
from ntc.ir.graph import Graph
from tests.mc_check import assert_monte_carlo_agrees
from tests.nt_zoo import ZOO

DATA = Path(__file__).parent / 'data' / 'nt'
RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(2, 4, 3, 2), RNG.randn(3, 4, 3, 2)


def input_kernel(x1, x2):
    """The input covariance (N1, N2, H, H', W, W'): <x1, x2> / channels per pair of positions."""
    return np.einsum('iabc,jdec->ijadbe', x1, x2) / x1.shape[-1]


def conv_relu(*layers, width=8):
    return stax.serial(stax.Conv(width, (2, 2), padding='SAME', W_std=1.3, b_std=0.1),
                       stax.Relu(), *layers)


# ----------------------------------------------------------------------------- ImageResize

# NT resizes its kernel in input axis order even when, after an odd number of Conv layers, its
# kernel stores the axes reversed (`is_reversed`): it resizes W to the H size and H to the W
# size, which is not the kernel of its own finite network.  ntc's kernel is that of the finite
# network (Monte-Carlo below); fed the spatially transposed inputs, ntc reproduces NT's numbers
# exactly, which pins down the resize arithmetic.  name -> ntc net on transposed inputs.
RESIZE_CASES = {
    'image_resize_linear_up': None, 'image_resize_nearest_up': None,
    'image_resize_linear_down': None, 'image_resize_linear_down_noaa': None,
    'image_resize_then_relu': None, 'image_resize_linear_spatial_out': None,
    'image_resize_nearest_down_spatial_out': lambda s: s.serial(
        s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
        s.ImageResize((-1, 2, 3, -1), 'nearest')),
}


@pytest.mark.parametrize('name', sorted(RESIZE_CASES))
def test_resize_matches_neural_tangents_with_its_axis_swap(name):
    data = np.load(DATA / f'{name}.npz')
    builder = RESIZE_CASES[name] or ZOO[name][0]
    x1, x2 = data['x1'].transpose(0, 2, 1, 3), data['x2'].transpose(0, 2, 1, 3)
    _, _, kf = builder(stax)
    got = kf(x1, x2, ('nngp', 'ntk'))
    for g, v in zip(('nngp', 'ntk'), got):
        want = data[f'{g}_12']  # NT's own (reversed) axis order is ntc's order on x.T
        assert v.shape == want.shape
        np.testing.assert_allclose(v, want, rtol=1e-8, atol=1e-8 * np.max(np.abs(want)))
    assert json.loads((DATA / 'index.json').read_text())[name]['is_reversed'] \
        or RESIZE_CASES[name] is None


def test_resize_kernel_is_resize_on_both_sides():
    """Upsampling 4 -> 6 along H with 'linear': K' = R K Rᵀ, R the resize matrix (the resize of
    the identity), on the raw input."""
    import jax
    r = np.asarray(jax.image.resize(np.eye(4), (6, 4), 'linear'))  # column j = R e_j
    _, _, kf = stax.ImageResize((-1, 6, -1, -1), 'linear')
    want = np.einsum('ka,ijadbe,ld->ijklbe', r, input_kernel(X1, X2), r)
    np.testing.assert_allclose(kf(X1, X2, 'nngp'), want, atol=1e-13)


def test_resize_methods_without_a_kernel():
    init_fn, apply_fn, kf = conv_relu(stax.ImageResize((-1, 6, 5, -1), 'cubic'))
    with pytest.raises(NoClosedFormError,
                       match="serial\\[2\\].ImageResize.*'linear' and 'nearest'"):
        kf(X1, X2, 'nngp')
    _, params = init_fn(np.array([0, 1], np.uint32), X1.shape)
    assert apply_fn(params, X1).shape == (2, 6, 5, 8)   # the finite network works
    with pytest.raises(NoClosedFormError, match='channel'):
        stax.ImageResize((-1, -1, -1, 5), 'linear')[2](X1, X2, 'nngp')
    with pytest.raises(ShapeError, match='batch'):
        stax.ImageResize((4, -1, -1, -1), 'linear')[2](X1, X2, 'nngp')
    with pytest.raises(ValidationError, match='resize method'):
        stax.ImageResize((-1, 2, 2, -1), 'bogus')


# ----------------------------------------------------------------------------- Index


def test_index_selects_kernel_entries():
    """Index is a selection: its kernel is the un-indexed kernel, indexed (batch, spatial,
    integer) - compared on a spatial-output net."""
    base = conv_relu()
    full = base[2](X1, X2, ('nngp', 'ntk'))
    cases = [(stax.Slice[:, ::-1, 1:], lambda k: k[:, :, ::-1, ::-1, 1:, 1:]),
             (stax.Slice[::2, 2], lambda k: k[::2, ::2, 2, 2]),
             (stax.Slice[..., 1, :], lambda k: k[:, :, :, :, 1, 1]),
             (stax.Slice[1:], lambda k: k[1:, 1:])]
    for idx, select in cases:
        got = conv_relu(stax.Index(idx))[2](X1, X2, ('nngp', 'ntk'))
        for g, v in zip(got, full):
            np.testing.assert_allclose(g, select(np.asarray(v)), rtol=1e-12)


def test_index_errors_and_layout():
    with pytest.raises(NoClosedFormError, match='serial\\[2\\].Index.*channel axis'):
        conv_relu(stax.Index(stax.Slice[..., :2]))[2](X1, X2, 'nngp')
    with pytest.raises(NoClosedFormError, match='batch axis'):  # NT: NotImplementedError
        conv_relu(stax.Index(stax.Slice[0]))[2](X1, X2, 'nngp')
    with pytest.raises(ShapeError, match='selects nothing'):
        conv_relu(stax.Index(stax.Slice[:, 7:]))[2](X1, X2, 'nngp')
    with pytest.raises(ValidationError, match='newaxis'):
        stax.Index(stax.Slice[None])
    # spatially local: a DIAG covariance passes through Index (and the int drops an axis)
    net = stax.serial(conv_relu(stax.Index(stax.Slice[:, 1:, 0])), stax.Dense(4), stax.Relu(),
                      stax.Flatten(), stax.Dense(1))
    plan = compile_plan(net, X1.shape)
    cov = {n.path: n.cov for n in plan.graph.nodes()}
    assert cov['serial[0].serial[1].Relu'].spatial == 'DIAG'
    assert cov['serial[0].serial[2].Index'].axis_order == (0,)
    g = plan.graph
    assert Graph.from_dict(g.to_dict()).to_dict() == g.to_dict()


# ----------------------------------------------------------------------------- DotGeneral


def test_dot_general_kernel_is_m_k_mt():
    k0 = input_kernel(X1, X2)
    m = RNG.randn(5, 4)
    # constant lhs contracting H: the constant's free axis comes first, the batch axis moves to 1
    _, _, kf = stax.DotGeneral(lhs=m, dimension_numbers=(((1,), (1,)), ((), ())))
    np.testing.assert_allclose(kf(X1, X2, 'nngp'),
                               np.einsum('ka,ijadbe,ld->ijklbe', m, k0, m), atol=1e-12)
    # constant rhs with a free axis: (N, H, C) x (W, 2) -> (N, H, C, 2), channel stays at 2
    r = RNG.randn(3, 2)
    net = stax.DotGeneral(rhs=r, dimension_numbers=(((2,), (0,)), ((), ())), channel_axis=-1)
    got = net[2](X1, X2, 'nngp')
    np.testing.assert_allclose(got, np.einsum('bk,ijadbe,el->ijadkl', r, k0, r), atol=1e-12)
    # batch (diagonal) dimension on W: y[w, n, h, c] = x[n, h, w, c] v[w]
    v = RNG.randn(3)
    _, _, kf = stax.DotGeneral(rhs=v, dimension_numbers=(((), ()), ((2,), (0,))))
    want = np.einsum('b,ijadbe,e->ijbead', v, k0, v)  # output (W, N, H, C): pairs (W, H)
    np.testing.assert_allclose(kf(X1, X2, 'nngp'), want, atol=1e-12)
    # a scalar scales every covariance by its square and keeps DIAG layouts
    _, _, kf = stax.DotGeneral(lhs=-0.5)
    np.testing.assert_allclose(kf(X1, X2, 'nngp'), 0.25 * k0, atol=1e-13)


def test_dot_general_errors():
    with pytest.raises(ShapeError, match='channel axis'):
        stax.DotGeneral(rhs=np.ones(2), dimension_numbers=(((3,), (0,)), ((), ())))[2](X1)
    with pytest.raises(ShapeError, match='batch axis'):
        stax.DotGeneral(rhs=np.ones(2), dimension_numbers=(((0,), (0,)), ((), ())))[2](X1)
    with pytest.raises(ValidationError, match='at most one'):
        stax.DotGeneral(lhs=1.0, rhs=2.0)


@pytest.mark.parametrize('x2', [X2, None])
def test_optimised_plan_equals_reference_lowering(x2):
    net = conv_relu(stax.Index(stax.Slice[::2, ::-1, 1:]), stax.ImageResize((-1, 5, 3, -1),
                                                                            'nearest'),
                    stax.Conv(4, (2, 2), padding='SAME'), stax.Relu(),
                    stax.DotGeneral(rhs=np.array([1., -0.5, 0.3]),
                                    dimension_numbers=(((2,), (0,)), ((), ()))),
                    stax.DotGeneral(rhs=1.5))
    get = ('nngp', 'ntk', 'cov1', 'cov2')
    got = compile_plan(net, X1.shape, get).raw(X1, x2)
    want = compile_plan(net, X1.shape, get, reference=True).raw(X1, x2)
    for g in get:
        np.testing.assert_allclose(got[g], want[g], rtol=1e-12, atol=1e-14)


def test_monte_carlo_agreement():
    """The three layers in one net against its finite network (NNGP; these layers have no
    parameters, so their NTK rule is the same map, checked exactly against NT's fixtures)."""
    net = conv_relu(stax.Index(stax.Slice[:, ::-1, 1:]),
                    stax.ImageResize((-1, 5, 3, -1), 'linear'),
                    stax.Conv(128, (2, 2), padding='SAME', W_std=1.2, b_std=0.1), stax.Relu(),
                    stax.DotGeneral(rhs=np.array([1., -0.5, 0.3]),
                                    dimension_numbers=(((2,), (0,)), ((), ()))),
                    stax.Dense(32, 1.1, 0.1), width=128)
    assert_monte_carlo_agrees(net, X1, X2, n_samples=64, get=('nngp',))
