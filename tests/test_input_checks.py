"""Bad data is refused at the boundary, not computed (issue 19, section 2 and 3).

Integer inputs are cast to the float dtype in use (no overflow); complex and non-numeric inputs,
NaN/Inf values (outside masked entries), zero features and NaN `pattern`s raise a one-line
`NtcError`; N = 0 gives an empty kernel of the right shape; a call that cannot fit in the
device's memory is refused with a tile size for `ntc.batch`.  Value checks apply to concrete
inputs only: under `jax.jit` the traced path is unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import checks, stax
from ntc.errors import InputError, ShapeError

RNG = np.random.RandomState(0)


def gram(x):
    """<x_i, x_j> / features in float64: the input kernel, computed independently."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x @ x.T / x.shape[1]


# ----------------------------------------------------------------------------- dtypes


def test_uint8_input_does_not_overflow():
    x = np.array([[100, 100], [3, 4]], np.uint8)
    k = stax.Dense(1).kernel_fn(x, None, 'nngp')
    assert float(k[0, 0]) == 10000.0  # (100² + 100²) / 2; uint8 arithmetic gave 16
    np.testing.assert_allclose(k, gram(x), rtol=1e-12)


@pytest.mark.parametrize('dtype', [np.uint8, np.int16, np.int64, np.bool_])
def test_integer_and_bool_inputs_are_cast_to_the_float_in_use(dtype):
    x = (RNG.rand(3, 5) * 200).astype(dtype)
    x2 = (RNG.rand(2, 5) * 200).astype(dtype)
    net = stax.serial(stax.Dense(4, 1.5, 0.1), stax.Relu(), stax.Dense(1))
    want = net.kernel_fn(x.astype(np.float64), x2.astype(np.float64), ('nngp', 'ntk'))
    got = net.kernel_fn(x, x2, ('nngp', 'ntk'))
    assert got.nngp.dtype == jnp.float64  # conftest turns x64 on
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)


def test_integer_input_under_jit_and_through_a_plan():
    x = np.array([[100, 100], [3, 4]], np.uint8)
    kf = stax.Dense(1).kernel_fn
    np.testing.assert_allclose(jax.jit(lambda a: kf(a, None, 'nngp'))(x), gram(x), rtol=1e-12)
    plan = ntc.compile(stax.Dense(1), x.shape, 'nngp')
    np.testing.assert_allclose(plan(x), gram(x), rtol=1e-12)


def test_float_dtype_follows_x64():
    assert checks.float_dtype() == jnp.float64
    with jax.enable_x64(False):
        assert checks.float_dtype() == jnp.float32


def test_apply_fn_casts_integer_inputs():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1))
    x = np.array([[200, 100], [3, 4]], np.uint8)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    np.testing.assert_allclose(apply_fn(params, x), apply_fn(params, x.astype(np.float64)),
                               rtol=1e-12)


@pytest.mark.parametrize('x', [np.ones((2, 3), complex), jnp.ones((2, 3), jnp.complex64)])
def test_complex_input_is_refused(x):
    with pytest.raises(InputError, match='complex') as e:
        stax.Dense(1).kernel_fn(x, None, 'nngp')
    assert str(e.value).startswith('x1:')
    with pytest.raises(InputError, match='complex'):
        stax.Dense(1).kernel_fn(np.ones((2, 3)), 2 * x, 'nngp')


def test_non_numeric_input_is_refused():
    with pytest.raises(InputError, match='x1'):
        stax.Dense(1).kernel_fn(np.array([['a', 'b']]), None, 'nngp')


# ----------------------------------------------------------------------------- values


def test_nan_in_x1_is_refused_with_its_index():
    x = RNG.randn(3, 4)
    x[1, 2] = np.nan
    with pytest.raises(InputError) as e:
        stax.Dense(1).kernel_fn(x, None, 'nngp')
    assert str(e.value).startswith('x1:') and '[1, 2]' in str(e.value)


def test_inf_in_x2_is_refused_with_its_index():
    x2 = RNG.randn(2, 4)
    x2[0, 3] = -np.inf
    with pytest.raises(InputError) as e:
        stax.serial(stax.Dense(2), stax.Relu()).kernel_fn(RNG.randn(3, 4), x2, 'ntk')
    assert str(e.value).startswith('x2:') and '[0, 3]' in str(e.value)


def test_nan_is_refused_by_plans_and_apply_fn():
    x = RNG.randn(3, 4)
    x[2, 0] = np.inf
    with pytest.raises(InputError, match=r'\[2, 0\]'):
        ntc.compile(stax.Dense(1), x.shape, 'nngp').raw(x)
    init_fn, apply_fn, _ = stax.Dense(1)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(InputError, match=r'inputs: entry \[2, 0\]'):
        apply_fn(params, x)


def test_nan_marking_masked_entries_is_accepted():
    """With mask_constant=nan the NaNs are missing entries, not bad data: the kernel is that
    of the truncated sequences."""
    net = stax.serial(stax.Dense(4, 1.2, 0.1), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    x = RNG.randn(2, 5, 3)
    m = x.copy()
    m[:, 3:] = np.nan
    got = net.kernel_fn(m, None, 'nngp', mask_constant=np.nan)
    np.testing.assert_allclose(got, net.kernel_fn(x[:, :3], None, 'nngp'), rtol=1e-10)
    m[0, 0, 1] = np.nan  # one NaN inside an unmasked position is still bad data
    with pytest.raises(InputError, match=r'\[0, 0, 1\]'):
        net.kernel_fn(m, None, 'nngp', mask_constant=7.0)


def test_values_are_not_checked_under_jit():
    x = RNG.randn(3, 4)
    x[0, 0] = np.nan
    kf = stax.Dense(1).kernel_fn
    out = jax.jit(lambda a: kf(a, None, 'nngp'))(x)  # traced: no value check, no sync
    assert np.isnan(np.asarray(out)).any()


def test_nan_pattern_is_refused():
    net = stax.serial(stax.Dense(3), stax.Aggregate())
    x = RNG.randn(2, 4, 3)
    p = RNG.rand(2, 4, 4)
    p[1, 2, 3] = np.nan
    with pytest.raises(InputError) as e:
        net.kernel_fn(x, None, 'nngp', pattern=p)
    assert str(e.value).startswith('pattern:') and '[1, 2, 3]' in str(e.value)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize('shape', [(2, 0), (2, 3, 0), (2, 0, 3)])
def test_zero_features_are_refused(shape):
    net = stax.Dense(1) if len(shape) == 2 else stax.serial(stax.Dense(1), stax.GlobalAvgPool())
    with pytest.raises(ShapeError, match='zero-size axis'):
        net.kernel_fn(np.ones(shape), None, 'nngp')


@pytest.mark.parametrize('net, feat', [
    (stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1)), (4,)),
    (stax.serial(stax.Conv(2, (2,), padding='SAME'), stax.Relu()), (5, 2)),
    (stax.serial(stax.Conv(2, (2,)), stax.Relu(), stax.AvgPool((2,))), (5, 2)),
])
def test_empty_batch_gives_an_empty_kernel_of_the_right_shape(net, feat):
    x1, x2 = RNG.randn(3, *feat), RNG.randn(2, *feat)
    empty = np.zeros((0,) + feat)
    full = net.kernel_fn(x1, x2, ('nngp', 'ntk', 'cov1', 'cov2'))
    for a, b, want in ((empty, x2, (0, 2)), (x1, empty, (3, 0)), (empty, None, (0, 0))):
        got = net.kernel_fn(a, b, ('nngp', 'ntk'))
        for k, ref in zip(got, full[:2]):
            assert k.shape == want + ref.shape[2:]
    cov1 = net.kernel_fn(empty, x2, 'cov1')
    assert cov1.shape == (0,) + full.cov1.shape[1:]


# ----------------------------------------------------------------------------- memory


def test_call_that_cannot_fit_is_refused_with_a_tile_size(monkeypatch):
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = RNG.randn(64, 5)
    plan = ntc.compile(net, x.shape, 'nngp', dtype=x.dtype)
    free = 0.5 * plan.peak_bytes(64, 64)
    monkeypatch.setattr(checks, 'SMALL_BYTES', 0)
    monkeypatch.setattr(checks, 'free_memory', lambda device: free)
    with pytest.raises(InputError, match=r'ntc\.batch\(kernel_fn, batch_size=(\d+)\)') as e:
        net.kernel_fn(x, None, 'nngp')
    tile = int(e.value.hint.split('batch_size=')[1].split(')')[0])
    assert 1 <= tile < 64
    assert 3 * plan.peak_bytes(tile, tile) <= free < 3 * plan.peak_bytes(tile + 1, tile + 1)
    # the suggested tiling runs, and gives the kernel of an unpatched direct call
    got = ntc.batch(net.kernel_fn, batch_size=tile)(x, None, 'nngp')
    monkeypatch.setattr(checks, 'free_memory', lambda device: 1e15)
    np.testing.assert_allclose(got, net.kernel_fn(x, None, 'nngp'), rtol=1e-12)


def test_call_that_fits_is_not_refused(monkeypatch):
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = RNG.randn(16, 5)
    plan = ntc.compile(net, x.shape, 'nngp', dtype=x.dtype)
    monkeypatch.setattr(checks, 'SMALL_BYTES', 0)
    monkeypatch.setattr(checks, 'free_memory', lambda device: plan.peak_bytes(16, 16))
    net.kernel_fn(x, None, 'nngp')


def test_plan_in_float32_scales_its_memory_model_to_float64_inputs(monkeypatch):
    x = RNG.randn(32, 5)
    plan = ntc.compile(stax.Dense(1), x.shape, 'nngp')  # modelled in float32
    monkeypatch.setattr(checks, 'SMALL_BYTES', 0)
    monkeypatch.setattr(checks, 'free_memory', lambda device: 1.5 * plan.peak_bytes(32, 32))
    with pytest.raises(InputError, match='GB'):
        plan(x)  # float64 needs twice the modelled float32 bytes
    plan(x.astype(np.float32))


def test_terabyte_call_is_refused_before_allocating():
    """The issue's case, unpatched: a direct call far beyond any device's memory is an
    InputError (it used to abort the interpreter in XLA's allocator)."""
    x = np.ones((10 ** 6, 1))
    with pytest.raises(InputError, match=r'needs about .* GB .* ntc\.batch'):
        stax.serial(stax.Dense(2), stax.Relu()).kernel_fn(x, None, 'nngp')


def test_batched_kernels_cast_integers_and_refuse_nan():
    """ntc.batch checks its inputs as kernel_fn does: uint8 pixels give the float kernel, NaN
    is refused before any tile is computed."""
    net = stax.serial(stax.Dense(3, W_std=1.0, b_std=0.0))
    x = np.array([[100, 100], [3, 4], [0, 7]], np.uint8)
    want = x.astype(np.float64) @ x.astype(np.float64).T / 2  # x·x'/features, no overflow
    got = ntc.batch(net.kernel_fn, 2)(x, None, 'nngp')
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
    bad = x.astype(np.float64)
    bad[1, 0] = np.nan
    with pytest.raises(ntc.NtcError, match=r'x1.*entry \[1, 0\]'):
        ntc.batch(net.kernel_fn, 2)(bad, None, 'nngp')
