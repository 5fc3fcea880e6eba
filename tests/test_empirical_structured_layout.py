"""The shape of the structured empirical-NTK program (`ntc/runtime/structured.py`): im2col
patches for any convolution geometry, matrix products that reshape rather than transpose
operands already in matrix order, and one forward pass per side when the last layer's
cotangents are channel-factored."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ntc import stax
from ntc.runtime import structured
from ntc.runtime.empirical import NtkImplementation, empirical_ntk_fn

JC, SD = NtkImplementation.JACOBIAN_CONTRACTION, NtkImplementation.STRUCTURED_DERIVATIVES

GEOMETRIES = [  # (dimension_numbers, filter, strides, padding, lhs_dilation, rhs_dilation)
    (('NHWC', 'HWIO', 'NHWC'), (3, 3), (1, 1), 'SAME', (1, 1), (1, 1)),
    (('NHWC', 'HWIO', 'NHWC'), (3, 2), (2, 1), 'VALID', (1, 1), (1, 2)),
    (('NCHW', 'OIHW', 'NCHW'), (2, 3), (1, 2), ((1, 0), (2, 1)), (2, 1), (1, 1)),
    (('NHWC', 'HWIO', 'NCHW'), (3, 3), (2, 2), 'SAME', (1, 1), (1, 1)),
    (('NWC', 'WIO', 'NWC'), (4,), (3,), ((2, 1),), (1,), (2,)),
]


def _conv_eqn(dn, filt, strides, padding, lhs_dil, rhs_dil, x, w):
    def f(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, lhs_dil, rhs_dil,
                                        dimension_numbers=dn)
    prog = structured.flatten(jax.make_jaxpr(f)(x, w))
    (eqn,) = prog.eqns
    return eqn, f(x, w)


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_patches_turn_any_convolution_into_a_matrix_product(geometry):
    """``conv(u, W) = patches(u) · W`` with W's features ordered (*filter, C_in), and the patches
    laid out like the convolution's output (features on its channel axis), for strides,
    padding, input and filter dilation, and any dimension numbers."""
    dn, filt, strides, padding, lhs_dil, rhs_dil = geometry
    rs = np.random.RandomState(0)
    lhs_spec, rhs_spec, out_spec = dn
    sizes = {'N': 2, 'C': 3, 'H': 7, 'W': 6}
    x = rs.randn(*[sizes[c] for c in lhs_spec])
    w_sizes = {'O': 4, 'I': 3} | dict(zip('HW' if len(filt) == 2 else 'W', filt))
    w = rs.randn(*[w_sizes[c] for c in rhs_spec])
    eqn, y = _conv_eqn(dn, filt, strides, padding, lhs_dil, rhs_dil, x, w)
    p = structured._patches(eqn, x)
    spatial = [c for c in rhs_spec if c not in 'OI']
    w_mat = jnp.transpose(w, [rhs_spec.index(c) for c in spatial + ['I', 'O']]).reshape(-1, 4)
    c_out = out_spec.index('C')
    got = jnp.moveaxis(jnp.tensordot(jnp.moveaxis(p, c_out, -1), w_mat, 1), -1, c_out)
    np.testing.assert_allclose(got, y, rtol=1e-12, atol=1e-12)


def _transposes(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [e for e in jaxpr.eqns if e.primitive.name == 'transpose']


def test_dot_reshapes_operands_already_in_matrix_order():
    """An operand whose axes fall into (batch, rows, contracted) or (batch, contracted,
    columns) groups is reshaped, not transposed; when one must move, the smaller one does, and
    the result equals einsum either way."""
    rs = np.random.RandomState(0)
    cases = [('nfk,nfm->nkm', (4, 6, 5), (4, 6, 3), 0),     # both contracted in the middle
             ('nkf,nfm->nkm', (4, 5, 6), (4, 6, 3), 0),     # the textbook form
             ('nmf,nfk->nmk', (4, 3, 6), (4, 6, 5), 0),
             ('nofm,nfk->nomk', (4, 2, 6, 3), (4, 6, 5), 1),  # o and m around f: g moves
             ('nofm,nfk->nomk', (4, 2, 6, 3), (4, 6, 50), 1)]
    for spec, sa, sb, moves in cases:
        a, b = rs.randn(*sa), rs.randn(*sb)
        ins, so = spec.split('->')
        ia, ib = ins.split(',')
        np.testing.assert_allclose(structured._dot(ia, ib, so, a, b), np.einsum(spec, a, b),
                                   rtol=1e-12)
        moved = _transposes(lambda a, b, ia=ia, ib=ib, so=so: structured._dot(ia, ib, so, a, b),
                            a, b)
        assert len(moved) == moves, spec
        if moves:       # the moved operand is g (4-D), and it keeps its last axis last
            assert moved[0].params['permutation'][-1] == 3
    sa, sb = 'nfgk', 'nmgf'         # contracted letters in two orders: the smaller operand moves
    a, b = rs.randn(4, 6, 3, 50), rs.randn(4, 5, 3, 6)
    np.testing.assert_allclose(structured._dot(sa, sb, 'nkm', a, b),
                               np.einsum('nfgk,nmgf->nkm', a, b), rtol=1e-12)
    (moved,) = _transposes(lambda a, b: structured._dot(sa, sb, 'nkm', a, b), a, b)
    assert moved.invars[0].aval.shape == b.shape


def _cnn():
    return stax.serial(stax.Conv(6, (3, 3), padding='SAME'), stax.Relu(),
                       stax.Conv(6, (3, 3), padding='SAME'), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(3))


def test_factored_program_runs_the_network_forward_once_per_side():
    """h = (∂x/∂y)ᵀ 1 of the channel-factored layer comes from the main pass's operands: each
    side evaluates each convolution once forward and once backward per output entry (the first
    layer's cotangent is not propagated further), and the kernel is Jacobian contraction's."""
    init_fn, apply_fn, _ = _cnn()
    x1 = np.random.RandomState(1).randn(3, 5, 4, 2)
    x2 = np.random.RandomState(2).randn(2, 5, 4, 2)
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    fn = empirical_ntk_fn(apply_fn, (), (), 0, SD)
    want = empirical_ntk_fn(apply_fn, (), (), 0, JC)(x1, x2, params)
    np.testing.assert_allclose(jax.jit(fn)(x1, x2, params), want, rtol=1e-10,
                               atol=1e-12 * np.abs(want).max())
    assert 'channel-factored' in fn.explain(x1, x2, params)

    def convs(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == 'conv_general_dilated':
                yield e
            for v in e.params.values():
                inner = getattr(v, 'jaxpr', v)
                if hasattr(inner, 'eqns'):
                    yield from convs(inner)

    found = list(convs(jax.make_jaxpr(fn)(x1, x2, params).jaxpr))
    forward = [e for e in found if e.outvars[0].aval.shape[0] in (2, 3)]
    backward = [e for e in found if e.outvars[0].aval.shape[0] in (6, 9)]   # 3 outputs each
    assert len(forward) == 2 * 2, [e.outvars[0].aval.shape for e in found]
    assert len(backward) == 2 * 1


def test_patches_need_no_transpose_for_channels_last():
    """With channels-last convolutions the patches are concatenated slices of the padded
    input, already in the layout of the output: no transpose in their program."""
    x, w = np.zeros((2, 7, 6, 3)), np.zeros((3, 3, 3, 4))
    eqn, _ = _conv_eqn(('NHWC', 'HWIO', 'NHWC'), (3, 3), (1, 1), 'SAME', (1, 1), (1, 1), x, w)
    moved = [e for e in jax.make_jaxpr(lambda u: structured._patches(eqn, u))(x).eqns
             if e.primitive.name == 'transpose'
             and list(e.params['permutation']) != list(range(len(e.params['permutation'])))]
    assert moved == []


def test_patch_feature_order_is_filter_then_channel():
    """Feature k of a patch is filter offset k // C_in, input channel k % C_in (row-major over
    the filter), what `_patches`' docstring promises."""
    x = np.arange(1 * 4 * 4 * 2, dtype=float).reshape(1, 4, 4, 2)
    w = np.zeros((2, 2, 2, 1))
    eqn, _ = _conv_eqn(('NHWC', 'HWIO', 'NHWC'), (2, 2), (1, 1), 'VALID', (1, 1), (1, 1), x, w)
    p = np.asarray(structured._patches(eqn, x))
    for (i, j), c in itertools.product(itertools.product(range(2), range(2)), range(2)):
        np.testing.assert_array_equal(p[0, :, :, (2 * i + j) * 2 + c], x[0, i:i + 3, j:j + 3, c])
