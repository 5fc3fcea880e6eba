"""What `ntc.compile` rejects, and what it must not: concatenation axes out of range, fan-ins of
correlated branches (and the independent ones it accepts, checked against independent
computations and Monte-Carlo), and layers without a kernel, rejected at compile time while their
finite network (init_fn, apply_fn) keeps working."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, NoClosedFormError, ShapeError
from tests.mc_check import assert_monte_carlo_agrees

X = np.random.RandomState(0).randn(3, 4)
X2 = np.random.RandomState(1).randn(2, 4)
SEQ = np.random.RandomState(2).randn(2, 3, 4)


def concat(axis, width=3):
    return stax.serial(stax.FanOut(2), stax.parallel(stax.Dense(width), stax.Dense(width)),
                       stax.FanInConcat(axis=axis))


# ----------------------------------------------------------------------------- FanInConcat


@pytest.mark.parametrize('axis', [5, 2, -3, -7])
def test_concat_axis_out_of_range_names_layer_and_valid_range(axis):
    with pytest.raises(ShapeError) as e:
        concat(axis).kernel_fn(X, None, 'nngp')
    msg = str(e.value)
    assert 'serial[2].FanInConcat' in msg and f'axis={axis}' in msg and '[-2, 1]' in msg, msg
    with pytest.raises(ShapeError, match='out of range'):
        ntc.compile(concat(axis), (-1, 4))
    with pytest.raises(ShapeError, match='out of range'):  # the finite network as well
        concat(axis).init_fn(jax.random.PRNGKey(0), X.shape)


@pytest.mark.parametrize('axis', [3, -4])
def test_concat_axis_out_of_range_on_sequences(axis):
    with pytest.raises(ShapeError, match=r'\[-3, 2\]'):
        concat(axis).kernel_fn(SEQ, None, 'nngp')


def test_concat_axes_follow_the_network_batch_axis():
    """With batch_axis=1, channel_axis=0 the batch axis is 1 (or -1) and the channel axis 0."""
    def net(axis):
        def dense():
            return stax.Dense(3, batch_axis=1, channel_axis=0)
        return stax.serial(stax.FanOut(2), stax.parallel(dense(), dense()),
                           stax.FanInConcat(axis=axis))

    with pytest.raises(ShapeError, match=r'axis=2 is out of range.*batch axis \(1\)'):
        ntc.compile(net(2), (4, -1))
    plan = ntc.compile(net(0), (4, -1))
    assert plan.graph.node(plan.graph.output).ttype.shape == (6, None)


def test_concat_in_range_axes_agree():
    """axis=1 and axis=-1 name the channel axis of 2-D inputs: the kernel of two Dense branches
    of one width is the Dense kernel x·x'/d (W_std=1, no bias)."""
    expect = X @ X.T / X.shape[1]
    for axis in (1, -1):
        np.testing.assert_allclose(concat(axis).kernel_fn(X, None, 'nngp'), expect, rtol=1e-12)


# ----------------------------------------------------------------------------- FanInProd


def erf_times_relu():
    return stax.serial(stax.FanOut(2), stax.parallel(stax.serial(stax.Dense(8), stax.Erf()),
                                                     stax.serial(stax.Dense(8), stax.Relu())),
                       stax.FanInProd())


def _relu_kernel(k11, k22, k12):
    """Arc-cosine kernel of degree 1 (Cho & Saul 2009): E[relu(u) relu(v)]."""
    s = np.sqrt(k11 * k22)
    theta = np.arccos(np.clip(k12 / s, -1, 1))
    return s * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi), \
        (np.pi - theta) / (2 * np.pi)


def _erf_kernel(k11, k22, k12):
    """Williams (1997): E[erf(u) erf(v)] = 2/π asin(2 k12 / √((1 + 2 k11)(1 + 2 k22)))."""
    d = np.sqrt((1 + 2 * k11) * (1 + 2 * k22))
    return 2 / np.pi * np.arcsin(2 * k12 / d), 4 / np.pi / np.sqrt(d ** 2 - 4 * k12 ** 2)


def test_product_of_independent_branches_is_the_product_of_their_kernels():
    """Each branch starts with its own Dense, so the branches are independent: the NNGP is
    K_erf ⊙ K_relu and the NTK follows the product rule Θ_erf ⊙ K_relu + K_erf ⊙ Θ_relu.
    Expected values from the closed forms in numpy (Dense: K = x·x'/d, Θ = K)."""
    k = X @ X.T / X.shape[1]
    d = np.diag(k)
    k_erf, dk_erf = _erf_kernel(d[:, None], d[None, :], k)
    k_relu, dk_relu = _relu_kernel(d[:, None], d[None, :], k)
    th_erf, th_relu = k * dk_erf, k * dk_relu  # Θ of φ(Dense): Θ_in · E[φ'φ'] with Θ_in = K
    out = erf_times_relu().kernel_fn(X, None, ('nngp', 'ntk'))
    np.testing.assert_allclose(out.nngp, k_erf * k_relu, rtol=1e-10)
    np.testing.assert_allclose(out.ntk, th_erf * k_relu + k_erf * th_relu, rtol=1e-10)


def test_product_of_independent_branches_agrees_with_monte_carlo():
    assert_monte_carlo_agrees(erf_times_relu(), X, X2, n_samples=48)


def test_branch_of_a_fresh_layer_and_its_input_multiply_independently():
    """Dense(h) is independent of h at infinite width (its weights are its own): the product
    h ⊙ Dense(h) has kernel K_h ⊙ K_Dense(h)."""
    def net(width):
        return stax.serial(stax.Dense(width), stax.FanOut(2),
                           stax.parallel(stax.Dense(width), stax.Identity()), stax.FanInProd())

    k = X @ X.T / X.shape[1]
    out = net(8).kernel_fn(X, None, ('nngp', 'ntk'))
    np.testing.assert_allclose(out.nngp, k * k, rtol=1e-12)
    # Θ_h = K, Θ_Dense(h) = K + Θ_h = 2K: Θ = Θ_h ⊙ K + K ⊙ 2K
    np.testing.assert_allclose(out.ntk, 3 * k * k, rtol=1e-12)
    # the finite-width bias is O(1/width) (a unit's own weight W_ii sees h_i): wide networks
    assert_monte_carlo_agrees(net(128), X, X2, n_samples=32)


@pytest.mark.parametrize('branches, shared', [
    ((stax.Erf(), stax.Relu()), 'serial[0].Dense'),
    ((stax.Erf(), stax.serial(stax.Relu(), stax.Dense(8, W_std=0.0))), 'serial[0].Dense'),
    ((stax.Dense(8, W_std=0.0), stax.Identity()), 'serial[0].Dense'),
])
def test_product_of_correlated_branches_is_refused(branches, shared):
    net = stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(*branches), stax.FanInProd())
    with pytest.raises(ArchitectureError) as e:
        ntc.compile(net, (-1, 4))
    msg = str(e.value)
    assert 'serial[3].FanInProd' in msg and 'correlated' in msg and shared in msg, msg


def test_product_of_the_raw_input_with_itself_is_refused():
    net = stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.Identity()),
                      stax.FanInProd())
    with pytest.raises(ArchitectureError, match='raw input'):
        net.kernel_fn(X, None, 'nngp')


def test_sum_of_independent_branches_with_nonzero_means_is_refused():
    """relu(z1) + relu(z2) for independent z1, z2: the kernel has the cross term
    E[relu z1] E[relu z2'] ≠ 0, which the sum rule does not compute."""
    net = stax.serial(stax.FanOut(2), stax.parallel(stax.serial(stax.Dense(8), stax.Relu()),
                                                    stax.serial(stax.Dense(8), stax.Relu())),
                      stax.FanInSum())
    with pytest.raises(ArchitectureError, match='serial\\[2\\].FanInSum.*zero mean'):
        ntc.compile(net, (-1, 4))


def test_sum_of_a_fresh_branch_and_a_deeper_function_of_it():
    """z + relu(Dense(relu(z))): the deeper branch passes through its own Dense, so it is
    independent of z, and z has zero mean: K = K_z + K_relu(Dense(relu(z)))."""
    def net(width):
        return stax.serial(stax.Dense(width), stax.FanOut(2),
                           stax.parallel(stax.Identity(),
                                         stax.serial(stax.Relu(), stax.Dense(width), stax.Relu())),
                           stax.FanInSum())

    k = X @ X.T / X.shape[1]
    d = np.diag(k)
    k1, _ = _relu_kernel(d[:, None], d[None, :], k)
    d1 = np.diag(k1)
    k2, _ = _relu_kernel(d1[:, None], d1[None, :], k1)
    np.testing.assert_allclose(net(8).kernel_fn(X, None, 'nngp'), k + k2, rtol=1e-10)
    assert_monte_carlo_agrees(net(128), X, X2, n_samples=32)


# ----------------------------------------------------------------------------- no kernel


def softmax_attention():
    return stax.serial(stax.Dense(4), stax.GlobalSelfAttention(
        4, 4, 4, 2, linear_scaling=False, attention_mechanism='SOFTMAX'))


def elementwise_without_nngp_fn():
    return stax.serial(stax.Dense(4), stax.Elementwise(fn=jnp.tanh))


NO_KERNEL = [
    (softmax_attention, (2, 3, 4), 'serial[1].GlobalSelfAttention', 'monte_carlo_kernel_fn'),
    (elementwise_without_nngp_fn, (3, 4), 'serial[1].Elementwise', 'ElementwiseNumerical'),
    (lambda: stax.serial(stax.Dense(4), stax.repeat(stax.serial(
        stax.Dense(4), stax.Elementwise(fn=jnp.tanh)), 2)), (3, 4),
     'serial[1].repeat[0].serial[1].Elementwise', 'ElementwiseNumerical'),
    (lambda: stax.serial(stax.Dense(4), stax.Index(stax.Slice[..., :2])), (3, 4),
     'serial[1].Index', 'channel axis'),
    (lambda: stax.serial(stax.Conv(4, (2,), padding='SAME'), stax.ImageResize((-1, 6, -1),
                                                                              'cubic')),
     (2, 3, 4), 'serial[1].ImageResize', "'linear' or 'nearest'"),
]


@pytest.mark.parametrize('make, shape, path, fix', NO_KERNEL)
def test_compile_rejects_layers_without_a_kernel(make, shape, path, fix):
    with pytest.raises(NoClosedFormError) as e:
        ntc.compile(make(), (-1,) + shape[1:])
    msg = str(e.value)
    assert path in msg and fix in msg, msg
    with pytest.raises(NoClosedFormError):  # kernel_fn compiles before it runs anything
        make().kernel_fn(np.ones(shape), None, 'nngp')


@pytest.mark.parametrize('make, shape, path, fix', NO_KERNEL)
def test_finite_network_of_a_layer_without_a_kernel_still_works(make, shape, path, fix):
    init_fn, apply_fn, _ = make()
    x = np.random.RandomState(3).randn(*shape)
    out_shape, params = init_fn(jax.random.PRNGKey(0), shape)
    y = apply_fn(params, x)
    assert y.shape == shape[:1] + out_shape[1:] and np.all(np.isfinite(y))
    mc = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(1), 2)
    assert np.all(np.isfinite(mc(x, None, 'nngp')))


def test_elementwise_finite_network_is_fn_of_the_dense_output():
    """apply_fn of Dense → Elementwise(tanh) is tanh of apply_fn of the Dense alone."""
    x = np.random.RandomState(4).randn(3, 4)
    init_fn, apply_fn, _ = elementwise_without_nngp_fn()
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    dense_apply = stax.serial(stax.Dense(4)).apply_fn
    dense = [params[0]]  # NT's structure: one entry per layer of the serial
    np.testing.assert_allclose(apply_fn(params, x), np.tanh(dense_apply(dense, x)), rtol=1e-12)
