"""NT's `Kernel` view: its dataclass fields and their values, the pytree, `replace`, and kernel
composition (`readout_kernel_fn(body_kernel_fn(x1, x2))`).

Expected field values are neural-tangents 0.6.5's for the same networks (computed with NT);
composed kernels are checked against the kernel of the whole network computed in one call."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntc
from ntc import predict, stax
from ntc.covariance.kernel import Kernel
from ntc.errors import InputError, NtcError

NT_FIELDS = ['nngp', 'ntk', 'cov1', 'cov2', 'x1_is_x2', 'is_gaussian', 'is_reversed', 'is_input',
             'diagonal_batch', 'diagonal_spatial', 'shape1', 'shape2', 'batch_axis',
             'channel_axis', 'mask1', 'mask2']
NT_STATIC = {'is_gaussian', 'is_reversed', 'is_input', 'diagonal_batch', 'diagonal_spatial',
             'shape1', 'shape2', 'batch_axis', 'channel_axis'}


def _inputs(shape1, shape2, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k1, shape1), jax.random.normal(k2, shape2)


def _nt_fields(k):
    """The values of NT's fields other than the arrays."""
    return {f.name: getattr(k, f.name) for f in dataclasses.fields(k)
            if f.name not in ('nngp', 'ntk', 'cov1', 'cov2')}


def assert_kernels_close(a, b, rtol=1e-10, atol=1e-12):
    """NT's test walk: dataclass fields, arrays compared as arrays (`pytree_node`), the rest
    with ==."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.metadata.get('pytree_node', True) and x is not None and not isinstance(x, bool):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                       err_msg=f.name)
        else:
            assert x == y, f.name


# ----------------------------------------------------------------------------- the fields


def test_fields_are_nts_in_nts_order():
    assert [f.name for f in dataclasses.fields(Kernel)] == NT_FIELDS
    static = {f.name for f in dataclasses.fields(Kernel)
              if not f.metadata.get('pytree_node', True)}
    assert static >= NT_STATIC
    assert {'nngp', 'ntk', 'cov1', 'cov2', 'mask1', 'mask2'}.isdisjoint(static)


CONV = stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.Conv(3, (2, 2)))


@pytest.mark.parametrize('net, shape, kwargs, want', [
    (stax.Dense(3), (4,), {},
     dict(is_gaussian=True, diagonal_spatial=False, shape1=(3, 3), shape2=(2, 3),
          channel_axis=1)),
    (stax.Dense(3), (4,), dict(diagonal_spatial=True),
     dict(is_gaussian=True, diagonal_spatial=True, shape1=(3, 3), shape2=(2, 3),
          channel_axis=1)),
    (stax.serial(stax.Dense(3), stax.Relu()), (4,), {},
     dict(is_gaussian=False, diagonal_spatial=False, shape1=(3, 3), shape2=(2, 3),
          channel_axis=1)),
    (CONV, (4, 5, 2), {},
     dict(is_gaussian=True, diagonal_spatial=False, shape1=(3, 2, 3, 3), shape2=(2, 2, 3, 3),
          channel_axis=3)),
    (CONV, (4, 5, 2), dict(diagonal_spatial=True),
     dict(is_gaussian=True, diagonal_spatial=True, shape1=(3, 2, 3, 3), shape2=(2, 2, 3, 3),
          channel_axis=3)),
    (CONV, (4, 5, 2), dict(diagonal_batch=False),
     dict(is_gaussian=True, diagonal_batch=False, shape1=(3, 2, 3, 3), shape2=(2, 2, 3, 3),
          channel_axis=3)),
    (stax.serial(stax.Conv(3, (2, 2), dimension_numbers=('NCHW', 'OIHW', 'NCHW')), stax.Relu()),
     (4, 5, 2), {},
     dict(is_gaussian=False, shape1=(3, 3, 4, 1), shape2=(2, 3, 4, 1), channel_axis=1)),
    (stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.Flatten()), (4, 5, 2), {},
     dict(is_gaussian=False, shape1=(3, 36), shape2=(2, 36), channel_axis=1)),
    (stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(2)),
     (4, 5, 2), {},
     dict(is_gaussian=True, shape1=(3, 2), shape2=(2, 2), channel_axis=1)),
])
def test_field_values_are_nts(net, shape, kwargs, want):
    x1, x2 = _inputs((3,) + shape, (2,) + shape)
    k = net[2](x1, x2, **kwargs)
    base = dict(x1_is_x2=False, is_reversed=False, is_input=False, diagonal_batch=True,
                diagonal_spatial=False, batch_axis=0, mask1=None, mask2=None)
    assert _nt_fields(k) == dict(base, **want)
    assert k.cov2 is not None
    k = net[2](x1, None, **kwargs)
    assert k.x1_is_x2 and k.cov2 is None and k.shape2 == k.shape1 == want['shape1']


def test_replace_flatten_and_jit_keep_every_field():
    x1, x2 = _inputs((3, 4, 5, 2), (2, 4, 5, 2))
    k = CONV[2](x1, x2)
    r = k.replace(is_gaussian=False, nngp=2 * k.nngp)
    assert not r.is_gaussian and r.layout == k.layout and r.shape1 == k.shape1
    np.testing.assert_allclose(r.nngp, 2 * k.nngp)
    leaves, tree = jax.tree_util.tree_flatten(k)
    assert len(leaves) == 4  # nngp, ntk, cov1, cov2; masks are None
    back = jax.tree_util.tree_unflatten(tree, leaves)
    assert_kernels_close(back, k)
    assert back.layout == k.layout
    through = jax.jit(lambda k: k)(k)
    assert_kernels_close(through, k)
    assert through.layout == k.layout
    positional = Kernel(*(getattr(k, name) for name in NT_FIELDS))  # NT's constructor
    assert_kernels_close(positional, k)


def test_nt_walk_compares_repeat_with_serial():
    """What NT's combinators tests do: the kernels of `repeat` and of the unrolled serial."""
    x1, x2 = _inputs((2, 4, 4, 3), (3, 4, 4, 3))
    layer = stax.serial(stax.Conv(3, (2, 2), padding='SAME'), stax.Relu())
    for b in (x2, None):
        assert_kernels_close(stax.repeat(layer, 3)[2](x1, b),
                             stax.serial(layer, layer, layer)[2](x1, b))


# ----------------------------------------------------------------------------- composition


def _compose_cases():
    dense = stax.serial(stax.Dense(16, W_std=1.5, b_std=0.1), stax.Relu())
    conv = stax.serial(stax.Conv(8, (2, 2)), stax.Relu())
    pool = stax.serial(stax.GlobalAvgPool(), stax.Dense(10))
    convs = stax.serial(stax.Conv(4, (3, 2), padding='SAME'), stax.Erf(),
                        stax.Conv(4, (2, 1), strides=(1, 1)), stax.Relu(), stax.Flatten(),
                        stax.Dense(3))
    nchw = stax.serial(stax.Conv(4, (2, 2), dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
                       stax.Relu())
    nchw_out = stax.serial(stax.Conv(4, (2, 2), dimension_numbers=('NCHW', 'OIHW', 'NCHW')),
                           stax.Gelu(), stax.GlobalAvgPool(), stax.Dense(2))
    return [('dense', dense, dense, (3,)), ('conv_pool', conv, pool, (5, 4, 3)),
            ('conv_convs', conv, convs, (5, 4, 3)), ('nchw', nchw, nchw_out, (3, 5, 4))]


@pytest.mark.parametrize('name, body, readout, shape', _compose_cases(),
                         ids=[c[0] for c in _compose_cases()])
@pytest.mark.parametrize('same', [False, True])
def test_composed_kernel_is_the_whole_networks(name, body, readout, shape, same):
    x1, x2 = _inputs((4,) + shape, (3,) + shape)
    x2 = None if same else x2
    whole = stax.serial(body, readout)[2]
    want = whole(x1, x2)
    got = readout[2](body[2](x1, x2))
    assert_kernels_close(got, want)
    assert got.x1_is_x2 == same
    np.testing.assert_allclose(readout[2](body[2](x1, x2), get='nngp'), want.nngp, rtol=1e-10)
    pair = readout[2](body[2](x1, x2), get=('ntk', 'nngp', 'shape1'))
    np.testing.assert_allclose(pair.ntk, want.ntk, rtol=1e-10)
    assert pair.shape1 == want.shape1


@pytest.mark.parametrize('same', [False, True])
def test_composition_into_a_readout_with_several_outputs(same):
    """A readout ending in a parallel gives one result per branch, as the whole network does
    (NT nests them in a list after FanOut)."""
    x1, x2 = _inputs((4, 3), (3, 3))
    x2 = None if same else x2
    body = stax.serial(stax.Dense(8, 1.2, 0.1), stax.Relu())
    readout = stax.serial(stax.FanOut(2), stax.parallel(
        stax.Dense(1), stax.serial(stax.Dense(4), stax.Erf(), stax.Dense(2, 1.5, 0.2))))
    want = stax.serial(body, readout)[2](x1, x2)
    got = jax.jit(readout[2])(body[2](x1, x2))
    assert isinstance(got, list) and len(got) == 2
    for g, w in zip(got, want):
        assert_kernels_close(g, w)
    ntks = readout[2](body[2](x1, x2), get='ntk')
    for g, w in zip(ntks, want):
        np.testing.assert_allclose(g, w.ntk, rtol=1e-10)


def test_composition_under_jit_and_twice():
    x1, x2 = _inputs((5, 3), (2, 3))
    block = stax.serial(stax.Dense(32), stax.Relu())
    f = jax.jit(block[2])
    got = f(f(x1, x2))
    assert_kernels_close(got, stax.serial(block, block)[2](x1, x2))
    got = jax.jit(block[2], static_argnames='get')(block[2](x1, x2), get='ntk')
    np.testing.assert_allclose(got, stax.serial(block, block)[2](x1, x2, 'ntk'), rtol=1e-10)


def test_composition_errors():
    x1, x2 = _inputs((4, 5, 4, 3), (3, 5, 4, 3))
    body = stax.serial(stax.Conv(8, (2, 2)), stax.Relu())
    pool = stax.serial(stax.GlobalAvgPool(), stax.Dense(1))[2]
    with pytest.raises(InputError, match='diagonal_spatial=False'):
        pool(body[2](x1, x2, diagonal_spatial=True))
    with pytest.raises(InputError, match='x2'):
        pool(body[2](x1), x2)
    with pytest.raises(InputError, match='diagonal_batch=True'):
        pool(body[2](x1, x2, diagonal_batch=False))
    with pytest.raises(InputError, match='shape1'):
        pool(Kernel(nngp=jnp.ones((2, 2))))
    with pytest.raises(NtcError):
        pool(body[2](x1, x2).replace(cov1=None, cov2=None))


# ----------------------------------------------------------------------------- predict


def _full(k_rest, shape, trace):
    """The kernel over every target entry (C order): K over the untraced axes ⊗ I over the
    traced ones (what NT's `trace_axes` mean), as a dense matrix."""
    idx = np.array(list(np.ndindex(*shape)))
    rest = [a for a in range(len(shape)) if a not in trace]
    rest_shape = [shape[a] for a in rest]
    r = np.ravel_multi_index(idx[:, rest].T, rest_shape) if rest else np.zeros(len(idx), int)
    same = (idx[:, None, trace] == idx[None, :, trace]).all(-1)
    return k_rest[r[:, None], r[None, :]] * same


@pytest.mark.parametrize('trace', [(0, 1), (0, -1), (1, 3), (0, 1, 2, 3), (-1,), (0, 0, -3)])
def test_predict_with_traced_batch_and_inner_axes(trace):
    """NT's `trace_axes` may include the batch axis (an empirical kernel traced over it has no
    (N, N) pair) and any inner axes; predictions match the dense Kronecker computation."""
    rng = np.random.RandomState(0)
    shape = (2, 3, 2, 6)
    y, fx0, fxt = (rng.normal(size=shape) for _ in range(3))
    axes = sorted({a % 4 for a in trace})
    rest = [shape[a] for a in range(4) if a not in axes]
    m = int(np.prod(rest))
    a = rng.normal(size=(m, m + 2))
    ktt, kd = a @ a.T / m + np.eye(m), rng.normal(size=(m, m)) / m

    def pairs(k):  # (rows, cols) -> (a0, b0, a1, b1, ...)
        k = k.reshape(tuple(rest) * 2)
        return k.transpose([i + s * len(rest) for i in range(len(rest)) for s in (0, 1)])

    p = predict.gradient_descent_mse(pairs(ktt), y, trace_axes=trace)
    big, big_d = _full(ktt, shape, axes), _full(kd, shape, axes)
    want = fxt.ravel() + big_d @ np.linalg.solve(big, (y - fx0).ravel())
    np.testing.assert_allclose(p(None, fx0, fxt, pairs(kd))[1], want.reshape(shape), rtol=1e-9)
    t = 3.0
    lam, v = np.linalg.eigh(big)
    want = y.ravel() + v @ (np.exp(-t * lam / y.size) * (v.T @ (fx0 - y).ravel()))
    np.testing.assert_allclose(p(t, fx0), want.reshape(shape), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- through ntc.batch


@pytest.mark.parametrize('batch_size', [2, 0])
@pytest.mark.parametrize('same', [False, True])
def test_composition_through_batch(batch_size, same):
    """batch(readout)(batch(body)(x1, x2)) is the whole network's kernel, NT's fields included
    (ragged tiles: 7 and 3 examples in tiles of 2)."""
    x1, x2 = _inputs((7, 4, 4, 3), (3, 4, 4, 3))
    x2 = None if same else x2
    body = stax.serial(stax.Conv(8, (2, 2)), stax.Relu())
    readout = stax.serial(stax.GlobalAvgPool(), stax.Dense(10))
    want = stax.serial(body, readout)[2](x1, x2)
    inner = ntc.batch(body[2], batch_size)(x1, x2)
    assert_kernels_close(inner, body[2](x1, x2))
    outer = ntc.batch(readout[2], batch_size)
    assert_kernels_close(outer(inner), want)
    np.testing.assert_allclose(outer(inner, get='nngp'), want.nngp, rtol=1e-10)
    got = outer(inner, get=('cov2', 'ntk'))
    np.testing.assert_allclose(got.cov2, want.cov1 if same else want.cov2, rtol=1e-10)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-10)
