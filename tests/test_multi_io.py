"""Networks with several inputs or outputs, as in neural_tangents: a `parallel` at the start
takes a (nested) tuple or list of arrays, and a network ending in a `parallel` or a `FanOut`
returns one value per branch, nested in NT's containers (a `parallel` keeps the container type
it received, a `FanOut` makes a list, init_fn gives tuples of shapes for a `parallel`).

Expected values: each output against a one-input, one-output ntc net computed on its own, and
NT 0.6.5 numbers computed with the bench kit's NT venv (float64, the inputs below)."""

import jax
import numpy as np
import pytest

import ntc
from ntc import stax
from ntc.errors import ArchitectureError, InputError
from ntc.ir.graph import Graph

XA = np.array([[1.69, -0.47, 0.03, 0.41], [-0.79, 0.0, -0.0, -1.75], [1.02, 0.6, -0.63, -0.17]])
XB = np.array([[0.51, -0.26, -0.24, -1.45, 0.55], [0.12, 0.27, -1.53, 1.65, 0.15],
               [-0.39, 2.03, -0.05, -1.45, -0.41]])
YA = np.array([[-2.29, 1.05, -0.42, -0.74], [1.07, -1.65, 0.54, -2.06]])
YB = np.array([[-0.66, -1.2, 1.46, 1.77, -0.33], [0.84, -0.18, 0.57, -0.75, -1.71]])


def branch_a():
    return stax.Dense(7, W_std=1.5, b_std=0.1)


def branch_b():
    return stax.serial(stax.Dense(6), stax.Relu())


def two_branches():
    return stax.parallel(branch_a(), branch_b())


def close(a, b, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- kernel_fn

# NT 0.6.5: stax.parallel(Dense(7, W_std=1.5, b_std=0.1), serial(Dense(6), Relu()))
# kernel_fn((XA, XB), (YA, YB), ('nngp', 'ntk'))
NT_TWO_BRANCHES = [
    dict(nngp=[[-2.622275, 0.9974125], [1.75605625, 1.56233125], [-0.7299125, 0.0726625]],
         ntk=[[-2.622275, 0.9974125], [1.75605625, 1.56233125], [-0.7299125, 0.0726625]]),
    dict(nngp=[[0.0231690179, 0.1387356962], [0.206767896, 0.0566512069],
               [0.038092017, 0.2303959995]],
         ntk=[[-0.0798461909, 0.0263815193], [0.0119846878, -0.0790748005],
              [-0.122722419, 0.0600398923]]),
]


def test_two_inputs_two_outputs_match_nt():
    got = two_branches().kernel_fn((XA, XB), (YA, YB), ('nngp', 'ntk'))
    assert type(got) is tuple and len(got) == 2
    for k, want in zip(got, NT_TWO_BRANCHES):
        assert k._fields == ('nngp', 'ntk')  # NT: one namedtuple per output
        close(k.nngp, want['nngp'], rtol=1e-8, atol=1e-9)
        close(k.ntk, want['ntk'], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize('same', [False, True])
def test_each_output_is_its_own_one_output_net(same):
    y = None if same else (YA, YB)
    got = two_branches().kernel_fn((XA, XB), y)
    want_a = branch_a().kernel_fn(XA, None if same else YA)
    want_b = branch_b().kernel_fn(XB, None if same else YB)
    for k, want in zip(got, (want_a, want_b)):
        for name in ('nngp', 'ntk', 'cov1', 'cov2'):
            if getattr(want, name) is None:
                assert getattr(k, name) is None
            else:
                close(getattr(k, name), getattr(want, name))


def test_containers_follow_the_input_as_in_nt():
    kernel_fn = two_branches().kernel_fn
    assert type(kernel_fn((XA, XB), (YA, YB))) is tuple
    assert type(kernel_fn([XA, XB], [YA, YB])) is list
    nngp = kernel_fn([XA, XB], None, 'nngp')
    assert type(nngp) is list and [a.shape for a in nngp] == [(3, 3), (3, 3)]
    shapes = kernel_fn((XA, XB), (YA, YB), ('shape1', 'shape2'))
    assert [tuple(s) for s in shapes] == [((3, 7), (2, 7)), ((3, 6), (2, 6))]


def test_x2_is_x1_when_every_array_is():
    kernel_fn = two_branches().kernel_fn
    a, b = kernel_fn((XA, XB), (XA, XB), 'nngp'), kernel_fn((XA, XB), None, 'nngp')
    for u, v in zip(a, b):
        close(u, v, rtol=0, atol=0)


# NT 0.6.5: serial(parallel(Dense(7, b_std=0.2), serial(Dense(7), Erf(), Dense(7))), FanInSum())
NT_FAN_IN_SUM = dict(
    nngp=[[-1.4163059411, 0.5295046061], [0.8332508508, 0.5261752816],
          [-0.6211905935, 0.153175024]],
    ntk=[[-1.7237383718, 0.5802663831], [0.8504809069, 0.3151713948],
         [-0.987420727, 0.23901466]])


def test_two_inputs_into_a_fan_in_match_nt():
    net = stax.serial(stax.parallel(stax.Dense(7, b_std=0.2),
                                    stax.serial(stax.Dense(7), stax.Erf(), stax.Dense(7))),
                      stax.FanInSum())
    k = net.kernel_fn((XA, XB), (YA, YB))
    close(k.nngp, NT_FAN_IN_SUM['nngp'], rtol=1e-8, atol=1e-9)
    close(k.ntk, NT_FAN_IN_SUM['ntk'], rtol=1e-8, atol=1e-9)


# NT 0.6.5: serial(Dense(3), FanOut(2), parallel(Relu(), Erf())), kernel_fn(XA, YA, 'nngp')
NT_FAN_OUT = [[[0.0006357408, 0.3293630941], [0.4360062274, 0.4217604389],
               [0.0704543357, 0.1628878567]],
              [[-0.474640131, 0.1527374644], [0.2845297309, 0.2336348258],
               [-0.1433549233, 0.0112417287]]]


def test_a_fan_out_at_the_end_gives_a_list_as_in_nt():
    net = stax.serial(stax.Dense(3), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Erf()))
    got = net.kernel_fn(XA, YA, 'nngp')
    assert type(got) is list
    for a, want in zip(got, NT_FAN_OUT):
        close(a, want, rtol=1e-8, atol=1e-9)
    shapes, _ = net.init_fn(jax.random.PRNGKey(0), XA.shape)
    assert shapes == ((3, 3), (3, 3))  # NT: a parallel's shapes are a tuple
    assert type(net.apply_fn(net.init_fn(jax.random.PRNGKey(0), XA.shape)[1], XA)) is list
    bare = stax.serial(stax.Dense(3), stax.FanOut(2))
    assert type(bare.kernel_fn(XA, YA)) is list
    assert bare.init_fn(jax.random.PRNGKey(0), XA.shape)[0] == [(3, 3), (3, 3)]


def test_nested_inputs_keep_their_nesting():
    net = stax.parallel(stax.Dense(2), stax.parallel(stax.Dense(3), branch_b()))
    xs = (XA, [XB, XA])
    nngp = net.kernel_fn(xs, None, 'nngp')
    assert type(nngp) is tuple and type(nngp[1]) is list
    close(nngp[1][0], stax.Dense(3).kernel_fn(XB, None, 'nngp'))
    close(nngp[1][1], branch_b().kernel_fn(XA, None, 'nngp'))
    shapes, params = net.init_fn(jax.random.PRNGKey(1), ((-1, 4), [(-1, 5), (-1, 4)]))
    assert shapes == ((-1, 2), ((-1, 3), (-1, 6)))
    out = net.apply_fn(params, xs)
    assert type(out) is tuple and type(out[1]) is list
    assert [np.shape(o) for o in jax.tree_util.tree_leaves(out)] == [(3, 2), (3, 3), (3, 6)]


# ----------------------------------------------------------------------------- finite network


def test_init_and_apply_with_a_tuple_of_inputs():
    init_fn, apply_fn, _ = two_branches()
    shapes, params = init_fn(jax.random.PRNGKey(0), (XA.shape, XB.shape))
    assert shapes == ((3, 7), (3, 6))
    assert init_fn(jax.random.PRNGKey(0), [XA.shape, XB.shape])[0] == shapes
    out = apply_fn(params, (XA, XB))
    assert type(out) is tuple and [o.shape for o in out] == [(3, 7), (3, 6)]
    assert type(apply_fn(params, [XA, XB])) is list
    w, b = params[0]  # NT's nested structure: one entry per branch
    # NTK parameterisation: W_std / sqrt(fan_in)
    close(out[0], XA @ w * 1.5 / 2 + 0.1 * np.reshape(b, (1, -1)))


# ----------------------------------------------------------------------------- plans


def test_one_plan_computes_every_output_and_explain_shows_them():
    plan = ntc.compile(two_branches(), (XA.shape, XB.shape), 'nngp')
    assert len(plan.graph.input_nodes()) == 2 and len(plan.graph.outputs) == 2
    text = plan.explain()
    assert 'inputs %0 (N,4), %1 (N,5)' in text and 'outputs %' in text
    assert 'input[0]' in text and 'input[1]' in text
    got = plan((XA, XB), (YA, YB))
    assert isinstance(got, list) and len(got) == 2
    close(got[1], branch_b().kernel_fn(XB, YB, 'nngp'))


def test_optimised_plan_equals_the_reference_plan():
    net = stax.serial(stax.parallel(stax.Dense(3), stax.serial(stax.Dense(3), stax.Erf())),
                      stax.parallel(stax.Relu(), stax.Dense(2)))
    opt = ntc.compile(net, (XA.shape, XB.shape), ('nngp', 'ntk'))
    ref = ntc.compile(net, (XA.shape, XB.shape), ('nngp', 'ntk'), reference=True)
    for a, b in zip(opt.raw((XA, XB), (YA, YB)), ref.raw((XA, XB), (YA, YB))):
        for name in ('nngp', 'ntk'):
            close(a[name], b[name])


def test_a_graph_with_several_outputs_round_trips():
    g = two_branches().graph()
    assert 'return %2, %4' in str(g)
    assert Graph.from_dict(g.to_dict()) == g


def test_structure_errors():
    with pytest.raises(ArchitectureError, match='2 branches but receives 1'):
        two_branches().kernel_fn(XA)
    with pytest.raises(InputError, match='different structures'):
        two_branches().kernel_fn((XA, XB), [YA, YB])


# ----------------------------------------------------------------------------- runtime


@pytest.mark.parametrize('same', [False, True])
def test_batch_tiles_every_input_and_joins_every_output(same):
    kernel_fn = stax.serial(two_branches(), stax.parallel(stax.Dense(1), stax.Dense(1))).kernel_fn
    x1 = (np.concatenate([XA, XA[:1] * 2]), np.concatenate([XB, XB[:1] * 2]))
    x2 = None if same else (np.concatenate([YA, YA * 3]), np.concatenate([YB, -YB]))
    batched = ntc.batch(kernel_fn, 2)
    for get in (None, 'nngp', ('nngp', 'cov1')):
        got, want = batched(x1, x2, get), kernel_fn(x1, x2, get)
        assert type(got) is type(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            close(a, b)


def test_empirical_kernels_of_several_outputs():
    init_fn, apply_fn, _ = two_branches()
    _, params = init_fn(jax.random.PRNGKey(2), (XA.shape, XB.shape))
    nngp = ntc.empirical_nngp_fn(apply_fn)((XA, XB), (YA, YB), params)
    f1, f2 = apply_fn(params, (XA, XB)), apply_fn(params, (YA, YB))
    assert type(nngp) is tuple
    for k, a, b in zip(nngp, f1, f2):
        close(k, a @ b.T / a.shape[-1])
    ntk_fn = ntc.empirical_ntk_fn(apply_fn)
    same = ntk_fn((XA, XB), [None, None], params)  # NT: x2 of Nones is x2 = x1
    for a, b in zip(same, ntk_fn((XA, XB), None, params)):
        close(a, b)
    batched = ntc.batch(ntc.empirical_nngp_fn(apply_fn), 1)((XA, XB), (YA, YB), params)
    for a, b in zip(batched, nngp):
        close(a, b)


def test_monte_carlo_of_several_inputs_and_outputs():
    init_fn, apply_fn, _ = two_branches()
    key = jax.random.PRNGKey(3)
    whole = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 3)
    tiled = ntc.monte_carlo_kernel_fn(init_fn, apply_fn, key, 3, batch_size=1)
    for y in (None, (YA[:1], YB[:1])):
        a, b = whole((XA, XB), y, 'nngp'), tiled((XA, XB), y, 'nngp')
        assert type(a) is tuple and len(a) == 2
        for u, v in zip(a, b):
            close(u, v, rtol=1e-8)
