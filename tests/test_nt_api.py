"""Smaller parts of neural_tangents' public API that NT's own code and tests use: its enums in
`stax`, `MaskedArray`, `batch`'s `batch_size=0` and `device_count=`, and `get` naming the
kernel's `shape1` / `shape2`.  Expected behaviour is NT 0.6.5's documented one."""

import enum

import jax
import numpy as np
import pytest

import ntc
from ntc import predict, spec, stax
from ntc.covariance.masking import MaskedArray
from ntc.errors import InputError, ValidationError

FC = stax.serial(stax.Dense(8, 1.5, 0.1), stax.Relu(), stax.Dense(1))
X1 = np.random.RandomState(0).randn(7, 3)
X2 = np.random.RandomState(1).randn(5, 3)

# -- enums -----------------------------------------------------------------------------------------

NT_MEMBERS = {  # NT's members, each valued by its own name
    'Padding': ('CIRCULAR', 'SAME', 'VALID'),
    'PositionalEmbedding': ('NONE', 'SUM', 'CONCAT'),
    'AttentionMechanism': ('SOFTMAX', 'IDENTITY', 'ABS', 'RELU'),
    'AggregateImplementation': ('DENSE', 'SPARSE'),
}


@pytest.mark.parametrize('name', sorted(NT_MEMBERS))
def test_enums_have_nts_members(name):
    e = getattr(stax, name)
    assert issubclass(e, enum.Enum) and name in stax.__all__
    assert tuple(m.name for m in e) == NT_MEMBERS[name]
    assert all(m.value == m.name for m in e)


def test_masked_array_is_exported():
    assert stax.MaskedArray is MaskedArray and 'MaskedArray' in stax.__all__


ENUM_LAYERS = [  # (a layer built with an enum member, the same layer built with the string)
    (lambda: stax.Conv(4, (3, 3), padding=stax.Padding.SAME),
     lambda: stax.Conv(4, (3, 3), padding='SAME')),
    (lambda: stax.ConvTranspose(4, (3, 3), padding=stax.Padding.CIRCULAR),
     lambda: stax.ConvTranspose(4, (3, 3), padding='circular')),
    (lambda: stax.AvgPool((2, 2), padding=stax.Padding.SAME),
     lambda: stax.AvgPool((2, 2), padding='SAME')),
    (lambda: stax.SumPool((2, 2), padding=stax.Padding.VALID),
     lambda: stax.SumPool((2, 2), padding='valid')),
    (lambda: stax.GlobalSelfAttention(4, 4, 4, 2,
                                      attention_mechanism=stax.AttentionMechanism.RELU,
                                      pos_emb_type=stax.PositionalEmbedding.SUM),
     lambda: stax.GlobalSelfAttention(4, 4, 4, 2, attention_mechanism='RELU',
                                      pos_emb_type='SUM')),
    (lambda: stax.Aggregate(implementation=stax.AggregateImplementation.SPARSE),
     lambda: stax.Aggregate(implementation='SPARSE')),
]


@pytest.mark.parametrize('with_enum, with_string', ENUM_LAYERS)
def test_enum_member_is_accepted_where_its_name_is(with_enum, with_string):
    """The same op, and its spec dump writes the plain string (the spec stays loadable)."""
    net = with_enum()
    assert net == with_string()
    dumped = spec.dumps(net)
    assert 'Padding.' not in dumped and 'Mechanism.' not in dumped
    assert 'Embedding.' not in dumped and 'Implementation.' not in dumped
    assert spec.loads(dumped) == net


def test_another_librarys_enum_member_is_read_by_its_value():
    """NT's own `stax.Padding.SAME` (any Enum member valued 'SAME') works too."""
    class Padding(enum.Enum):
        SAME = 'SAME'
    assert stax.Conv(2, (3,), padding=Padding.SAME) == stax.Conv(2, (3,), padding='SAME')


def test_enum_padding_gives_the_strings_kernel():
    x = np.random.RandomState(0).randn(3, 5, 5, 2)
    nets = [stax.serial(stax.Conv(3, (3, 3), padding=p), stax.Relu(),
                        stax.AvgPool((2, 2), padding=p), stax.Flatten(), stax.Dense(1))
            for p in (stax.Padding.CIRCULAR, 'CIRCULAR')]
    a, b = (n.kernel_fn(x, None, ('nngp', 'ntk')) for n in nets)
    np.testing.assert_array_equal(a.nngp, b.nngp)
    np.testing.assert_array_equal(a.ntk, b.ntk)


def test_a_member_of_the_wrong_enum_is_refused():
    with pytest.raises(ValidationError, match='padding'):
        stax.Conv(2, (3,), padding=stax.AttentionMechanism.SOFTMAX)


# -- batch: batch_size=0 and device_count= -----------------------------------------------------


@pytest.mark.parametrize('x2', [None, X2])
def test_batch_size_zero_is_one_call_over_everything(x2):
    """NT: batch_size=0 means no batching; the kernels are those of the un-batched call."""
    want = FC.kernel_fn(X1, x2, ('nngp', 'ntk'))
    batched = ntc.batch(FC.kernel_fn, 0, progress=False)
    got = batched(X1, x2, ('nngp', 'ntk'))
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-13)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-13)
    assert batched.stats.tiles_computed == 1


def test_batch_size_zero_by_keyword_with_device_count():
    got = ntc.batch(FC.kernel_fn, batch_size=0, device_count=-1, progress=False)(X1, X2, 'nngp')
    np.testing.assert_allclose(got, FC.kernel_fn(X1, X2, 'nngp'), rtol=1e-13)


@pytest.mark.parametrize('count, used', [(-1, len(jax.local_devices())), (0, 1), (2, 2)])
def test_device_count_keyword_has_nts_meaning(count, used):
    batched = ntc.batch(FC.kernel_fn, 2, device_count=count, progress=False)
    assert batched.devices == jax.local_devices()[:used]
    np.testing.assert_allclose(batched(X1, None, 'ntk'), FC.kernel_fn(X1, None, 'ntk'),
                               rtol=1e-13)


def test_devices_and_device_count_together_are_refused():
    with pytest.raises(InputError, match='both devices=.*device_count'):
        ntc.batch(FC.kernel_fn, 2, devices=jax.local_devices()[:1], device_count=1)
    with pytest.raises(InputError, match='both devices=.*device_count'):
        ntc.batch(FC.kernel_fn, 2, 0, device_count=1)
    with pytest.raises(InputError, match='device_count must be an integer'):
        ntc.batch(FC.kernel_fn, 2, device_count=jax.local_devices())


# -- get naming shape1 / shape2 --------------------------------------------------------------------


def test_get_shapes_are_the_output_shapes():
    """NT's Kernel.shape1/shape2: the finite network's output shapes on x1 and x2, as tuples."""
    out = FC.kernel_fn(X1, X2, ('nngp', 'shape1', 'ntk', 'shape2'))
    assert out._fields == ('nngp', 'shape1', 'ntk', 'shape2')
    assert out.shape1 == (7, 1) and out.shape2 == (5, 1)
    assert isinstance(out.shape1, tuple) and all(type(d) is int for d in out.shape1)
    np.testing.assert_array_equal(out.nngp, FC.kernel_fn(X1, X2, 'nngp'))
    np.testing.assert_array_equal(out.ntk, FC.kernel_fn(X1, X2, 'ntk'))


def test_get_one_shape_and_x2_none():
    assert FC.kernel_fn(X1, None, 'shape2') == (7, 1)
    both = FC.kernel_fn(X1, None, ('shape1', 'shape2'))
    assert both._fields == ('shape1', 'shape2') and both == ((7, 1), (7, 1))


def test_get_shapes_follow_the_layers_axes():
    """NCHW input into a SAME conv writing NHWC, then a VALID 2×2 conv: (N, 5-1, 6-1, 5)."""
    net = stax.serial(stax.Conv(2, (3, 3), padding='SAME',
                                dimension_numbers=('NCHW', 'OIHW', 'NHWC')),
                      stax.Relu(), stax.Conv(5, (2, 2)))
    x = np.random.RandomState(2).randn(2, 3, 5, 6)
    assert net.kernel_fn(x, x[:1], ('shape1', 'shape2')) == ((2, 4, 5, 5), (1, 4, 5, 5))
    transposed = stax.Dense(3, batch_axis=1, channel_axis=0)  # batch on axis 1
    xt = np.random.RandomState(3).randn(4, 6)
    assert transposed.kernel_fn(xt, xt[:, :2], ('shape1', 'shape2')) == ((3, 6), (3, 2))


def test_shapes_are_not_plan_kernels():
    with pytest.raises(InputError, match="'shape1', an output shape"):
        ntc.compile(FC, (-1, 3), ('nngp', 'shape1'))
    with pytest.raises(InputError, match="unknown kernel 'shape3'"):
        FC.kernel_fn(X1, None, 'shape3')


def test_predict_traces_a_repeated_axis_once():
    """NT accepts trace_axes naming one axis twice ((-1, 1) for 2-d targets): it is traced once."""
    rs = np.random.RandomState(0)
    x, y, xt = rs.randn(6, 3), rs.randn(6, 2), rs.randn(4, 3)
    _, _, kfn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(2))
    k, kt = kfn(x, None, 'ntk'), kfn(xt, x, 'ntk')
    for make in (lambda ta: predict.gradient_descent_mse(k, y, trace_axes=ta)(
                     1.0, np.zeros_like(y), np.zeros((4, 2)), kt)[1],
                 lambda ta: predict.gp_inference(k, y, diag_reg=1e-3, trace_axes=ta)('ntk', kt)):
        np.testing.assert_allclose(make((-1, 1)), make((-1,)), rtol=1e-12)
