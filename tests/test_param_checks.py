"""Layer parameters are finite and in range, checked by the op models (stax and spec files
alike), and window sizes are bounded: a bad value is a one-line ValidationError/ShapeError
naming the layer and the field, never a NaN kernel or a hang (issue 19, sections 2 and 3)."""

import math

import numpy as np
import pytest

from ntc import spec, stax
from ntc.errors import ArchitectureError, ShapeError, ValidationError

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize('build, field', [
    (lambda: stax.Dense(1, W_std=INF), 'Dense.W_std'),
    (lambda: stax.Dense(1, b_std=NAN), 'Dense.b_std'),
    (lambda: stax.Dense(1, W_std=-1.0), 'Dense.W_std'),
    (lambda: stax.Conv(1, (3,), W_std=NAN), 'Conv.W_std'),
    (lambda: stax.LeakyRelu(NAN), 'LeakyRelu.alpha'),
    (lambda: stax.ABRelu(0.1, INF), 'ABRelu.b'),
    (lambda: stax.Erf(a=INF), 'Erf.a'),
    (lambda: stax.Sin(b=NAN), 'Sin.b'),
    (lambda: stax.Gaussian(a=-INF), 'Gaussian.a'),
    (lambda: stax.ExpNormalized(gamma=NAN), 'ExpNormalized.gamma'),
    (lambda: stax.Rbf(gamma=INF), 'Rbf.gamma'),
    (lambda: stax.Polynomial([1.0, NAN]), 'Polynomial.coef'),
    (lambda: stax.LayerNorm(eps=INF), 'LayerNorm.eps'),
    (lambda: stax.Dropout(NAN), 'Dropout.rate'),
    (lambda: stax.GlobalSelfAttention(4, 4, 4, 1, W_key_std=INF), 'GlobalSelfAttention.W_key_std'),
    (lambda: stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_p_norm=NAN),
     'GlobalSelfAttention.pos_emb_p_norm'),
])
def test_non_finite_or_out_of_range_parameter_is_refused(build, field):
    with pytest.raises(ValidationError) as e:
        build()
    assert field in str(e.value)


def test_dot_general_constant_must_be_finite():
    with pytest.raises(ValidationError, match='DotGeneral'):
        stax.DotGeneral(rhs=np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValidationError, match='DotGeneral'):
        stax.DotGeneral(rhs=INF)


def test_infinite_p_norm_is_still_allowed():
    stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_p_norm=INF)  # the max norm: meaningful


@pytest.mark.parametrize('value', ['1e400', '1.0e+400', '.nan', '.inf'])
def test_spec_with_non_finite_number_names_the_layer_and_field(value):
    text = f'serial:\n  - Dense: {{out_dim: 1, W_std: {value}}}\n  - Relu\n'
    with pytest.raises(ValidationError) as e:
        spec.loads(text)
    assert 'serial[0].Dense.W_std' in str(e.value)
    assert 'finite' in str(e.value)


def test_huge_same_filter_is_refused_not_a_hang():
    net = stax.Conv(1, (10 ** 9, 10 ** 9), padding='SAME')
    with pytest.raises(ShapeError, match='filter') as e:
        net.kernel_fn(np.ones((1, 3, 3, 1)), None, 'nngp')
    assert 'Conv' in str(e.value) and 'at most' in str(e.value)


@pytest.mark.parametrize('build', [
    lambda: stax.AvgPool((10 ** 9,), padding='SAME'),
    lambda: stax.ConvTranspose(1, (10 ** 9,), padding='SAME'),
    lambda: stax.Conv(1, (10 ** 9,), padding='CIRCULAR'),
])
def test_huge_windows_are_refused(build):
    with pytest.raises(ShapeError, match='at most'):
        build().kernel_fn(np.ones((1, 5, 1)), None, 'nngp')


def test_small_filters_on_tiny_images_still_work():
    # a 3×3 SAME conv on a 1×1 image (ResNets end like this) is legitimate: its kernel is the
    # centre tap's share, σw²·K/9 per input channel... with one tap in range: K·1/9
    x = np.ones((2, 1, 1, 2))
    k = stax.Conv(1, (3, 3), padding='SAME').kernel_fn(x, None, 'nngp')
    np.testing.assert_allclose(np.asarray(k).reshape(2, 2), np.full((2, 2), 1.0 / 9))


def test_deep_nesting_is_an_architecture_error_not_a_recursion_error():
    net = stax.Dense(1)
    for _ in range(5000):
        net = stax.serial(net)
    with pytest.raises(ArchitectureError, match='nested'):
        net.kernel_fn(np.ones((2, 3)), None, 'nngp')
