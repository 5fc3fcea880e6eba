"""Bad input gets a clear ntc.NtcError that names the layer and says how to fix it."""

import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, GaussianityError, InputError, ShapeError

X = np.random.RandomState(0).randn(4, 6)


@pytest.mark.parametrize('net, path, cause', [
    (stax.serial(stax.Relu(), stax.Dense(1)), 'serial[0].Relu', 'raw input'),
    (stax.serial(stax.Dense(3), stax.Relu(), stax.Erf()), 'serial[2].Erf', 'serial[1].Relu'),
    (stax.serial(stax.Dense(3), stax.Relu(), stax.LayerNorm()), 'serial[2].LayerNorm',
     'serial[1].Relu'),
    (stax.serial(stax.Dense(3), stax.Dropout(0.5), stax.Relu()), 'serial[2].Relu',
     'serial[1].Dropout'),
])
def test_non_gaussian_input_to_a_nonlinearity(net, path, cause):
    with pytest.raises(GaussianityError) as e:
        net.kernel_fn(X, X)
    msg = str(e.value)
    assert path in msg and cause in msg and 'insert a Dense' in msg


def test_correlated_branches_cannot_be_summed():
    net = stax.serial(stax.Dense(3), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Identity()),
                      stax.FanInSum())
    with pytest.raises(ArchitectureError) as e:
        net.kernel_fn(X)
    assert 'serial[3].FanInSum' in str(e.value) and 'correlated' in str(e.value)
    assert 'Dense' in str(e.value)


def test_x1_x2_feature_mismatch():
    net = stax.serial(stax.Dense(3), stax.Relu())
    with pytest.raises(InputError, match='same feature shape'):
        net.kernel_fn(X, np.ones((3, 7)))


def test_input_rank_the_network_cannot_take():
    net = stax.serial(stax.Dense(3), stax.Relu())
    with pytest.raises(ShapeError, match='batch axis and a channel axis'):
        net.kernel_fn(np.ones(5))


def test_plan_rejects_inputs_of_another_shape():
    plan = ntc.compile(stax.serial(stax.Dense(3), stax.Relu()), (-1, 6))
    with pytest.raises(InputError, match='feature shape'):
        plan(np.ones((2, 5)))
    with pytest.raises(InputError, match='rank'):
        plan(np.ones((2, 5, 6)))


@pytest.mark.parametrize('get', ['nngpp', ('nngp', 'cov3'), ()])
def test_unknown_get(get):
    net = stax.serial(stax.Dense(3), stax.Relu())
    with pytest.raises(InputError) as e:
        net.kernel_fn(X, X, get)
    assert 'nngp' in str(e.value)


def test_fan_in_width_mismatch_names_the_branches():
    net = stax.serial(stax.FanOut(2), stax.parallel(stax.Dense(3), stax.Dense(4)),
                      stax.FanInSum())
    with pytest.raises(ShapeError) as e:
        net.kernel_fn(X)
    assert 'serial[2].FanInSum' in str(e.value) and 'branch 1' in str(e.value)


def test_errors_are_ntc_errors():
    for cls in (ArchitectureError, GaussianityError, InputError, ShapeError):
        assert issubclass(cls, ntc.NtcError)


def test_a_one_name_tuple_get_returns_a_namedtuple_like_nt():
    kernel_fn = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1)).kernel_fn
    x = np.ones((2, 3))
    k = kernel_fn(x, None, ('nngp',))
    assert k._fields == ('nngp',)
    np.testing.assert_array_equal(k.nngp, kernel_fn(x, None, 'nngp'))
