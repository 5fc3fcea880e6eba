"""NT-style custom layers (`@stax.layer`, `stax.requires`, `stax.supports_masking`,
`stax.unmask_fn`, `stax.Bool`, `stax.Diagonal`), NT's parameter structure, `Index` with an
integer on the batch or channel axis and `DotGeneral` under `mask_constant`.

Expected values come from numpy or from ntc's built-in layers; the parameter structures are
those neural_tangents 0.6.5 returns (pinned with its venv)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, NoClosedFormError

RNG = np.random.RandomState(0)
X1, X2 = RNG.randn(4, 3), RNG.randn(2, 3)
IM1, IM2 = RNG.randn(3, 4, 4, 2), RNG.randn(2, 4, 4, 2)
KEY = jax.random.PRNGKey(0)


@stax.layer
def Rbf(gamma):
    """exp(-gamma d ||·||²/d) of the input kernel (NT's docs example of a custom layer)."""
    def init_fn(key, input_shape):
        return input_shape, ()

    def apply_fn(params, x, **kwargs):
        raise NotImplementedError

    def kernel_fn(k, **kwargs):
        cov1 = k.cov1.reshape(-1, 1)
        cov2 = (k.cov1 if k.cov2 is None else k.cov2).reshape(1, -1)
        return k.replace(nngp=jnp.exp(-k.shape1[1] * gamma * (cov1 + cov2 - 2 * k.nngp)))

    return init_fn, apply_fn, kernel_fn


def pool(diagonal_batch=True):
    """A global average pool written as an NT custom layer."""
    @stax.layer
    def MyPool():
        def init_fn(key, s):
            return (s[0], s[-1]), ()

        def apply_fn(params, x, **kwargs):
            return jnp.mean(x, axis=(1, 2))

        @stax.requires(diagonal_batch=diagonal_batch,
                       diagonal_spatial=stax.Diagonal(input=stax.Bool.NO))
        def kernel_fn(k, **kwargs):
            def mean(x, lead):
                return None if x is None else jnp.mean(x, axis=tuple(range(lead, x.ndim)))
            lead = 1 if k.diagonal_batch else 2
            return k.replace(nngp=mean(k.nngp, 2), ntk=mean(k.ntk, 2), cov1=mean(k.cov1, lead),
                             cov2=mean(k.cov2, lead), is_gaussian=False, channel_axis=1)

        return init_fn, apply_fn, kernel_fn

    return MyPool()


def conv_net(readout):
    return stax.serial(stax.Conv(4, (3, 3), padding='SAME', b_std=0.2), stax.Relu(), readout,
                       stax.Dense(3), stax.Relu(), stax.Dense(1))


# ----------------------------------------------------------------------------- custom layers


def test_custom_layer_kernel_fn_sees_nt_kernel_fields():
    gamma = 0.4
    sq = ((X1[:, None, :] - X2[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(Rbf(gamma).kernel_fn(X1, X2, 'nngp'), np.exp(-gamma * sq),
                               rtol=1e-12)
    sq11 = ((X1[:, None, :] - X1[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(Rbf(gamma).kernel_fn(X1, None, 'nngp'), np.exp(-gamma * sq11),
                               rtol=1e-12)


@pytest.mark.parametrize('diagonal_batch', [True, False])
def test_custom_layer_with_requirements_matches_built_in(diagonal_batch):
    get = ('nngp', 'ntk')
    want = conv_net(stax.GlobalAvgPool()).kernel_fn(IM1, IM2, get)
    got = conv_net(pool(diagonal_batch)).kernel_fn(IM1, IM2, get)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    same = conv_net(pool(diagonal_batch)).kernel_fn(IM1, None, get)
    for a, b in zip(same, conv_net(stax.GlobalAvgPool()).kernel_fn(IM1, None, get)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_diagonal_batch_false_returns_marginals_over_every_pair():
    k = conv_net(pool(diagonal_batch=False)).kernel_fn(IM1, IM2)
    assert k.cov1.shape == (3, 3) and k.cov2.shape == (2, 2)
    built_in = conv_net(stax.GlobalAvgPool()).kernel_fn
    np.testing.assert_allclose(k.cov1, built_in(IM1, None, 'nngp'), rtol=1e-12)
    np.testing.assert_allclose(k.cov2, built_in(IM2, None, 'nngp'), rtol=1e-12)
    # the compiler gives the whole graph the joint layout the layer needs
    plan = ntc.compile(conv_net(pool(diagonal_batch=False)), IM1.shape)
    assert all(n.cov.batch == 'FULL' for n in plan.graph.nodes())


def test_custom_layer_finite_network_calls_its_functions():
    net = stax.serial(stax.Conv(5, (2, 2), padding='SAME'), pool())
    out_shape, params = net.init_fn(KEY, IM1.shape)
    assert out_shape == (3, 5)
    conv_out = stax.Conv(5, (2, 2), padding='SAME').apply_fn(params[0], IM1)
    np.testing.assert_allclose(net.apply_fn(params, IM1), conv_out.mean(axis=(1, 2)),
                               rtol=1e-12)


def test_layer_keeps_its_op_class_meaning_and_refuses_other_classes():
    assert stax.layer(ntc.layers.activations.Relu) == stax.Relu()
    with pytest.raises(ArchitectureError, match='op class'):
        stax.layer(int)


def test_layer_function_returning_ntc_layers_keeps_them():
    @stax.layer
    def Block(width):
        return stax.serial(stax.Dense(width), stax.Relu())

    assert Block(3) == stax.serial(stax.Dense(3), stax.Relu())


# ----------------------------------------------------------------------------- requirements


def test_diagonal_algebra():
    values = [stax.Diagonal(i, o) for i, o in itertools.product(stax.Bool, repeat=2)]
    for a, b, c in itertools.product(values, repeat=3):
        assert (a >> b) >> c == a >> (b >> c)
        assert c << (b << a) == (c << b) << a == (a >> b) >> c
        assert a & b == b & a and a & a == a
    assert not stax.Diagonal() and stax.Diagonal(output=stax.Bool.YES)
    assert stax.Diagonal(input=stax.Bool.NO, output=stax.Bool.YES).__bool__() is False
    assert stax.Bool.MAYBE & stax.Bool.YES == stax.Bool.MAYBE
    # a layer whose output may be diagonal absorbs what follows it
    yes = stax.Diagonal(output=stax.Bool.YES)
    assert yes >> stax.Diagonal(input=stax.Bool.NO) == yes


# ----------------------------------------------------------------------------- masking


def masked_images():
    x1, x2 = IM1.copy(), IM2.copy()
    x1[0, :2] = 10.
    x2[1, :, 3] = 10.
    return x1, x2


def test_unmask_fn_zeroes_masked_entries():
    x1, _ = masked_images()
    net = stax.serial(stax.Conv(3, (1, 1)), stax.Relu())
    _, params = net.init_fn(KEY, x1.shape)
    masked = net.apply_fn(params, x1, mask_constant=10.)
    plain = stax.unmask_fn(net.apply_fn)(params, x1, mask_constant=10.)
    assert isinstance(masked, stax.MaskedArray) and not isinstance(plain, stax.MaskedArray)
    np.testing.assert_array_equal(plain, np.where(masked.mask, 0., masked.masked_value))
    assert np.all(plain[0, :2] == 0) and np.any(plain[0, 2:] != 0)


def test_supports_masking_layer_gets_the_mask_and_keeps_it():
    seen = []

    @stax.layer
    @stax.supports_masking(remask_kernel=False)
    def Double():
        def apply_fn(params, x, mask=None, **kwargs):
            seen.append(mask)
            return 2 * x

        def kernel_fn(k, **kwargs):
            return k.replace(nngp=4 * k.nngp, ntk=None if k.ntk is None else 4 * k.ntk,
                             cov1=4 * k.cov1, cov2=None if k.cov2 is None else 4 * k.cov2)

        return (lambda key, s: (s, ())), apply_fn, kernel_fn

    x1, x2 = masked_images()
    head = [stax.Conv(3, (2, 2), padding='SAME'), stax.Relu()]
    net = stax.serial(*head, Double(), stax.GlobalAvgPool())
    ref = stax.serial(*head, stax.GlobalAvgPool())
    got = net.kernel_fn(x1, x2, ('nngp', 'ntk'), mask_constant=10.)
    want = ref.kernel_fn(x1, x2, ('nngp', 'ntk'), mask_constant=10.)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, 4 * b, rtol=1e-12)
    _, params = net.init_fn(KEY, x1.shape)
    out = net.apply_fn(params, x1, mask_constant=10.)
    assert seen[-1].shape[:3] == x1.shape[:3] and bool(seen[-1][0, 0, 0, 0])
    np.testing.assert_allclose(out.masked_value,
                               2 * ref.apply_fn(params[:2] + params[3:], x1,
                                                mask_constant=10.).masked_value, rtol=1e-12)


# ----------------------------------------------------------------------------- parameters


def shapes(params):
    return jax.tree_util.tree_map(lambda a: a.shape, params)


@pytest.mark.parametrize('net,shape,want', [
    (stax.Dense(3), (2, 4), ((4, 3), None)),
    (stax.Conv(3, (2, 2)), (2, 5, 5, 4), ((2, 2, 4, 3), None)),
    (stax.LayerNorm(), (2, 4), ()),
    (stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(2)), (2, 4),
     [((4, 3), None), (), ((3, 2), None)]),
    (stax.serial(stax.FanOut(2), stax.parallel(stax.serial(stax.Dense(3), stax.Relu()),
                                               stax.Identity()), stax.FanInConcat()), (2, 3),
     [(), ([((3, 3), None), ()], ()), ()]),
    (stax.repeat(stax.serial(stax.Dense(3), stax.Relu()), 3), (2, 3),
     [((3, 3, 3), None), ()]),
    (stax.serial(stax.serial(stax.Dense(3)), stax.serial(stax.Relu(), stax.Dense(1))), (2, 3),
     [[((3, 3), None)], [(), ((3, 1), None)]]),
])
def test_init_fn_returns_nt_parameter_structure(net, shape, want):
    out_shape, params = net.init_fn(KEY, shape)
    assert shapes(params) == want
    assert out_shape[0] == shape[0]  # NT keeps the input's batch size


def test_apply_fn_takes_nested_params_path_dict_and_empty_tuple():
    net = stax.serial(stax.Dense(3, b_std=0.1), stax.Relu(), stax.Dense(2))
    _, params = net.init_fn(KEY, X1.shape)
    path_dict = {'serial[0].Dense': params[0], 'serial[2].Dense': params[2]}
    np.testing.assert_array_equal(net.apply_fn(params, X1), net.apply_fn(path_dict, X1))
    w, b = params[0]
    h = np.maximum(X1 @ np.asarray(w) / np.sqrt(3) + 0.1 * np.asarray(b), 0)
    w2, _ = params[2]
    np.testing.assert_allclose(net.apply_fn(params, X1), h @ np.asarray(w2) / np.sqrt(3),
                               rtol=1e-12)
    x = np.ones((2, 2, 3, 1))
    pooled = stax.AvgPool((2, 2), (1, 1), 'SAME', normalize_edges=True).apply_fn((), x)
    np.testing.assert_allclose(pooled, x)
    with pytest.raises(ArchitectureError, match='3 layers has 2 entries'):
        net.apply_fn(params[:2], X1)


def test_conv_apply_fn_takes_a_scalar_bias():
    w = RNG.randn(2, 2, 2, 3)
    apply_fn = stax.Conv(3, (2, 2), parameterization='standard').apply_fn
    np.testing.assert_allclose(apply_fn((w, 0.), IM1), apply_fn((w, None), IM1), rtol=1e-12)


def test_repeat_params_index_like_the_unrolled_serial():
    block = stax.serial(stax.Dense(3), stax.Relu())
    _, params = stax.repeat(block, 2).init_fn(KEY, X1.shape)
    steps = [jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(2)]
    np.testing.assert_allclose(stax.repeat(block, 2).apply_fn(params, X1),
                               stax.serial(block, block).apply_fn(steps, X1), rtol=1e-12)


def test_monte_carlo_and_empirical_run_on_nested_params():
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    mc = ntc.monte_carlo_kernel_fn(net.init_fn, net.apply_fn, KEY, 4)
    assert mc(X1, X2, 'nngp').shape == (4, 2)
    _, params = net.init_fn(KEY, X1.shape)
    assert ntc.empirical_kernel_fn(net.apply_fn)(X1, X2, 'ntk', params).shape == (4, 2)


# ----------------------------------------------------------------------------- Index, DotGeneral


@pytest.mark.parametrize('idx', [stax.Slice[..., 1], stax.Slice[1], stax.Slice[1, ..., 0]])
def test_index_integer_on_batch_or_channel_runs_finite_network_only(idx):
    conv = stax.Conv(3, (2, 2))
    net = stax.serial(conv, stax.Index(idx), stax.Relu())
    out_shape, params = net.init_fn(KEY, IM1.shape)
    y = conv.apply_fn(params[0], IM1)
    want = np.maximum(np.asarray(y)[idx], 0)
    np.testing.assert_allclose(net.apply_fn(params, IM1), want, rtol=1e-12)
    assert out_shape == want.shape
    with pytest.raises(NoClosedFormError, match='Index.*(batch|channel) axis'):
        net.kernel_fn(IM1, IM2, 'nngp')
    assert issubclass(NoClosedFormError, NotImplementedError)  # what NT raises


def test_dot_general_under_mask_constant():
    x = np.ones((4, 2, 3, 1))
    dg = stax.DotGeneral(rhs=np.ones((4, 2, 3)), dimension_numbers=(((1,), (1,)), ((2,), (2,))))

    def kernel(m1, m2):
        return dg.kernel_fn(np.where(m1, 10., x), np.where(m2, 10., x), 'nngp',
                            mask_constant=10.)

    none, every = np.zeros(x.shape, bool), np.ones(x.shape, bool)
    np.testing.assert_allclose(kernel(none, none), 4.)  # a sum over 2 positions of ones
    np.testing.assert_allclose(kernel(every, none), 0.)
    half = np.concatenate([every[:2], none[2:]])
    k = kernel(half, none)
    np.testing.assert_allclose(k[:2], 0.)
    np.testing.assert_allclose(k[2:], 4.)
