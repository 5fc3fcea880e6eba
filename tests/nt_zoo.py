"""Extra reference architectures for exact float64 comparisons with neural-tangents 0.6.5.

Every entry is ``name -> (builder, x1_shape, x2_shape_or_None, kwargs)``:

* ``builder`` is a function of a stax-like module ``s``; the same text builds the network in
  neural-tangents (``from neural_tangents import stax``) and in ntc (``from ntc import stax``).
* ``x2_shape`` ``None`` means the "12" kernels were computed as ``kernel_fn(x1, x1)``.
* ``kwargs`` are extra keyword arguments of ``kernel_fn``.  Two values are placeholders that
  ``tests/data/make_nt_fixtures.py`` replaces when it draws the inputs:

  - ``kwargs['pattern'] == Pattern(...)``: dense ``Aggregate`` adjacency tensors of shape
    ``(N, *V, *V)`` are drawn for x1 and x2 and passed as ``pattern=(pattern1, pattern2)``
    (``pattern=(pattern1, pattern1)`` for ``kernel_fn(x1, None)``).  They are stored in the npz
    as ``pattern1`` / ``pattern2``: tests should read them from there.
  - ``MASKED[name]``: the inputs were drawn normally and then a fraction of the positions
    (all channels of one spatial position) were overwritten with ``kwargs['mask_constant']``.
    The stored ``x1`` / ``x2`` already contain the mask constant.

The generated data lives in ``tests/data/nt/NAME.npz`` (see ``tests/data/nt/README.md``);
cases that NT cannot compute are listed in ``tests/data/nt/quirks.json`` instead.
"""

import dataclasses

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Placeholder for an ``Aggregate`` ``pattern`` kwarg.

    ``vertex_shape`` is the shape ``V`` of the aggregated axes; ``kind`` is ``'binary'``
    (Bernoulli(0.5) 0/1 entries) or ``'weighted'`` (uniform [0, 1) weights).
    """
    vertex_shape: tuple
    kind: str = 'binary'


# Fraction of masked positions for cases that use ``mask_constant``.
MASKED = {}

MASK_CONSTANT = -7.0


# ----------------------------------------------------------------------------------------------
# helpers

def _mlp(s, act, W_std=1.2, b_std=0.1, parameterization='ntk', width=16, out=1):
    """Two hidden layers: (Dense, act) x 2, then Dense(out).  ``act`` is ``lambda s: layer``."""
    return s.serial(
        s.Dense(width, W_std, b_std, parameterization=parameterization), act(s),
        s.Dense(width, W_std, b_std, parameterization=parameterization), act(s),
        s.Dense(out, W_std, b_std, parameterization=parameterization))


def _erf_nngp_fn(cov12, var1, var2):
    """E[erf(u) erf(v)] for centred Gaussian (u, v) (example in NT's Elementwise docstring)."""
    prod = (1 + 2 * var1) * (1 + 2 * var2)
    return jnp.arcsin(2 * cov12 / jnp.sqrt(prod)) * 2 / np.pi


def _conv_head(s, top='gap', out=1):
    if top == 'gap':
        return [s.GlobalAvgPool(), s.Dense(out, 1.0, 0.0)]
    if top == 'flatten':
        return [s.Flatten(), s.Dense(out, 1.0, 0.0)]
    return []


def _attn(s, mech, pos, linear_scaling, n_heads=2, b_std=0.1):
    return s.GlobalSelfAttention(
        n_chan_out=8, n_chan_key=8, n_chan_val=8, n_heads=n_heads,
        linear_scaling=linear_scaling, W_key_std=1.1, W_value_std=1.2, W_query_std=0.9,
        W_out_std=1.0, b_std=b_std, attention_mechanism=mech, pos_emb_type=pos)


def _attn_net(s, mech, pos, linear_scaling):
    return s.serial(
        s.Dense(8, 1.3, 0.1), _attn(s, mech, pos, linear_scaling), s.Relu(),
        s.GlobalAvgPool(), s.Dense(1, 1.0, 0.0))


def _transformer_block(s, mech='SOFTMAX', linear_scaling=True):
    attn = s.serial(s.LayerNorm(), _attn(s, mech, 'SUM', linear_scaling))
    mlp = s.serial(s.LayerNorm(), s.Dense(16, 1.2, 0.05), s.Gelu(), s.Dense(8, 1.0, 0.0))
    return s.serial(
        s.FanOut(2), s.parallel(s.Identity(), attn), s.FanInSum(),
        s.FanOut(2), s.parallel(s.Identity(), mlp), s.FanInSum())


# MLP shapes / image shapes used throughout
_FC = ((4, 6), (3, 6))
_IMG = ((3, 5, 4, 2), (2, 5, 4, 2))     # nets with a readout
_SP = ((2, 4, 3, 2), (3, 4, 3, 2))      # nets whose output keeps spatial axes
_SEQ = ((3, 5, 4), (2, 5, 4))


def _fc(builder, kwargs=None, x2=True):
    return (builder, _FC[0], _FC[1] if x2 else None, kwargs or {})


def _img(builder, kwargs=None, shapes=_IMG, x2=True):
    return (builder, shapes[0], shapes[1] if x2 else None, kwargs or {})


ZOO = {}

# ----------------------------------------------------------------------------------------------
# nonlinearities, each inside a 2-hidden-layer MLP

_ACTS = {
    'relu': lambda s: s.Relu(),
    'relu_stabilize': lambda s: s.Relu(do_stabilize=True),
    'leaky_relu': lambda s: s.LeakyRelu(0.1),
    'abrelu': lambda s: s.ABRelu(-0.3, 1.2),
    'abs': lambda s: s.Abs(),
    'erf_abc': lambda s: s.Erf(0.7, 1.3, 0.2),
    'erf_default': lambda s: s.Erf(),
    'sigmoid_like': lambda s: s.Sigmoid_like(),
    'gelu': lambda s: s.Gelu(),
    'gelu_approximate': lambda s: s.Gelu(approximate=True),
    'sin_abc': lambda s: s.Sin(0.8, 1.2, 0.3),
    'cos_abc': lambda s: s.Cos(0.8, 1.2, 0.3),
    'sin_default': lambda s: s.Sin(),
    'cos_default': lambda s: s.Cos(),
    'exp': lambda s: s.Exp(0.9, 0.5),
    'exp_normalized': lambda s: s.ExpNormalized(),
    'exp_normalized_g2_clip': lambda s: s.ExpNormalized(gamma=2.0, shift=-1.0, do_clip=True),
    'exp_normalized_g05_s0': lambda s: s.ExpNormalized(gamma=0.5, shift=0.0),
    'gaussian': lambda s: s.Gaussian(0.7, -0.5),
    'rbf': lambda s: s.Rbf(gamma=0.5),
    'sign': lambda s: s.Sign(),
    'polynomial': lambda s: s.Polynomial([0.5, -1.0, 0.3, 0.2]),
    'gabor': lambda s: s.Gabor(),
    'elementwise_erf': lambda s: s.Elementwise(fn=jsp.erf, nngp_fn=_erf_nngp_fn),
    'elementwise_numerical_erf': lambda s: s.ElementwiseNumerical(fn=jsp.erf, deg=25),
    'elementwise_numerical_sin': lambda s: s.ElementwiseNumerical(fn=jnp.sin, deg=25),
}
for _d in range(5):
    _ACTS[f'monomial_{_d}'] = (lambda d: lambda s: s.Monomial(d))(_d)
for _d in range(4):
    _ACTS[f'rectified_monomial_{_d}'] = (lambda d: lambda s: s.RectifiedMonomial(d))(_d)
for _d in range(1, 5):
    _ACTS[f'hermite_{_d}'] = (lambda d: lambda s: s.Hermite(d))(_d)

_ACT_STD = {'exp': (0.8, 0.1), 'monomial_4': (1.0, 0.1), 'monomial_3': (1.0, 0.1)}

for _name, _act in _ACTS.items():
    _w, _b = _ACT_STD.get(_name, (1.2, 0.1))
    ZOO[f'act_{_name}'] = _fc((lambda a, w, b: lambda s: _mlp(s, a, w, b))(_act, _w, _b))

for _name in ['relu', 'erf_abc', 'gelu', 'sin_abc', 'abrelu']:
    ZOO[f'act_{_name}_standard'] = _fc(
        (lambda a: lambda s: _mlp(s, a, 1.2, 0.1, 'standard'))(_ACTS[_name]))

# RectifiedMonomial with one hidden layer: NT's per-input variances (cov1/cov2) are NaN after
# this layer, so deeper nets are NaN everywhere; with one hidden layer the "12" kernels survive.
for _d in range(4):
    ZOO[f'act_rectified_monomial_{_d}_1hidden'] = _fc((lambda d: lambda s: s.serial(
        s.Dense(16, 1.2, 0.1), s.RectifiedMonomial(d), s.Dense(1, 1.1, 0.2)))(_d))

# Hermite on unit-variance inputs (after LayerNorm), where its kernel is exact.
ZOO['act_hermite_3_layernorm'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.2, 0.1), s.LayerNorm(), s.Hermite(3),
    s.Dense(16, 1.2, 0.1), s.LayerNorm(), s.Hermite(2), s.Dense(1)))

# ----------------------------------------------------------------------------------------------
# Dense details

ZOO['fc_standard_s'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.3, 0.2, parameterization='standard', s=(1, 2)), s.Relu(),
    s.Dense(16, 1.1, 0.1, parameterization='standard', s=(2, 3)), s.Erf(),
    s.Dense(1, 0.9, 0.3, parameterization='standard', s=(3, 1))))
ZOO['fc_ntk_s'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.3, 0.2, s=(1, 2)), s.Relu(),
    s.Dense(16, 1.1, 0.1, s=(2, 3)), s.Relu(),
    s.Dense(1, 0.9, 0.3, s=(3, 1))))
for _p in ['standard', 'ntk']:
    for _bn, _bv in [('bnone', None), ('bzero', 0.0)]:
        ZOO[f'fc_{_p}_{_bn}'] = _fc((lambda p, b: lambda s: s.serial(
            s.Dense(16, 1.3, b, parameterization=p), s.Relu(),
            s.Dense(16, 1.1, b, parameterization=p), s.Relu(),
            s.Dense(1, 1.0, b, parameterization=p)))(_p, _bv))
ZOO['fc_single_dense'] = _fc(lambda s: s.Dense(3, 1.7, 0.3))
ZOO['fc_identity'] = _fc(lambda s: s.serial(s.Identity(), s.Dense(4, 1.1, 0.2), s.Identity()))
ZOO['fc_repeat'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.4, 0.1), s.Relu(),
    s.repeat(s.serial(s.Dense(16, 1.4, 0.1), s.Relu()), 3), s.Dense(1)))
# NT's repeat() requires the repeated layer to preserve the input shape (raises here: 6 -> 16).
ZOO['fc_repeat_shape_change'] = _fc(lambda s: s.serial(
    s.repeat(s.serial(s.Dense(16, 1.4, 0.1), s.Relu()), 3), s.Dense(1)))

# ----------------------------------------------------------------------------------------------
# normalisation, dropout, fan-in

ZOO['img_layernorm_default'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.LayerNorm(), s.Relu(),
    *_conv_head(s, 'flatten')))
ZOO['img_layernorm_chw'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.LayerNorm(axis=(1, 2, 3)), s.Relu(),
    *_conv_head(s, 'flatten')))
ZOO['img_layernorm_c'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.LayerNorm(axis=(-1,)), s.Erf(),
    *_conv_head(s, 'gap')))
ZOO['img_layernorm_hw_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.Conv(4, (1, 1), padding='SAME'),
    s.LayerNorm(axis=(1, 2))), shapes=_SP)

ZOO['fc_dropout_train'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.2, 0.1), s.Relu(), s.Dropout(0.8, 'train'),
    s.Dense(16, 1.2, 0.1), s.Relu(), s.Dense(1)))
ZOO['fc_dropout_train_x2none'] = _fc(ZOO['fc_dropout_train'][0], x2=False)
ZOO['fc_dropout_test'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.2, 0.1), s.Relu(), s.Dropout(0.8, 'test'),
    s.Dense(16, 1.2, 0.1), s.Relu(), s.Dense(1)))
ZOO['img_dropout_train'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.Relu(), s.Dropout(0.7, 'train'),
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.Relu(), *_conv_head(s, 'flatten')))

ZOO['fc_faninprod'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.2, 0.1), s.FanOut(2),
    s.parallel(s.serial(s.Relu(), s.Dense(16, 1.1, 0.2)), s.Dense(16, 0.9, 0.3)),
    s.FanInProd(), s.Dense(1)))
ZOO['fc_faninprod_three'] = _fc(lambda s: s.serial(
    s.Dense(6, 1.0, 0.3), s.FanOut(3),
    s.parallel(s.Dense(6, 1.1, 0.1), s.Dense(6, 1.2, 0.2), s.Identity()),
    s.FanInProd(), s.Dense(8, 1.0, 0.1), s.Relu(), s.Dense(1)))
ZOO['fc_faninprod_raw_input'] = _fc(lambda s: s.serial(
    s.FanOut(2), s.parallel(s.Dense(6, 1.1, 0.1), s.Identity()),
    s.FanInProd(), s.Dense(1)))
ZOO['fc_faninsum_three'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.2, 0.1), s.FanOut(3),
    s.parallel(s.serial(s.Relu(), s.Dense(16)), s.Identity(), s.serial(s.Erf(), s.Dense(16))),
    s.FanInSum(), s.Relu(), s.Dense(1)))
ZOO['img_faninconcat_channel'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.FanOut(2),
    s.parallel(s.serial(s.Relu(), s.Conv(4, (3, 3), padding='SAME')),
               s.serial(s.Erf(), s.Conv(6, (1, 1), padding='SAME', b_std=0.2))),
    s.FanInConcat(), s.Relu(), *_conv_head(s, 'flatten')))
ZOO['img_faninconcat_channel_conv'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.FanOut(2),
    s.parallel(s.serial(s.Relu(), s.Conv(4, (3, 3), padding='SAME')),
               s.serial(s.Erf(), s.Conv(6, (1, 1), padding='SAME', b_std=0.2))),
    s.FanInConcat(), s.Conv(4, (2, 2), padding='SAME'), s.Relu(), *_conv_head(s, 'flatten')))
ZOO['img_faninconcat_axis1'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.FanOut(2),
    s.parallel(s.serial(s.Relu(), s.Conv(4, (3, 3), padding='SAME')),
               s.serial(s.Erf(), s.Conv(4, (1, 1), padding='SAME', b_std=0.2))),
    s.FanInConcat(axis=1), s.Relu(), *_conv_head(s, 'flatten')))
ZOO['img_faninconcat_axis1_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.Relu(), s.FanOut(2),
    s.parallel(s.Conv(4, (3, 3), padding='SAME'), s.Identity()),
    s.FanInConcat(axis=1)), shapes=_SP)
ZOO['img_faninsum_identity'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.2, 0.1), s.FanOut(2),
    s.parallel(s.serial(s.Relu(), s.Conv(4, (3, 3), padding='SAME')), s.Identity()),
    s.FanInSum(), s.Relu(), *_conv_head(s, 'gap')))

# ----------------------------------------------------------------------------------------------
# convolutions

def _conv2(s, conv_kw, top='flatten', act=None):
    act = act or (lambda s: s.Relu())
    return s.serial(s.Conv(4, **conv_kw), act(s), s.Conv(4, **conv_kw), act(s),
                    *_conv_head(s, top))


ZOO['conv_same'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(3, 3), padding='SAME', W_std=1.3, b_std=0.1)))
ZOO['conv_valid'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(2, 2), padding='VALID', W_std=1.3, b_std=0.1)))
ZOO['conv_circular'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(3, 3), padding='CIRCULAR', W_std=1.3, b_std=0.1)))
ZOO['conv_circular_even_filter'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(2, 2), padding='CIRCULAR', W_std=1.3, b_std=0.1)))
ZOO['conv_same_even_filter'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(2, 2), padding='SAME', W_std=1.3, b_std=0.1)))
ZOO['conv_stride_21_same'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (2, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (3, 3), (2, 1), 'SAME', 1.3, 0.1), s.Relu(), *_conv_head(s, 'flatten')))
ZOO['conv_stride_22_valid'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (2, 2), 'VALID', 1.3, 0.1), s.Relu(),
    s.Conv(4, (2, 1), (1, 1), 'VALID', 1.3, 0.1), s.Relu(), *_conv_head(s, 'flatten')))
ZOO['conv_stride_22_circular'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (2, 2), 'CIRCULAR', 1.3, 0.1), s.Relu(), *_conv_head(s, 'flatten')))
ZOO['conv_filter_31'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(3, 1), padding='SAME', W_std=1.3, b_std=0.1)))
ZOO['conv_filter_23'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(2, 3), padding='SAME', W_std=1.3, b_std=0.1), top='gap'))
ZOO['conv_filter_23_valid'] = _img(lambda s: _conv2(s, dict(
    filter_shape=(2, 3), padding='VALID', W_std=1.3, b_std=0.1), top='flatten'),
    shapes=((3, 5, 6, 2), (2, 5, 6, 2)))
ZOO['conv_nchw'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 2), (1, 1), 'SAME', 1.3, 0.1, dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
    s.Relu(),
    s.Conv(4, (2, 2), (1, 1), 'VALID', 1.3, 0.1, dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
    s.Relu(), s.Flatten(), s.Dense(1)), shapes=((3, 2, 5, 4), (2, 2, 5, 4)))
ZOO['conv_nhwc_explicit'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 2), (1, 1), 'SAME', 1.3, 0.1, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
    s.Relu(),
    s.Conv(4, (2, 2), (1, 1), 'VALID', 1.3, 0.1, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
    s.Relu(), s.Flatten(), s.Dense(1)))
ZOO['conv_nwhc'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 2), (1, 1), 'SAME', 1.3, 0.1, dimension_numbers=('NWHC', 'WHIO', 'NWHC')),
    s.Relu(),
    s.Conv(4, (2, 2), (2, 1), 'VALID', 1.3, 0.1, dimension_numbers=('NWHC', 'WHIO', 'NWHC')),
    s.Relu(), s.Flatten(), s.Dense(1)))
ZOO['conv_standard'] = _img(lambda s: s.serial(
    s.Conv(3, (3, 3), (1, 1), 'SAME', 1.3, 0.1, parameterization='standard'), s.Relu(),
    s.Conv(5, (2, 2), (1, 1), 'VALID', 1.2, 0.2, parameterization='standard'), s.Relu(),
    s.Flatten(), s.Dense(1, 1.0, 0.1, parameterization='standard')))
ZOO['conv_standard_s'] = _img(lambda s: s.serial(
    s.Conv(3, (3, 3), (1, 1), 'SAME', 1.3, 0.1, parameterization='standard', s=(1, 2)),
    s.Relu(),
    s.Conv(5, (2, 2), (1, 1), 'SAME', 1.2, 0.2, parameterization='standard', s=(2, 3)),
    s.Relu(),
    s.GlobalAvgPool(), s.Dense(1, 1.0, 0.1, parameterization='standard', s=(3, 1))))
ZOO['conv1d_valid_flatten'] = _img(lambda s: s.serial(
    s.Conv(4, (3,), (1,), 'VALID', 1.3, 0.1), s.Relu(),
    s.Conv(4, (2,), (2,), 'SAME', 1.3, 0.1), s.Erf(), *_conv_head(s, 'flatten')),
    shapes=((3, 7, 2), (2, 7, 2)))
ZOO['conv3d_flatten'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2, 2), (1, 1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (3, 1, 2), (1, 1, 1), 'VALID', 1.3, 0.1), s.Relu(), *_conv_head(s, 'flatten')),
    shapes=((2, 4, 3, 3, 2), (3, 4, 3, 3, 2)))
ZOO['conv3d_gap'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3, 3), (1, 1, 1), 'CIRCULAR', 1.3, 0.1), s.Relu(), *_conv_head(s, 'gap')),
    shapes=((2, 3, 4, 3, 2), (3, 3, 4, 3, 2)))
ZOO['conv_transpose_same_s2'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ConvTranspose(4, (3, 3), (2, 2), 'SAME', 1.3, 0.1), s.Relu(),
    *_conv_head(s, 'flatten')), shapes=((3, 3, 2, 2), (2, 3, 2, 2)))
ZOO['conv_transpose_valid_s2'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ConvTranspose(4, (3, 2), (2, 2), 'VALID', 1.3, 0.1), s.Relu(),
    *_conv_head(s, 'flatten')), shapes=((3, 3, 2, 2), (2, 3, 2, 2)))
ZOO['conv_transpose_circular'] = _img(lambda s: s.serial(
    s.ConvTranspose(4, (3, 3), (2, 2), 'CIRCULAR', 1.3, 0.1), s.Relu(),
    *_conv_head(s, 'flatten')), shapes=((3, 3, 2, 2), (2, 3, 2, 2)))
ZOO['conv_transpose_standard'] = _img(lambda s: s.serial(
    s.ConvTranspose(4, (2, 2), (2, 1), 'SAME', 1.3, 0.1, parameterization='standard'),
    s.Relu(), *_conv_head(s, 'gap')), shapes=((3, 3, 2, 2), (2, 3, 2, 2)))
ZOO['conv_local_valid'] = _img(lambda s: s.serial(
    s.ConvLocal(4, (2, 2), (1, 1), 'VALID', 1.3, 0.1), s.Relu(),
    s.ConvLocal(4, (2, 2), (1, 1), 'VALID', 1.3, 0.1), s.Relu(),
    *_conv_head(s, 'flatten')))
ZOO['conv_local_same'] = _img(lambda s: s.serial(
    s.ConvLocal(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), *_conv_head(s, 'gap')))
ZOO['conv_local_strided_standard'] = _img(lambda s: s.serial(
    s.ConvLocal(4, (2, 2), (2, 1), 'VALID', 1.3, 0.1, parameterization='standard'), s.Relu(),
    *_conv_head(s, 'flatten')))

# ----------------------------------------------------------------------------------------------
# pooling

def _pool_net(s, pool, top='flatten'):
    return s.serial(s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), pool(s),
                    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
                    *_conv_head(s, top))


for _pad in ['SAME', 'VALID', 'CIRCULAR']:
    for _ne in [False, True]:
        ZOO[f'avgpool_{_pad.lower()}_s1_ne{int(_ne)}'] = _img(
            (lambda p, ne: lambda s: _pool_net(
                s, lambda s: s.AvgPool((2, 3), (1, 1), p, normalize_edges=ne)))(_pad, _ne))
    ZOO[f'avgpool_{_pad.lower()}_s2'] = _img(
        (lambda p: lambda s: _pool_net(s, lambda s: s.AvgPool((3, 2), (2, 2), p)))(_pad))
    ZOO[f'sumpool_{_pad.lower()}'] = _img(
        (lambda p: lambda s: _pool_net(s, lambda s: s.SumPool((2, 2), (1, 2), p)))(_pad))
ZOO['avgpool_default_strides'] = _img(lambda s: _pool_net(s, lambda s: s.AvgPool((2, 2))))
ZOO['avgpool_same_s2_ne1'] = _img(lambda s: _pool_net(
    s, lambda s: s.AvgPool((3, 3), (2, 2), 'SAME', normalize_edges=True)))
ZOO['avgpool_1d'] = _img(lambda s: s.serial(
    s.Conv(4, (2,), (1,), 'SAME', 1.3, 0.1), s.Relu(), s.AvgPool((3,), (2,), 'SAME'),
    s.Conv(4, (2,), (1,), 'VALID', 1.3, 0.1), s.Relu(), *_conv_head(s, 'flatten')),
    shapes=((3, 7, 2), (2, 7, 2)))
ZOO['avgpool_then_relu'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.AvgPool((2, 2), (1, 1), 'SAME'), s.Relu(),
    *_conv_head(s, 'flatten')))
ZOO['global_avg_pool'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.GlobalAvgPool(), s.Dense(2)))
ZOO['global_sum_pool'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.GlobalSumPool(), s.Dense(2)))
ZOO['global_avg_pool_then_relu'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.GlobalAvgPool(),
    s.Dense(8, 1.2, 0.1), s.Relu(), s.Dense(1)))
ZOO['flatten_raw'] = _img(lambda s: s.serial(s.Flatten(), s.Dense(4, 1.2, 0.1), s.Relu(),
                                             s.Dense(1)))
ZOO['flatten_then_mlp'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.Flatten(),
    s.Dense(8, 1.2, 0.1), s.Relu(), s.Dense(1)))

# ----------------------------------------------------------------------------------------------
# outputs that keep spatial axes (to pin down NT's output layout)

ZOO['spatial_out_identity'] = _img(lambda s: s.Identity(), shapes=_SP)
ZOO['spatial_out_dense'] = _img(lambda s: s.serial(s.Dense(4, 1.2, 0.1), s.Relu(), s.Dense(3)),
                                shapes=_SP)
ZOO['spatial_out_conv1'] = _img(lambda s: s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1),
                                shapes=_SP)
ZOO['spatial_out_conv1_relu'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu()), shapes=_SP)
ZOO['spatial_out_conv2'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1)), shapes=_SP)
ZOO['spatial_out_conv3'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Erf(),
    s.Conv(4, (3, 1), (1, 1), 'VALID', 1.3, 0.1)), shapes=_SP)
ZOO['spatial_out_conv_avgpool'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.AvgPool((2, 2), (1, 1), 'SAME')),
    shapes=_SP)
ZOO['spatial_out_avgpool_only'] = _img(lambda s: s.AvgPool((2, 2), (1, 1), 'SAME'),
                                       shapes=_SP)
ZOO['spatial_out_conv_dense'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.Dense(3, 1.1, 0.1)),
    shapes=_SP)
ZOO['spatial_out_nchw'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 2), (1, 1), 'SAME', 1.3, 0.1, dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
    s.Relu()), shapes=((2, 2, 4, 3), (3, 2, 4, 3)))
ZOO['spatial_out_nwhc'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 2), (1, 1), 'SAME', 1.3, 0.1, dimension_numbers=('NWHC', 'WHIO', 'NWHC')),
    s.Relu()), shapes=_SP)
ZOO['spatial_out_conv1d'] = _img(lambda s: s.serial(
    s.Conv(4, (3,), (1,), 'SAME', 1.3, 0.1), s.Relu()), shapes=((2, 5, 2), (3, 5, 2)))
ZOO['spatial_out_conv3d'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 1, 2), (1, 1, 1), 'SAME', 1.3, 0.1), s.Relu()),
    shapes=((2, 3, 2, 2, 2), (2, 3, 2, 2, 2)))
ZOO['spatial_out_conv_transpose'] = _img(lambda s: s.serial(
    s.ConvTranspose(4, (2, 2), (2, 1), 'SAME', 1.3, 0.1), s.Relu()),
    shapes=((2, 2, 3, 2), (3, 2, 3, 2)))
ZOO['spatial_out_conv_local'] = _img(lambda s: s.serial(
    s.ConvLocal(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu()), shapes=_SP)
ZOO['spatial_out_conv_local_conv'] = _img(lambda s: s.serial(
    s.ConvLocal(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (3, 2), (1, 1), 'SAME', 1.2, 0.1)), shapes=_SP)
ZOO['spatial_out_conv_local_last'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ConvLocal(4, (3, 2), (1, 1), 'SAME', 1.3, 0.1)), shapes=_SP)
ZOO['spatial_out_x2none'] = _img(lambda s: s.serial(
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu()), shapes=_SP, x2=False)

# ----------------------------------------------------------------------------------------------
# attention (GlobalSelfAttention), every mechanism x positional embedding x scaling

for _mech in ['SOFTMAX', 'IDENTITY', 'ABS', 'RELU']:
    for _pos in ['NONE', 'SUM', 'CONCAT']:
        for _ls in [False, True]:
            ZOO[f'attn_{_mech.lower()}_{_pos.lower()}_ls{int(_ls)}'] = (
                (lambda m, p, ls: lambda s: _attn_net(s, m, p, ls))(_mech, _pos, _ls),
                _SEQ[0], _SEQ[1], {})
ZOO['attn_softmax_spatial_out'] = (lambda s: s.serial(
    s.Dense(8, 1.3, 0.1), _attn(s, 'SOFTMAX', 'NONE', True)), _SEQ[0], _SEQ[1], {})
ZOO['attn_identity_nobias_2d'] = (lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    _attn(s, 'IDENTITY', 'SUM', True, b_std=None), s.Relu(), s.GlobalAvgPool(), s.Dense(1)),
    (2, 3, 3, 2), (3, 3, 3, 2), {})
ZOO['transformer_block'] = (lambda s: s.serial(
    s.Dense(8, 1.0, 0.0), _transformer_block(s), _transformer_block(s, 'RELU'),
    s.LayerNorm(), s.GlobalAvgPool(), s.Dense(1, 1.0, 0.0)), _SEQ[0], _SEQ[1], {})
ZOO['transformer_block_ls0'] = (lambda s: s.serial(
    s.Dense(8, 1.0, 0.0), _transformer_block(s, 'IDENTITY', False),
    s.LayerNorm(), s.GlobalAvgPool(), s.Dense(1, 1.0, 0.0)), _SEQ[0], _SEQ[1], {})

# ----------------------------------------------------------------------------------------------
# graph aggregation

ZOO['aggregate_1d_binary'] = (lambda s: s.serial(
    s.Dense(8, 1.3, 0.1), s.Relu(), s.Aggregate(aggregate_axis=1),
    s.Dense(8, 1.2, 0.1), s.Relu(), s.Aggregate(aggregate_axis=1),
    s.GlobalAvgPool(), s.Dense(1)), _SEQ[0], _SEQ[1], {'pattern': Pattern((5,), 'binary')})
ZOO['aggregate_1d_weighted_spatial_out'] = (lambda s: s.serial(
    s.Dense(8, 1.3, 0.1), s.Erf(), s.Aggregate()),
    _SEQ[0], _SEQ[1], {'pattern': Pattern((5,), 'weighted')})
ZOO['aggregate_2d'] = (lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.Aggregate(aggregate_axis=(1, 2)),
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.Flatten(), s.Dense(1)),
    (2, 3, 3, 2), (3, 3, 3, 2), {'pattern': Pattern((3, 3), 'binary')})
ZOO['aggregate_x2none'] = (ZOO['aggregate_1d_binary'][0], _SEQ[0], None,
                           {'pattern': Pattern((5,), 'binary')})

# ----------------------------------------------------------------------------------------------
# DotGeneral, Index, ImageResize

_DG_VEC = np.array([1.0, -0.5, 0.25, 2.0])           # contracts the W axis (size 4) of _IMG
_DG_MAT = np.array([[0.5, -1.0, 0.0, 0.3, 1.2],
                    [1.0, 0.2, -0.7, 0.0, 0.4],
                    [0.0, 0.9, 0.1, -0.2, 0.6],
                    [0.3, 0.0, 0.0, 1.1, -0.5],
                    [-0.4, 0.6, 0.8, 0.2, 0.0],
                    [0.0, 0.0, 1.0, 0.0, 0.0]])   # (6, 5) contracts the H axis (size 5)
# NB: with `lhs`, the constant's free axis comes first in the output, so the batch axis moves
# to position 1 (N, 5, 4, C) -> (6, N, 4, C); later layers must be told `batch_axis=1`.

ZOO['dotgeneral_rhs_vector'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.DotGeneral(rhs=_DG_VEC, dimension_numbers=(((2,), (0,)), ((), ()))),
    s.Conv(4, (2,), (1,), 'SAME', 1.1, 0.1), s.Relu(), s.Flatten(), s.Dense(1)))
ZOO['dotgeneral_lhs_matrix'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.DotGeneral(lhs=_DG_MAT, dimension_numbers=(((1,), (1,)), ((), ()))),
    s.Flatten(batch_axis=1), s.Dense(3, 1.1, 0.1), s.Relu(), s.Dense(1)))
ZOO['dotgeneral_lhs_matrix_then_dense'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.DotGeneral(lhs=_DG_MAT, dimension_numbers=(((1,), (1,)), ((), ()))),
    s.Dense(4, 1.1, 0.1), s.Relu(), s.Flatten(), s.Dense(1)))
ZOO['dotgeneral_lhs_matrix_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.DotGeneral(lhs=_DG_MAT, dimension_numbers=(((1,), (1,)), ((), ())))))
ZOO['dotgeneral_rhs_then_relu'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1),
    s.DotGeneral(rhs=_DG_VEC, dimension_numbers=(((2,), (0,)), ((), ()))), s.Relu(),
    s.Flatten(), s.Dense(1)))
ZOO['dotgeneral_rhs_scalar'] = _fc(lambda s: s.serial(
    s.Dense(16, 1.2, 0.1), s.Relu(), s.DotGeneral(rhs=2.5), s.Dense(1)))
ZOO['dotgeneral_lhs_scalar_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.DotGeneral(lhs=-0.5)), shapes=_SP)

ZOO['index_spatial'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Index(idx=s.Slice[:, 1:4, ::-1]),
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.Flatten(), s.Dense(1)))
ZOO['index_spatial_int'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Index(idx=s.Slice[:, 2, ...]),
    s.Conv(4, (2,), (1,), 'SAME', 1.3, 0.1), s.Relu(), s.Flatten(), s.Dense(1)))
ZOO['index_spatial_stride_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Index(idx=s.Slice[:, ::2, 1:])), shapes=_SP)
ZOO['index_channel_full'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Index(idx=s.Slice[..., :]), s.Flatten(), s.Dense(1)))
ZOO['index_channel'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Index(idx=s.Slice[..., :2]), s.Flatten(), s.Dense(1)))
ZOO['index_batch'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Index(idx=s.Slice[::2]), s.Flatten(), s.Dense(1)))

ZOO['image_resize_linear_up'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ImageResize((-1, 7, 6, -1), 'linear'), s.Conv(4, (2, 2), padding='SAME'), s.Relu(),
    s.Flatten(), s.Dense(1)),
    shapes=((3, 4, 3, 2), (2, 4, 3, 2)))
ZOO['image_resize_nearest_up'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ImageResize((-1, 7, 6, -1), 'nearest'), s.Conv(4, (2, 2), padding='SAME'), s.Relu(),
    s.Flatten(), s.Dense(1)),
    shapes=((3, 4, 3, 2), (2, 4, 3, 2)))
ZOO['image_resize_linear_down'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ImageResize((-1, 3, 2, -1), 'linear'), s.Dense(4, 1.2, 0.1), s.Relu(), s.Flatten(),
    s.Dense(1)))
ZOO['image_resize_linear_down_noaa'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ImageResize((-1, 3, 2, -1), 'linear', antialias=False), s.Flatten(), s.Dense(1)))
ZOO['image_resize_then_relu'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1),
    s.ImageResize((-1, 7, 6, -1), 'linear'), s.Relu(), s.Flatten(), s.Dense(1)),
    shapes=((3, 4, 3, 2), (2, 4, 3, 2)))
ZOO['image_resize_linear_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ImageResize((-1, 6, 2, -1), 'linear')), shapes=_SP)
ZOO['image_resize_nearest_down_spatial_out'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.ImageResize((-1, 2, -1, -1), 'nearest')), shapes=_SP)

# ----------------------------------------------------------------------------------------------
# masking (kernel_fn(..., mask_constant=MASK_CONSTANT))

ZOO['mask_conv_gap'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.Conv(4, (3, 3), (1, 1), 'SAME', 1.3, 0.1), s.Relu(), s.GlobalAvgPool(), s.Dense(1)),
    kwargs={'mask_constant': MASK_CONSTANT})
MASKED['mask_conv_gap'] = 0.3
ZOO['mask_conv_flatten'] = _img(lambda s: s.serial(
    s.Conv(4, (2, 2), (1, 1), 'SAME', 1.3, 0.1), s.Relu(),
    s.AvgPool((2, 2), (1, 1), 'SAME'), s.Flatten(), s.Dense(1)),
    kwargs={'mask_constant': MASK_CONSTANT})
MASKED['mask_conv_flatten'] = 0.3
ZOO['mask_attention'] = (lambda s: s.serial(
    s.Dense(8, 1.3, 0.1), _attn(s, 'SOFTMAX', 'NONE', True), s.Relu(),
    s.GlobalAvgPool(), s.Dense(1)), _SEQ[0], _SEQ[1], {'mask_constant': MASK_CONSTANT})
MASKED['mask_attention'] = 0.3
ZOO['mask_attention_identity_sum'] = (lambda s: s.serial(
    s.Dense(8, 1.3, 0.1), _attn(s, 'IDENTITY', 'SUM', True), s.Relu(),
    s.GlobalAvgPool(), s.Dense(1)), _SEQ[0], _SEQ[1], {'mask_constant': MASK_CONSTANT})
MASKED['mask_attention_identity_sum'] = 0.3
