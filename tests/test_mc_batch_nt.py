"""NT drop-in behaviour of Monte-Carlo estimates and of `ntc.batch` around any kernel function
(issue 15): multi-device Monte-Carlo of conv nets with ``vmap_axes``, argument forwarding of
batched foreign kernel functions, and paired keyword arguments."""

import jax
import numpy as np
import pytest

import ntc
from ntc import stax


def _close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.fixture(scope='module')
def conv_net():
    init_fn, apply_fn, _ = stax.serial(stax.Conv(8, (3, 3)), stax.Relu(), stax.Flatten(),
                                       stax.Dense(1))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 6, 2))
    return init_fn, apply_fn, x


def test_monte_carlo_conv_two_devices_vmap_axes(conv_net):
    """Per-example Jacobians (vmap_axes=0) of a conv net, samples sharded over two devices,
    give the estimate of one device without vmap_axes (the same samples, so equal)."""
    init_fn, apply_fn, x = conv_net
    key = jax.random.PRNGKey(0)
    get = ('nngp', 'ntk')
    ref = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4, device_count=1)(x, None, get)
    for device_count, vmap_axes in ((2, 0), (1, 0), (2, None)):
        out = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 4, device_count=device_count,
                                        vmap_axes=vmap_axes)(x, None, get)
        _close(out.nngp, ref.nngp)
        _close(out.ntk, ref.ntk)


@pytest.fixture(scope='module')
def mlp():
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(2))
    x1 = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (6, 3))
    params = init_fn(jax.random.PRNGKey(0), x1.shape)[1]
    return init_fn, apply_fn, x1, x2, params


def test_batch_empirical_kernel_fn_params_positional_and_keyword(mlp):
    """NT's `batch(empirical_kernel_fn(f), b)(x1, x2, get, params)`: the arguments after x1 and
    x2 reach the empirical function as given, positionally or by keyword."""
    _, apply_fn, x1, x2, params = mlp
    ek = ntc.empirical_kernel_fn(apply_fn)
    batched = ntc.batch(ek, 2)
    ref = ek(x1, x2, 'ntk', params)
    _close(batched(x1, x2, 'ntk', params), ref)
    _close(batched(x1, x2, 'ntk', params=params), ref)
    _close(batched(x1, x2, get='ntk', params=params), ref)
    both = batched(x1, None, ('nngp', 'ntk'), params)
    ref_both = ek(x1, None, ('nngp', 'ntk'), params)
    _close(both.nngp, ref_both.nngp)
    _close(both.ntk, ref_both.ntk)


def test_batch_plain_function_without_get(mlp):
    """A user's `kernel_fn(x1, x2)` is called with the two tiles only (x2=None: x1)."""
    _, _, x1, x2, _ = mlp
    batched = ntc.batch(lambda a, b: a @ b.T, 2)
    _close(batched(x1, x2), x1 @ x2.T)
    _close(batched(x1), x1 @ x1.T)
    _close(batched(x1, None), x1 @ x1.T)


def test_batch_user_function_with_get(mlp):
    """A user's `kernel_fn(x1, x2, get)` gets `get` where it was given."""
    _, _, x1, x2, _ = mlp

    def kernel_fn(a, b, get):
        return {'nngp': a @ b.T, 'ntk': 2 * a @ b.T}[get]

    batched = ntc.batch(kernel_fn, 2)
    _close(batched(x1, x2, 'ntk'), 2 * x1 @ x2.T)
    _close(batched(x1, x2, get='nngp'), x1 @ x2.T)


def test_batch_monte_carlo_kernel_fn(mlp):
    """Tiles of a Monte-Carlo function (the same samples in every tile: its key) equal the
    whole estimate; x2=None gives the symmetric one."""
    init_fn, apply_fn, x1, x2, _ = mlp
    mc = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(3), 3)
    batched = ntc.batch(mc, 2)
    _close(batched(x1, x2, 'ntk'), mc(x1, x2, 'ntk'))
    both = batched(x1, None, ('nngp', 'ntk'))
    ref = mc(x1, None, ('nngp', 'ntk'))
    _close(both.nngp, ref.nngp)
    _close(both.ntk, ref.ntk)
    plain = batched(x1, x2)        # no get: the kernels the function returns
    _close(plain.nngp, mc(x1, x2).nngp)


@pytest.fixture(scope='module')
def graph_net():
    """A graph network: Aggregate takes the adjacency `pattern` of each example."""
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(4), stax.Aggregate(), stax.Relu(),
                                               stax.GlobalAvgPool(), stax.Dense(2))
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x1 = jax.random.normal(k[0], (4, 5, 3))
    x2 = jax.random.normal(k[1], (6, 5, 3))
    p1 = (jax.random.uniform(k[2], (4, 5, 5)) > 0.5).astype(x1.dtype)
    p2 = (jax.random.uniform(k[3], (6, 5, 5)) > 0.5).astype(x1.dtype)
    params = init_fn(k[4], x1.shape)[1]
    return init_fn, apply_fn, kernel_fn, x1, x2, p1, p2, params


def test_empirical_pattern_pair_and_params_keyword(graph_net):
    """`pattern=(p1, p2)`: p1 goes with x1 and p2 with x2; `params=` by keyword is the same
    as positional.  The NNGP is f(x1) f(x2)^T / C, computed here from apply_fn."""
    _, apply_fn, _, x1, x2, p1, p2, params = graph_net
    ek = ntc.empirical_kernel_fn(apply_fn)
    f1, f2 = apply_fn(params, x1, pattern=p1), apply_fn(params, x2, pattern=p2)
    _close(ek(x1, x2, 'nngp', params, pattern=(p1, p2)), f1 @ f2.T / f1.shape[-1])
    _close(ek(x1, x2, 'ntk', params=params, pattern=(p1, p2)),
           ek(x1, x2, 'ntk', params, pattern=(p1, p2)))


def test_batch_tiles_pattern_pairs(graph_net):
    """In `ntc.batch`, a pair of per-example arrays is tiled with x1 and x2: the batched
    kernels of ntc's kernel_fn, an empirical one and a Monte-Carlo one equal the whole."""
    init_fn, apply_fn, kernel_fn, x1, x2, p1, p2, params = graph_net
    pattern = (p1, p2)
    _close(ntc.batch(kernel_fn, 2)(x1, x2, 'ntk', pattern=pattern),
           kernel_fn(x1, x2, 'ntk', pattern=pattern))
    ek = ntc.empirical_kernel_fn(apply_fn)
    _close(ntc.batch(ek, 2)(x1, x2, 'ntk', params, pattern=pattern),
           ek(x1, x2, 'ntk', params, pattern=pattern))
    _close(ntc.batch(ek, 2)(x1, None, 'ntk', params, pattern=(p1, p1)),
           ek(x1, None, 'ntk', params, pattern=(p1, p1)))
    mc = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(3), 2)
    _close(ntc.batch(mc, 2)(x1, x2, 'ntk', pattern=pattern), mc(x1, x2, 'ntk', pattern=pattern))


def test_monte_carlo_batch_size_pattern_pair(graph_net):
    """`monte_carlo_kernel_fn(..., batch_size=b)` cuts `pattern=(p1, p2)` into blocks too."""
    init_fn, apply_fn, _, x1, x2, p1, p2, _ = graph_net
    key = jax.random.PRNGKey(3)
    whole = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 2)
    blocked = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 2, batch_size=2)
    _close(blocked(x1, x2, 'ntk', pattern=(p1, p2)), whole(x1, x2, 'ntk', pattern=(p1, p2)))


def test_empirical_rng_pair():
    """`rng=(r1, r2)`: x1's outputs are drawn with r1 and x2's with r2 (Dropout in train
    mode); the NNGP is their product, computed here from apply_fn."""
    init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Dropout(0.5, mode='train'),
                                       stax.Dense(2))
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x1 = jax.random.normal(k[0], (3, 4))
    x2 = jax.random.normal(k[1], (5, 4))
    params = init_fn(k[2], x1.shape)[1]
    ek = ntc.empirical_kernel_fn(apply_fn)
    f1, f2 = apply_fn(params, x1, rng=k[3]), apply_fn(params, x2, rng=k[4])
    _close(ek(x1, x2, 'nngp', params, rng=(k[3], k[4])), f1 @ f2.T / 2)
    _close(ek(x1, x2, 'nngp', params=params, rng=(k[3], k[4])), f1 @ f2.T / 2)

