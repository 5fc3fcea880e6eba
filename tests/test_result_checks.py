"""A non-finite kernel is never returned silently (issue 19, section 2): where values are
concrete, a NaN or Inf in a result raises `NumericalError` naming the first layer whose kernel
is non-finite, with the fix.  Under `jax.jit` nothing is checked (the traced path stays cheap);
`ntc.checks.result_checks(False)` turns the check off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import checks, stax
from ntc.errors import NumericalError

RNG = np.random.RandomState(0)
X = RNG.randn(3, 4)


def nan_rule(cov12, var1, var2):
    return cov12 * np.nan


def bad_net():
    return stax.serial(stax.Dense(4), stax.Elementwise(fn=lambda v: v, nngp_fn=nan_rule),
                       stax.Dense(4), stax.Relu(), stax.Dense(1))


def test_elementwise_rule_returning_nan_is_named():
    with pytest.raises(NumericalError) as e:
        bad_net().kernel_fn(X, None, 'nngp')
    assert str(e.value).startswith('serial[1].Elementwise: Elementwise is the first layer')


@pytest.mark.parametrize('get', [None, 'ntk', ('nngp', 'cov1')])
def test_every_form_of_get_is_checked(get):
    with pytest.raises(NumericalError, match=r'serial\[1\]\.Elementwise'):
        bad_net().kernel_fn(X, RNG.randn(2, 4), get)


def test_plan_raw_is_checked():
    plan = ntc.compile(bad_net(), X.shape, ('nngp', 'ntk'))
    with pytest.raises(NumericalError, match=r'serial\[1\]\.Elementwise'):
        plan.raw(X)


def test_first_bad_layer_inside_a_rolled_loop_is_found():
    body = stax.serial(stax.Dense(4), stax.Elementwise(fn=lambda v: v, nngp_fn=nan_rule))
    net = stax.serial(stax.Dense(4), stax.Relu(), body, body, body, stax.Dense(1))
    assert ntc.compile(net, X.shape, 'nngp').loops_text() != '0'  # runs as a lax.scan
    with pytest.raises(NumericalError) as e:
        net.kernel_fn(X, None, 'nngp')
    assert e.value.path == 'serial[2].serial[1].Elementwise'


def test_bad_layer_inside_repeat_is_named_with_its_iteration():
    """The body's Elementwise is finite until its input's variance passes 10.  The variance
    entering the loop is 1/2 (input 1, halved by the Relu); each iteration's Dense with σw² = 4
    multiplies it by 4: 2, 8, 32, so the third iteration is named."""
    def rule(cov12, var1, var2):
        return jnp.where(var1 > 10, jnp.nan, cov12)

    body = stax.serial(stax.Dense(4, W_std=2.0), stax.Elementwise(fn=lambda v: v, nngp_fn=rule))
    net = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(4), stax.repeat(body, 5),
                      stax.Dense(1))
    x = RNG.randn(3, 4)
    x *= np.sqrt(4 / (x ** 2).sum(1, keepdims=True))  # |x|² / 4 = 1: variance 1 after Dense
    with pytest.raises(NumericalError) as e:
        net.kernel_fn(x, None, 'nngp')
    assert e.value.path == 'serial[3].repeat[2].serial[1].Elementwise'


def test_float32_overflow_is_refused_and_suggests_float64():
    x = np.full((2, 3), 1e30, np.float32)  # x·x = 1e60 overflows float32
    net = stax.serial(stax.Dense(2), stax.Relu())
    with pytest.raises(NumericalError) as e:
        net.kernel_fn(x, None, 'nngp')
    assert e.value.path == 'input' and 'float32' in str(e.value)
    assert 'jax_enable_x64' in str(e.value)
    # in float64 the same data is fine: K = x·x / 3 (σw² = 1), halved by the Relu (arc-cosine
    # kernel at correlation 1)
    x64 = x.astype(np.float64)
    k = net.kernel_fn(x64, None, 'nngp')
    np.testing.assert_allclose(k, np.full((2, 2), x64[0, 0] ** 2 / 2), rtol=1e-12)


def test_layernorm_without_eps_on_a_constant_zero_input_is_refused():
    net = stax.serial(stax.Dense(4), stax.LayerNorm(eps=0.0), stax.Dense(1))
    with pytest.raises(NumericalError) as e:
        net.kernel_fn(np.zeros((2, 3)), None, 'nngp')
    assert e.value.path == 'serial[1].LayerNorm'


def test_result_check_can_be_turned_off():
    with checks.result_checks(False):
        out = bad_net().kernel_fn(X, None, 'nngp')
    assert np.isnan(np.asarray(out)).all()
    with pytest.raises(NumericalError):
        bad_net().kernel_fn(X, None, 'nngp')


def test_results_are_not_checked_under_jit():
    kf = bad_net().kernel_fn
    out = jax.jit(lambda a: kf(a, None, 'nngp'))(X)
    assert np.isnan(np.asarray(out)).all()


def test_finite_results_pass_unchanged():
    net = stax.serial(stax.Dense(4, 1.5, 0.1), stax.Erf(), stax.Dense(1))
    plan = ntc.compile(net, X.shape, ('nngp', 'ntk'))
    got = plan.raw(X)
    want = plan.fn(X, None)  # the lowered function, without any check
    for name in ('nngp', 'ntk'):
        np.testing.assert_array_equal(got[name], want[name])


def test_float16_overflow_is_refused():
    x = np.full((2, 3), 300, np.float16)  # 300² = 90000 > 65504, float16's largest value
    with pytest.raises(NumericalError, match='float16') as e:
        stax.Dense(1).kernel_fn(x, None, 'nngp')
    assert e.value.path == 'input' and 'overflows' in str(e.value)
