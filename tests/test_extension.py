"""Layers defined outside ntc (tests/user_layers.py, the two layers of docs/adding_a_layer.md)
work like built-in ones: the builder unpacks as (init_fn, apply_fn, kernel_fn), they compile,
show in plans, match the reference lowering, tile with `ntc.batch`, move masks, and pass
`ntc.testing.check_layer`.  Expected values are computed independently here: the nonlinearity's
kernel by a numerical Gaussian integral, the flip's by numpy on flipped inputs."""

from typing import Literal

import jax
import numpy as np
import pytest
from scipy import integrate, stats

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, NtcError, ValidationError
from ntc.layers import Op, register_op
from ntc.testing import check_against_reference, check_layer
from ntc.testing.cases import IMAGE1
from tests.user_layers import Flip, FlipLayer, ShiftedReluLayer

SHIFT = 0.5
C = -7.0  # mask constant


def vector_net():
    return stax.serial(stax.Dense(8, 1.2, 0.3), ShiftedReluLayer(SHIFT), stax.Dense(4))


def image_net():
    """Flip between a convolution and a position-dependent slice, so a wrong flip shows."""
    return stax.serial(stax.Conv(8, (3,), padding='SAME', W_std=1.2, b_std=0.3),
                       ShiftedReluLayer(SHIFT), FlipLayer(),
                       stax.Conv(8, (2,), padding='VALID'), stax.Index(idx=stax.Slice[:, 0:3]),
                       stax.Relu(), stax.Flatten(), stax.Dense(2))


def inputs(shape, seed=0):
    rs = np.random.RandomState(seed)
    return rs.randn(3, *shape), rs.randn(2, *shape)


# ----------------------------------------------------------------------------- builders


def test_builders_unpack_like_stax_layers():
    init_fn, apply_fn, kernel_fn = ShiftedReluLayer(SHIFT)
    x = np.random.RandomState(1).randn(3, 4)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    np.testing.assert_allclose(apply_fn(params, x), np.maximum(x, 0) + SHIFT)
    init_fn, apply_fn, _ = FlipLayer()
    img = np.random.RandomState(2).randn(2, 4, 3, 2)
    out_shape, params = init_fn(jax.random.PRNGKey(0), img.shape)
    assert tuple(out_shape)[1:] == img.shape[1:]
    np.testing.assert_allclose(apply_fn(params, img), img[:, ::-1, ::-1, :])


def test_builder_validates_and_refuses_unregistered_classes():
    with pytest.raises(ValidationError, match='ShiftedRelu.shift'):
        ShiftedReluLayer(float('nan'))

    class Unregistered(Op):
        op: Literal['Unregistered'] = 'Unregistered'

    with pytest.raises(ArchitectureError, match='register_op'):
        stax.layer(Unregistered)
    with pytest.raises(ArchitectureError, match='op class'):
        stax.layer(int)


def test_a_second_class_cannot_take_an_existing_kind():
    class OtherFlip(Op):
        op: Literal['Flip'] = 'Flip'

    with pytest.raises(NtcError, match="two layers named 'Flip'"):
        register_op(OtherFlip)
    assert ntc.ir.registry.OPS['Flip'] is Flip


# ----------------------------------------------------------------------------- kernels


def shifted_relu_moments_by_integral(q1, q2, c):
    """E[φ(u)φ(v)] and E[φ'(u)φ'(v)], φ(x) = max(x, 0) + SHIFT, by quadrature over u with the
    conditional law of v given u (v | u Gaussian, mean m·u, variance s²): E[max(v, 0) | u] =
    μΦ(μ/s) + s·pdf(μ/s) and P(v > 0 | u) = Φ(μ/s), μ = m·u."""
    m, s = c / q1, np.sqrt(q2 - c * c / q1)

    def cond_phi(u):
        mu = m * u
        return mu * stats.norm.cdf(mu / s) + s * stats.norm.pdf(mu / s) + SHIFT

    def density(u):
        return stats.norm.pdf(u / np.sqrt(q1)) / np.sqrt(q1)

    lim = 12 * np.sqrt(q1)
    k = sum(integrate.quad(lambda u: (max(u, 0) + SHIFT) * cond_phi(u) * density(u), a, b,
                           epsabs=1e-13, epsrel=1e-12)[0] for a, b in ((-lim, 0), (0, lim)))
    kdot = integrate.quad(lambda u: stats.norm.cdf(m * u / s) * density(u), 0, lim,
                          epsabs=1e-13, epsrel=1e-12)[0]
    return k, kdot


def test_shifted_relu_kernel_equals_the_gaussian_integral():
    x1, x2 = inputs((4,))
    nngp, ntk = vector_net().kernel_fn(x1, x2, ('nngp', 'ntk'))
    k0 = 1.44 * x1 @ x2.T / 4 + 0.09   # after Dense(8, 1.2, 0.3)
    q1 = 1.44 * np.sum(x1 * x1, 1) / 4 + 0.09
    q2 = 1.44 * np.sum(x2 * x2, 1) / 4 + 0.09
    want_k, want_t = np.zeros_like(k0), np.zeros_like(k0)
    for i in range(len(x1)):
        for j in range(len(x2)):
            k, kdot = shifted_relu_moments_by_integral(q1[i], q2[j], k0[i, j])
            want_k[i, j] = k
            want_t[i, j] = k + kdot * k0[i, j]   # readout Dense(4): Θ = K + E[φ'φ']·Θ_0
    np.testing.assert_allclose(nngp, want_k, rtol=1e-9)
    np.testing.assert_allclose(ntk, want_t, rtol=1e-9)


def test_rule_written_against_xp_gives_the_symbolic_kernel():
    """The same kernel rule runs on sympy: plan.symbolic() evaluates to kernel_fn's values."""
    x1, x2 = inputs((4,))
    sk = ntc.compile(vector_net(), x1.shape).symbolic()
    nngp, ntk = vector_net().kernel_fn(x1[:1], x2[:1], ('nngp', 'ntk'))
    k11, k12, k22 = (float(a @ b) / 4 for a, b in ((x1[0], x1[0]), (x1[0], x2[0]),
                                                    (x2[0], x2[0])))
    np.testing.assert_allclose(sk.evaluate(k11, k12, k22), (nngp[0, 0], ntk[0, 0]), rtol=1e-10)


@pytest.mark.parametrize('shape', [(5, 2), (4, 3, 2)])
def test_flip_kernel_is_the_kernel_of_the_flipped_input(shape):
    x1, x2 = inputs(shape)
    got = stax.serial(stax.Dense(8, 1.3, 0.2), FlipLayer()).kernel_fn(x1, x2, 'nngp')
    axes = tuple(range(1, len(shape)))
    f1, f2 = np.flip(x1, axes), np.flip(x2, axes)
    # Dense acts per position: K[s, s'] = W² <x1[s], x2[s']> / C + b²
    if len(shape) == 2:
        want = np.einsum('asc,btc->abst', f1, f2)
    else:
        want = np.einsum('ahwc,bgvc->abhgwv', f1, f2)
    want = 1.69 * want / shape[-1] + 0.04
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_flip_with_a_diagonal_layout():
    """Flatten needs only the diagonal, so Flip runs on a DIAG spatial layout."""
    x1, x2 = inputs((5, 2))
    net = stax.serial(stax.Dense(8, 1.3, 0.2), FlipLayer(), stax.Index(idx=stax.Slice[:, 0:2]),
                      stax.Flatten(), stax.Dense(1))
    plan = ntc.compile(net, x1.shape, 'nngp')
    flip_line = next(line for line in plan.explain().splitlines() if ' Flip ' in line)
    assert 'sp=DIAG' in flip_line
    # positions 0, 1 of the flipped sequence are positions 4, 3 of the input
    want = np.mean([1.69 * x1[:, s] @ x2[:, s].T / 2 + 0.04 for s in (3, 4)], axis=0)
    np.testing.assert_allclose(plan(x1, x2), want, rtol=1e-12)


def test_explain_shows_the_user_layers():
    text = ntc.compile(image_net(), (3,) + IMAGE1[1:]).explain()
    assert f'ShiftedRelu(shift={SHIFT:g})' in text
    assert ' Flip ' in text


@pytest.mark.parametrize('make, shape', [(vector_net, (4,)), (image_net, IMAGE1[1:])])
def test_optimised_plan_matches_the_reference_lowering(make, shape):
    x1, x2 = inputs(shape)
    check_against_reference(make(), x1, x2).assert_ok()
    check_against_reference(make(), x1, None).assert_ok()


@pytest.mark.parametrize('make, shape', [(vector_net, (4,)), (image_net, IMAGE1[1:])])
def test_tiled_kernel_equals_the_untiled_one(make, shape):
    rs = np.random.RandomState(3)
    x1, x2 = rs.randn(4, *shape), rs.randn(6, *shape)
    kernel_fn = make().kernel_fn
    want = kernel_fn(x1, x2, ('nngp', 'ntk'))
    got = ntc.batch(kernel_fn, batch_size=2, progress=False)(x1, x2, ('nngp', 'ntk'))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- masks


def test_flip_moves_the_masks():
    x1, x2 = inputs((6, 3))
    m1, m2 = x1.copy(), x2.copy()
    m1[:, 4:] = C
    m2[:, 4:] = C
    # position-agnostic after the flip: masking the tail is truncating the sequences
    pooled = stax.serial(stax.Dense(8, 1.3, 0.1), FlipLayer(), stax.Relu(), stax.GlobalAvgPool(),
                         stax.Dense(1))
    np.testing.assert_allclose(pooled.kernel_fn(m1, m2, 'nngp', mask_constant=C),
                               pooled.kernel_fn(x1[:, :4], x2[:, :4], 'nngp'), rtol=1e-10)
    # the masked kernel is flipped with its mask
    dense = stax.serial(stax.Dense(8, 1.3, 0.1))
    flipped = stax.serial(stax.Dense(8, 1.3, 0.1), FlipLayer())
    want = dense.kernel_fn(m1, m2, 'nngp', mask_constant=C)
    got = flipped.kernel_fn(m1, m2, 'nngp', mask_constant=C)
    np.testing.assert_allclose(got, np.flip(want, (2, 3)), rtol=1e-12)
    # and so is the finite network's output mask
    init_fn, apply_fn, _ = flipped
    _, params = init_fn(jax.random.PRNGKey(0), m1.shape)
    out = apply_fn(params, m1, mask_constant=C)
    assert np.all(np.asarray(out.mask)[:, :2]) and not np.any(np.asarray(out.mask)[:, 2:])


# ----------------------------------------------------------------------------- harness


def test_check_layer_shifted_relu():
    check_layer(ShiftedReluLayer(SHIFT), width=256, n_samples=128).assert_ok()


def test_check_layer_flip():
    layer = stax.serial(FlipLayer(), stax.Index(idx=stax.Slice[:, 1:3]))
    check_layer(layer, IMAGE1, width=128, n_samples=128).assert_ok()
