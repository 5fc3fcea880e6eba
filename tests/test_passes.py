"""Golden before/after text for each pass, the verifier, and the cost model."""

import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st

import ntc
from ntc import stax
from ntc.errors import PassError
from ntc.layers import activations, structure
from ntc.passes import (
    Options,
    canonicalize,
    check,
    choose_layouts,
    infer_types,
    run_passes,
)
from ntc.passes.cost import N1, N2, BatchPoly

NET = stax.serial(stax.Dense(4, 2.0, 0.5), stax.Identity(), stax.Dense(3, 1.5), stax.Relu(),
                  stax.Dense(2, parameterization='standard', b_std=0.1), stax.Dense(1))


def source(net=NET, shape=(-1, 5)):
    g = net.graph().copy()
    g.replace(g.input_nodes()[0], ttype=ntc.api.input_type(net, shape))
    return g


def lines(g):
    return [line.rstrip() for line in str(g).splitlines()]


def test_infer_types_golden():
    assert lines(infer_types(source(), Options())) == [
        '%0 = Input                                           # (N,5) | input',
        '%1 = Dense(W_std=2, b_std=0.5, out_dim=4)(%0)        # (N,4) gauss | serial[0].Dense',
        '%2 = Identity(%1)                                    # (N,4) gauss | serial[1].Identity',
        '%3 = Dense(W_std=1.5, out_dim=3)(%2)                 # (N,3) gauss | serial[2].Dense',
        '%4 = Relu(%3)                                        # (N,3) | serial[3].Relu',
        '%5 = Dense(b_std=0.1, parameterization=standard, out_dim=2)(%4) # (N,2) gauss | '
        'serial[4].Dense',
        '%6 = Dense(out_dim=1)(%5)                            # (N,1) gauss | serial[5].Dense',
        'return %6']


def test_check_leaves_a_valid_graph_unchanged():
    g = infer_types(source(), Options())
    assert check(g, Options()) == g


def test_field_sources_stop_at_the_nearest_independent_affine_layer():
    """Each value is a function of the nodes back to (and including) the nearest random affine
    layer on every path; Dense(W_std=0, no bias) outputs zeros and does not cut the walk."""
    from ntc.passes.check import field_sources
    net = stax.serial(stax.Dense(4), stax.FanOut(3),
                      stax.parallel(stax.serial(stax.Dense(4), stax.Erf()), stax.Relu(),
                                    stax.Dense(4, W_std=0.0)),
                      stax.FanInConcat())
    g = infer_types(source(net), Options())
    assert [(n.path, sorted(field_sources(g)[n.id])) for n in g.nodes()] == [
        ('input', [0]), ('serial[0].Dense', [1]), ('serial[2].parallel[0].serial[0].Dense', [2]),
        ('serial[2].parallel[0].serial[1].Erf', [2, 3]), ('serial[2].parallel[1].Relu', [1, 4]),
        ('serial[2].parallel[2].Dense', [1, 5]), ('serial[3].FanInConcat', [1, 2, 3, 4, 5, 6])]


def test_canonicalize_golden_drops_identity_and_folds_affine_chains():
    g = canonicalize(infer_types(source(), Options()), Options())
    assert lines(g) == [
        '%0 = Input                                           # (N,5) | input',
        "%3 = Affine(a=9, b=0.5625, c=9, d=18, e=1.125, out_dim=3, folded=('serial[0].Dense', "
        "'serial[2].Dense'))(%0) # (N,3) gauss | serial[2].Dense",
        '%4 = Relu(%3)                                        # (N,3) | serial[3].Relu',
        "%6 = Affine(a=1, b=0.01, c=1, d=4, e=1.01, out_dim=1, folded=('serial[4].Dense', "
        "'serial[5].Dense'))(%4) # (N,1) gauss | serial[5].Dense",
        'return %6']


def test_reference_canonicalize_does_not_fold():
    g = canonicalize(infer_types(source(), Options()), Options(reference=True))
    assert [n.op.kind for n in g.nodes()] == ['Input', 'Dense', 'Dense', 'Relu', 'Dense', 'Dense']


def test_choose_layouts_golden_keeps_marginals_only_where_read():
    o = Options()
    g = choose_layouts(canonicalize(infer_types(source(), o), o), o)
    layouts = [(n.path, n.cov.describe()) for n in g.nodes()]
    assert layouts == [('input', 'cross sp=NONE var=NONE'),
                       ('serial[2].Dense', 'cross sp=NONE var=NONE'),
                       ('serial[3].Relu', 'cross sp=NONE var=-'),
                       ('serial[5].Dense', 'cross sp=NONE var=- Σ⊗I1')]
    # asking for cov1 keeps the marginals to the end
    o = Options(get=('nngp', 'cov1'))
    g = choose_layouts(canonicalize(infer_types(source(), o), o), o)
    assert all(n.cov.marginal == 'NONE' for n in g.nodes())


def test_choose_layouts_reference_uses_the_joint_gram_matrix():
    o = Options(reference=True)
    g = run_passes(source(), o)
    assert {n.cov.batch for n in g.nodes()} == {'FULL'}


def test_verifier_names_the_broken_pass_and_its_predecessors():
    def break_arity(g, opts):
        g = g.copy()
        relu = next(n for n in g.nodes() if n.op.kind == 'Relu')
        g.replace(relu.id, op=structure.FanInSum())
        return g

    with pytest.raises(PassError) as e:
        run_passes(source(), Options(), [infer_types, check, break_arity])
    assert "'break_arity'" in str(e.value) and 'infer_types, check' in str(e.value)
    assert 'FanInSum has 1 inputs' in str(e.value)


def test_cost_model_counts_entries_of_each_layout():
    plan = ntc.compile(stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1)), (-1, 5))
    costs = [plan.costs[n.id] for n in plan.graph.nodes()]
    relu = next(c for n, c in zip(plan.graph.nodes(), costs) if n.op.kind == 'Relu')
    per = activations.Relu.flops_per_entry
    # nngp and ntk of N1×N2, no marginals kept after the last nonlinearity
    assert relu.flops == per * 2 * N1 * N2
    assert plan.total('bytes', 10, 10) > 0
    assert plan.peak_bytes(100, 100) >= 4 * 2 * 100 * 100


_COEFFS = st.dictionaries(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                          st.integers(-50, 50), max_size=5)


@given(_COEFFS, _COEFFS, st.integers(-3, 3), st.integers(1, 40), st.integers(1, 40))
def test_batch_poly_arithmetic_matches_sympy(a, b, k, n1, n2):
    s1, s2 = sympy.symbols('N1 N2', positive=True, integer=True)  # as `as_expr` makes them

    def sym(coeffs):
        return sum((c * s1 ** p1 * s2 ** p2 for (p1, p2), c in coeffs.items()), sympy.Integer(0))

    pa, pb = BatchPoly(a), BatchPoly(b)
    for got, want in ((pa + pb, sym(a) + sym(b)), (pa * pb, sym(a) * sym(b)),
                      (k * pa - pb, k * sym(a) - sym(b)), ((pa + 1) ** 2, (sym(a) + 1) ** 2),
                      (sum([pa, pb], BatchPoly()), sym(a) + sym(b))):
        poly = sympy.Poly(sympy.expand(want), s1, s2)
        assert got.at(n1, n2) == float(want.subs({s1: n1, s2: n2}))
        assert got.coeff(1, 1) == poly.coeff_monomial(s1 * s2)
        assert [p for p, _ in got.terms()] == [m for m, _ in poly.terms() if poly.coeff_monomial(
            s1 ** m[0] * s2 ** m[1]) != 0]
        assert sympy.expand(sympy.sympify(str(got), locals={'N1': s1, 'N2': s2}) - want) == 0
        assert sympy.expand(got.as_expr() - want) == 0
        assert (got == 0) == (sympy.expand(want) == 0)


def test_explain_reads_like_a_query_plan():
    text = ntc.compile(NET, (-1, 5)).explain()
    head = text.splitlines()[0].split()
    assert head == ['id', 'op', 'in', 'layout', 'shape', 'FLOPs', 'bytes', 'path', 'lowering']
    assert 'Σ⊗I1' in text and 'total FLOPs' in text and 'peak live' in text
    assert 'N1·N2' in text
    numeric = ntc.compile(NET, (-1, 5)).explain(n1=1000, n2=1000)
    assert 'M' in numeric  # millions of FLOPs at 1000 × 1000
