"""Structured derivatives (`implementation=STRUCTURED_DERIVATIVES`, `ntc/runtime/structured.py`):
the same kernel as Jacobian contraction (float64) on every layer kind of the `ntc.testing` case
table with trace/diagonal/vmap axes combinations, the rules chosen for plain JAX functions and
their fallbacks, the plan text, AUTO's choice and the memory of the FCN program.
NTC_HYPOTHESIS=thorough runs every case of every kind with more axes combinations."""

import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntc import stax
from ntc.runtime import structured
from ntc.runtime.empirical import NtkImplementation, empirical_kernel_fn, empirical_ntk_fn
from ntc.testing.cases import CASES, harness_net

THOROUGH = os.environ.get('NTC_HYPOTHESIS') == 'thorough'
JC, SD = NtkImplementation.JACOBIAN_CONTRACTION, NtkImplementation.STRUCTURED_DERIVATIVES

# (trace_axes, diagonal_axes, vmap_axes, x2 given)
AXES = [((-1,), (), None, True), ((), (), 0, True), ((-1,), (0,), 0, False)]
AXES_THOROUGH = AXES + [((), (), None, True), ((0,), (), None, False),
                        ((-1,), (), (0, 0, {}), True), ((), (0,), None, False)]


def _cases():
    """Each kind's first case with one axes combination (rotating through AXES, so every
    combination meets dense, conv and pooling kinds); thorough: every case, every combination."""
    for k, (kind, cases) in enumerate(sorted(CASES.items())):
        for i, case in enumerate(cases if THOROUGH else cases[:1]):
            axes = AXES_THOROUGH if THOROUGH else [AXES[k % len(AXES)]]
            yield pytest.param(kind, case, axes, id=f'{kind}-{i}')


def _inputs(case, n1=3, n2=2):
    shape = case.input_shape[1:]
    rs = np.random.RandomState(0)
    return rs.randn(n1, *shape), rs.randn(n2, *shape)


@pytest.mark.parametrize('kind, case, axes', list(_cases()))
def test_structured_equals_jacobian_contraction_on_every_layer_kind(kind, case, axes):
    init_fn, apply_fn, _ = case.finite or harness_net(case)    # finite: a kernel-only op
    x1, x2 = _inputs(case)
    _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
    kwargs = {'rng': jax.random.PRNGKey(5)} if kind == 'Dropout' else {}
    for trace_axes, diagonal_axes, vmap_axes, given in axes:
        other = x2 if given and case.x2 else None
        args = (trace_axes, diagonal_axes, vmap_axes)
        want = jax.jit(empirical_ntk_fn(apply_fn, *args, implementation=JC))(
            x1, other, params, **kwargs)
        got = jax.jit(empirical_ntk_fn(apply_fn, *args, implementation=SD))(
            x1, other, params, **kwargs)
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale,
                                   err_msg=f'{kind} axes={args}')


def test_affine_layers_use_structured_rules_not_the_fallback():
    """Dense, Conv (1-D and 2-D), ConvTranspose, ConvLocal and their biases all get rules."""
    for kind in ('Dense', 'Conv', 'ConvTranspose', 'ConvLocal', 'FanInConcat'):
        case = CASES[kind][-1]
        init_fn, apply_fn, _ = harness_net(case)
        x1, x2 = _inputs(case)
        _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
        text = empirical_ntk_fn(apply_fn, implementation=SD).explain(x1, x2, params)
        assert 'fallback' not in text, f'{kind}:\n{text}'


# ---------------------------------------------------------------------------------------------
# plain JAX functions: rules, chains and fallbacks


def _plain_params(seed=0):
    rs = np.random.RandomState(seed)
    return {'w1': rs.randn(4, 6), 'b1': rs.randn(6), 'w2': rs.randn(2, 18), 'g': rs.randn(6),
            'k': rs.randn(3, 1, 5), 'shared': rs.randn(6, 6), 'nl': rs.randn(6)}


def plain(p, x):
    """A function mixing every rule: scaled weight (isometric chain), transposed weight,
    broadcast bias, data-times-parameter scale, a 1-D convolution, a weight used twice and a
    parameter consumed by a non-linear function."""
    h = x @ (p['w1'] * 0.7) + jnp.broadcast_to(p['b1'], (x.shape[0], 6))
    h = jnp.tanh(h) * p['g'][None]
    h = h @ p['shared'] @ p['shared']                     # used twice: fallback
    h = h * jnp.exp(p['nl'])[None]                      # non-linear in nl: fallback
    c = jax.lax.conv_general_dilated(h[:, None, :], p['k'], (1,), 'SAME',
                                     dimension_numbers=('NCH', 'OIH', 'NCH'))
    return jnp.sin(c).reshape(x.shape[0], -1) @ p['w2'].T


def test_plain_function_rules_fallbacks_and_agreement():
    p = _plain_params()
    x1, x2 = np.random.RandomState(1).randn(3, 4), np.random.RandomState(2).randn(2, 4)
    for trace_axes, vmap_axes in (((-1,), None), ((), 0)):
        want = empirical_ntk_fn(plain, trace_axes, (), vmap_axes, JC)(x1, x2, p)
        fn = empirical_ntk_fn(plain, trace_axes, (), vmap_axes, SD)
        np.testing.assert_allclose(jax.jit(fn)(x1, x2, p), want, rtol=1e-10)
    rows = {line.split()[0]: line for line in fn.explain(x1, x2, p).splitlines()[1:]}
    assert 'Gram' in rows["['w1']"] and 'dot_general' in rows["['w1']"]
    assert 'add (VJP)' in rows["['b1']"]
    assert 'mul (VJP)' in rows["['g']"]
    assert 'conv_general_dilated' in rows["['k']"]
    assert 'fallback (its value is used more than once)' in rows["['shared']"]
    assert 'fallback (exp consumes it)' in rows["['nl']"]
    assert 'fallback' not in rows["['w2']"]
    assert rows['total']


def test_grouped_convolution_and_weight_on_the_left():
    rs = np.random.RandomState(3)
    p = {'k': rs.randn(4, 1, 3), 'w': rs.randn(5, 4 * 6)}

    def f(p, x):
        y = jax.lax.conv_general_dilated(x, p['k'], (1,), 'VALID', feature_group_count=2,
                                         dimension_numbers=('NCH', 'OIH', 'NCH'))
        return (p['w'] @ jnp.tanh(y).reshape(x.shape[0], -1).T).T     # weight as lhs

    x1, x2 = rs.randn(3, 2, 8), rs.randn(2, 2, 8)
    for tr, va in (((-1,), None), ((), 0)):
        want = empirical_ntk_fn(f, tr, (), va, JC)(x1, x2, p)
        fn = empirical_ntk_fn(f, tr, (), va, SD)
        np.testing.assert_allclose(fn(x1, x2, p), want, rtol=1e-10)
    text = fn.explain(x1, x2, p)
    assert 'conv_general_dilated (VJP)' in text and 'fallback' not in text


def test_pytree_outputs_and_kernel_fn():
    p = _plain_params(4)

    def heads(p, x):
        h = jnp.tanh(x @ p['w1'] + p['b1'][None])
        return {'a': h @ p['shared'], 'b': (h * p['g'][None]).sum(-1, keepdims=True)}

    x1, x2 = np.random.RandomState(5).randn(3, 4), np.random.RandomState(6).randn(2, 4)
    want = empirical_kernel_fn(heads, implementation=JC)(x1, x2, 'ntk', p)
    got = jax.jit(empirical_kernel_fn(heads, implementation=3), static_argnames='get')(
        x1, x2, 'ntk', p)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10)


def test_auto_picks_by_cost_and_logs_it(caplog):
    init_fn, apply_fn, _ = stax.serial(stax.Dense(256), stax.Relu(), stax.Dense(256),
                                       stax.Relu(), stax.Dense(4))
    x = np.random.RandomState(0).randn(4, 16)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    fn = empirical_ntk_fn(apply_fn, (), (), 0, NtkImplementation.AUTO)
    with caplog.at_level(logging.INFO, logger='ntc.runtime.empirical'):
        got = fn(x, None, params)
    assert list(fn.chosen.values()) == [SD]
    assert 'STRUCTURED_DERIVATIVES' in caplog.text
    np.testing.assert_allclose(got, empirical_ntk_fn(apply_fn, (), (), 0, JC)(x, None, params),
                               rtol=1e-10)


def test_fcn_structured_program_needs_less_memory_than_the_jacobian():
    """XLA's memory analysis of the compiled programs: Jacobian contraction's temporaries hold
    the Jacobians of the largest parameter for both inputs at once (XLA contracts leaf by leaf,
    never holding the whole Jacobian); the structured program's temporaries are below that
    by more than those Jacobians' size."""
    width, n, out = 512, 8, 4
    init_fn, apply_fn, _ = stax.serial(*([stax.Dense(width), stax.Relu()] * 3),
                                       stax.Dense(out))
    x = jax.ShapeDtypeStruct((n, 32), jnp.float32)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32),
                                    params)
    temp = {}
    for impl in (JC, SD):
        fn = empirical_ntk_fn(apply_fn, (), (), 0, impl)
        compiled = jax.jit(fn).lower(x, x, params).compile()
        temp[impl] = compiled.memory_analysis().temp_size_in_bytes
    largest = max(math.prod(a.shape) for a in jax.tree_util.tree_leaves(params))
    jacobians_bytes = 2 * n * out * largest * 4            # x1's and x2's, float32
    assert temp[SD] + jacobians_bytes < temp[JC], (temp, jacobians_bytes)
    assert temp[SD] * 100 < temp[JC]


# ---------------------------------------------------------------------------------------------
# contraction orders and channel-factored cotangents


def test_contract_follows_any_path_like_einsum():
    """`structured.contract` (one dot_general per step, operands swapped to keep output axes
    first) equals einsum on batch, traced, diagonal and summed-only letters, for every path."""
    rs = np.random.RandomState(0)
    spec = 'aefgh,acefgi,bjklh,bdjkli->abcd'
    ops = [rs.randn(2, 1, 3, 3, 5), rs.randn(2, 4, 1, 3, 3, 6), rs.randn(3, 1, 3, 3, 5),
           rs.randn(3, 4, 1, 3, 3, 6)]
    want = np.einsum(spec, *ops)
    for path in list(structured.ORDERS.values()) + [((1, 3), (0, 1), (0, 1))]:
        np.testing.assert_allclose(structured.contract(spec, ops, path), want, rtol=1e-12)
    spec = 'aeh,aceg,afh,acfg->a'                # a diagonal, c traced (shared, summed)
    ops = [rs.randn(2, 3, 4), rs.randn(2, 5, 3, 6), rs.randn(2, 7, 4), rs.randn(2, 5, 7, 6)]
    for path in structured.ORDERS.values():
        np.testing.assert_allclose(structured.contract(spec, ops, path), np.einsum(spec, *ops),
                                   rtol=1e-12)


def test_choose_order_by_flops():
    """Few positions (a dense layer per example): Gram(u)*Gram(g); many positions and few
    outputs (a convolution): the per-layer Jacobians."""
    dense = ('aef,aceg,bhf,bdhg->abcd', [(8, 1, 512), (8, 10, 1, 512), (8, 1, 512),
                                         (8, 10, 1, 512)])
    conv = ('aefgh,acefgi,bjklh,bdjkli->abcd', [(8, 1, 16, 16, 576), (8, 10, 1, 16, 16, 64),
                                                 (8, 1, 16, 16, 576), (8, 10, 1, 16, 16, 64)])
    assert structured.choose_order(*dense)[0] == 'Gram(u)*Gram(g)'
    assert structured.choose_order(*conv)[0] == 'J_layer.J_layer'


def _gap_cnn(head):
    return stax.serial(stax.Conv(4, (3, 3), padding='SAME', b_std=0.1), stax.Erf(),
                       stax.Conv(5, (2, 2), strides=(2, 1), padding='VALID'), stax.Relu(),
                       *head)


@pytest.mark.parametrize('trace_axes, diagonal_axes', [((), ()), ((-1,), ()), ((), (0,))])
def test_global_pool_readout_factors_the_last_layers_cotangents(trace_axes, diagonal_axes):
    """With GlobalAvgPool and a Dense readout after the last convolution, that layer's
    cotangents are h ⊙ W_out[c, o] (per-channel maps only): the plan says channel-factored for
    it alone, and the kernel equals Jacobian contraction's.  A Flatten head mixes positions and
    channels: no factoring there."""
    x1, x2 = np.random.RandomState(1).randn(3, 6, 5, 2), np.random.RandomState(2).randn(3, 6, 5, 2)
    for head, factored in (([stax.GlobalAvgPool(), stax.Dense(3, b_std=0.2)], True),
                           ([stax.Flatten(), stax.Dense(3)], False)):
        init_fn, apply_fn, _ = _gap_cnn(head)
        _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
        args = (trace_axes, diagonal_axes, 0)
        want = empirical_ntk_fn(apply_fn, *args, implementation=JC)(x1, x2, params)
        fn = empirical_ntk_fn(apply_fn, *args, implementation=SD)
        np.testing.assert_allclose(jax.jit(fn)(x1, x2, params), want, rtol=1e-10,
                                   atol=1e-12 * np.abs(want).max())
        rows = fn.explain(x1, x2, params).splitlines()[1:]
        marked = [r.split()[0] for r in rows if 'channel-factored' in r]
        assert marked == (['[2][0]'] if factored else []), '\n'.join(rows)


def test_dense_layer_before_the_readout_keeps_the_cheaper_gram_order():
    """A bias-free dense layer under ReLU and a Dense readout qualifies for channel factoring,
    but its Gram order costs fewer FLOPs, so that is what runs."""
    init_fn, apply_fn, _ = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(64), stax.Relu(),
                                       stax.Dense(3))
    x1, x2 = np.random.RandomState(1).randn(4, 5), np.random.RandomState(2).randn(3, 5)
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    fn = empirical_ntk_fn(apply_fn, (), (), 0, SD)
    want = empirical_ntk_fn(apply_fn, (), (), 0, JC)(x1, x2, params)
    np.testing.assert_allclose(jax.jit(fn)(x1, x2, params), want, rtol=1e-10)
    rows = fn.explain(x1, x2, params).splitlines()[1:-1]
    assert all('Gram(u)*Gram(g)' in r for r in rows), '\n'.join(rows)
