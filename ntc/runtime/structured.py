"""Structured derivatives of the empirical NTK, read from the jaxpr of any JAX ``f(params, x)``.

Novak et al. 2022 ("Fast finite width neural tangent kernel", sec. 4): when a parameter ``W``
reaches the outputs only through one equation that is linear in it, ``y = B(u, W)``, the
Jacobian of the outputs with respect to ``W`` factors through that equation:
``∂f_o/∂W = B_Wᵀ(u, g_o)`` with ``g_o = ∂f_o/∂y`` the cotangent reaching ``y``.  The NTK term of
``W`` is then ``Θ_W[o1, o2] = ⟨B_Wᵀ(u1, g1_o1), B_Wᵀ(u2, g2_o2)⟩`` and never needs the Jacobian:

- ``dot_general`` (Dense, attention projections, einsum): ``B_Wᵀ(u, g) = Σ_free u ⊗ g``, so
  ``Θ_W = Σ u1 g1 u2 g2`` is one four-operand contraction.  Its cheapest order is chosen by
  FLOPs (opt_einsum): for a dense layer on one example it is ``(u1·u2) ⊙ (g1·g2)``, the Gram
  of the inputs times the Gram of the cotangents; with many positions it is ``(u1 g1)·(u2 g2)``,
  the per-layer Jacobian.
- ``conv_general_dilated`` with the parameter as kernel: the same, with ``u`` the input's
  patches (im2col from strided slices, `_patches`), which turn the convolution into a dot.
- ``add``/``sub`` (biases), ``mul`` by data (scales), grouped convolutions, and linear chains
  that are not isometries (``broadcast_in_dim``, ``mul`` by a constant array): the per-layer
  Jacobian ``B_Wᵀ(u, g)`` from one VJP of the equation per cotangent, pulled back through the
  chain with its transpose.

The parameter may pass through isometries up to scale first (``mul``/``div`` by a constant
scalar, ``neg``, ``reshape``, ``transpose``, ``squeeze``, ``expand_dims``,
``convert_element_type``): ``W' = c·P(W)`` gives ``Θ_W = c² Θ_W'``.  A parameter consumed any
other way (twice, by a non-linear equation, or returned) falls back to Jacobian contraction for
that parameter alone; the plan says which and why.  All cotangents come from one reverse pass
per output entry over the "delta" inputs added to the equations' outputs (``jax.jacrev``),
which also gives the Jacobians of the fallback parameters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax import lax
from jax.extend import core as jcore

__all__ = ['Program', 'Point', 'StructuredPlan', 'flatten', 'analyse', 'side_factors',
           'gram_labels', 'gram_spec', 'factored_spec', 'contraction_cost', 'choose_order',
           'contract', 'ORDERS', 'explain']

_CALLS = ('jit', 'pjit', 'closed_call', 'core_call')
_ISOMETRIES = ('neg', 'reshape', 'transpose', 'squeeze', 'expand_dims', 'convert_element_type',
               'copy', 'copy_p')


class _Lit:
    """A literal operand of a flattened equation."""

    def __init__(self, value):
        self.value = value


@dataclass(frozen=True)
class Eqn:
    """One equation of a flattened program: ``outs = prim.bind(*ins, **params)``."""

    eqn: object            # the jaxpr equation it came from (primitive, params, bind rules)
    ins: tuple             # value ids (int) or _Lit
    outs: tuple            # value ids

    @property
    def name(self) -> str:
        return self.eqn.primitive.name

    def bind(self, *args):
        params = self.eqn.primitive.get_bind_params(self.eqn.params)
        out = self.eqn.primitive.bind(*args, **params)
        return out if self.eqn.primitive.multiple_results else [out]


@dataclass
class Program:
    """A jaxpr with its calls (``jit``) inlined: one flat list of equations over value ids."""

    eqns: list
    invars: list
    outvars: list
    consts: dict
    avals: dict


def flatten(closed) -> Program:
    """Inline the nested ``jit`` calls of a closed jaxpr so a parameter can be followed
    through them."""
    ids = itertools.count()
    eqns, consts, avals = [], {}, {}

    def new(var):
        i = next(ids)
        avals[i] = var.aval
        return i

    def read(env, v):
        return _Lit(v.val) if isinstance(v, jcore.Literal) else env[v]

    def walk(jaxpr, env):
        for e in jaxpr.eqns:
            ins = tuple(read(env, v) for v in e.invars)
            inner = e.params.get('jaxpr', e.params.get('call_jaxpr'))
            if e.primitive.name in _CALLS and isinstance(inner, jcore.ClosedJaxpr):
                sub = {}
                for v, c in zip(inner.jaxpr.constvars, inner.consts):
                    sub[v] = new(v)
                    consts[sub[v]] = c
                sub.update(zip(inner.jaxpr.invars, ins))
                walk(inner.jaxpr, sub)
                for v, o in zip(e.outvars, inner.jaxpr.outvars):
                    env[v] = read(sub, o)
                continue
            outs = tuple(new(v) for v in e.outvars)
            env.update(zip(e.outvars, outs))
            eqns.append(Eqn(e, ins, outs))

    env = {}
    for v, c in zip(closed.jaxpr.constvars, closed.consts):
        env[v] = new(v)
        consts[env[v]] = c
    invars = [new(v) for v in closed.jaxpr.invars]
    env.update(zip(closed.jaxpr.invars, invars))
    walk(closed.jaxpr, env)
    outvars = [read(env, v) for v in closed.jaxpr.outvars]
    return Program(eqns, invars, outvars, consts, avals)


@dataclass(frozen=True)
class Point:
    """A structured equation: parameter leaf `leaf` reaches the outputs only through operand
    `slot` of equation `index`, after the linear `chain` ((equation index, operand slot)
    pairs).  `rule` is
    'gram' (dot_general / conv as a four-operand contraction) or 'explicit' (per-layer
    Jacobian from one VJP of the equation per cotangent)."""

    index: int
    leaf: int
    slot: int
    rule: str
    chain: tuple
    isometric: bool


@dataclass
class StructuredPlan:
    """Which parameter leaves use which rule; `fallback` maps the others to the reason."""

    points: list
    fallback: dict = field(default_factory=dict)
    unused: list = field(default_factory=list)
    readout: tuple | None = None        # (equation index of the readout's input x, its axis)
    factored: dict = field(default_factory=dict)    # point index -> y's channel axis
    path: tuple = ()        # (equation index, operand slot) of the per-channel maps from y to x

    def key(self):
        return (tuple(self.points), tuple(sorted(self.fallback)), self.readout,
                tuple(sorted(self.factored.items())), self.path)


@dataclass(frozen=True)
class _Tag:
    leaf: int
    chain: tuple
    isometric: bool


def _independent(prog, dep, a) -> bool:
    return isinstance(a, _Lit) or a not in dep


def _shape(prog, a):
    return np.shape(a.value) if isinstance(a, _Lit) else prog.avals[a].shape


def analyse(prog: Program, n_leaves: int) -> StructuredPlan:
    """Follow each parameter leaf (the first `n_leaves` inputs) through the program and find
    the one equation that consumes it linearly, or the reason it falls back."""
    uses: dict = {}
    for e in prog.eqns:
        for a in e.ins:
            if not isinstance(a, _Lit):
                uses[a] = uses.get(a, 0) + 1
    for a in prog.outvars:
        if not isinstance(a, _Lit):
            uses[a] = uses.get(a, 0) + 2        # returned: never a single linear use
    dep = set(prog.invars)
    tags = {v: _Tag(k, (), True) for k, v in enumerate(prog.invars[:n_leaves])}
    points, fallback = {}, {}

    def fail(leaf, why):
        fallback.setdefault(leaf, why)

    for i, e in enumerate(prog.eqns):
        if any(not isinstance(a, _Lit) and a in dep for a in e.ins):
            dep.update(e.outs)
        tagged = [(s, tags[a]) for s, a in enumerate(e.ins)
                  if not isinstance(a, _Lit) and a in tags]
        if not tagged:
            continue
        for s, t in tagged:
            if uses.get(e.ins[s], 0) != 1:
                fail(t.leaf, 'its value is used more than once')
        if len(tagged) > 1:
            for _, t in tagged:
                fail(t.leaf, f'{e.name} combines two parameter values')
            continue
        slot, t = tagged[0]
        others = [a for s, a in enumerate(e.ins) if s != slot]
        name = e.name
        chained = _Tag(t.leaf, t.chain + ((i, slot),), t.isometric)
        if name in _ISOMETRIES and len(e.ins) == 1:
            tags[e.outs[0]] = chained
        elif name in ('mul', 'div') and not (name == 'div' and slot == 1) \
                and _independent(prog, dep, others[0]):
            iso = t.isometric and _shape(prog, others[0]) == ()
            tags[e.outs[0]] = _Tag(t.leaf, chained.chain, iso)
        elif name == 'broadcast_in_dim':
            tags[e.outs[0]] = _Tag(t.leaf, chained.chain, False)
        elif name == 'dot_general' and not isinstance(others[0], _Lit):
            points[t.leaf] = Point(i, t.leaf, slot, 'gram' if t.isometric else 'explicit',
                                   t.chain, t.isometric)
        elif name == 'conv_general_dilated' and slot == 1 and not isinstance(others[0], _Lit):
            plain = e.eqn.params['feature_group_count'] == 1 \
                and e.eqn.params['batch_group_count'] == 1
            points[t.leaf] = Point(i, t.leaf, slot, 'gram' if plain and t.isometric
                                   else 'explicit', t.chain, t.isometric)
        elif name in ('add', 'sub', 'add_any', 'mul'):      # VJP rule (sums broadcasts)
            points[t.leaf] = Point(i, t.leaf, slot, 'explicit', t.chain, t.isometric)
        else:
            fail(t.leaf, f'{name} consumes it')
    kept = [p for k, p in sorted(points.items()) if k not in fallback]
    done = {p.leaf for p in kept} | set(fallback)
    unused = [k for k in range(n_leaves) if k not in done]
    plan = StructuredPlan(kept, fallback, unused)
    _find_factored(prog, plan, n_leaves, uses)
    return plan


# elementwise primitives: with every other operand a data- and parameter-free scalar, channel c
# of the output depends on channel c of the input only
_ELEMENTWISE = ('max', 'min', 'mul', 'div', 'add', 'sub', 'neg', 'tanh', 'exp', 'log',
                'logistic', 'integer_pow', 'pow', 'abs', 'sqrt', 'rsqrt', 'erf', 'sin', 'cos',
                'square', 'convert_element_type', 'copy', 'copy_p')
_OUTPUT_CHAIN = ('squeeze', 'reshape', 'convert_element_type', 'copy', 'copy_p', 'mul', 'div',
                 'neg', 'add', 'sub')


def _find_factored(prog: Program, plan: StructuredPlan, n_leaves: int, uses: dict):
    """Channel-factored cotangents (a linear readout after per-channel maps).

    When the one output is ``f = c·(x · R) (+ b)`` with x reaching the readout's weight R along
    one axis (all other axes of x of size 1: one example), and x comes from a structured
    equation's output y through maps that keep channels apart (elementwise maps with scalar
    constants, sums over the other axes: ReLU, GlobalAvgPool), then the cotangent of output
    entry o at y factors: ``g_o = h ⊙ ct_x[o]`` broadcast along y's channel axis, with
    ``h = (∂x/∂y)ᵀ 1`` one reverse pass, independent of o.  Records the readout and, per such
    point, y's channel axis in `plan`."""
    if len(prog.outvars) != 1 or isinstance(prog.outvars[0], _Lit):
        return
    producer = {o: (i, e) for i, e in enumerate(prog.eqns) for o in e.outs}
    anydep, datadep = set(prog.invars), set(prog.invars[n_leaves:])
    for e in prog.eqns:
        ins = [a for a in e.ins if not isinstance(a, _Lit)]
        if any(a in anydep for a in ins):
            anydep.update(e.outs)
        if any(a in datadep for a in ins):
            datadep.update(e.outs)

    def free_scalar(a):
        return isinstance(a, _Lit) and np.ndim(a.value) == 0 or \
            not isinstance(a, _Lit) and a not in anydep and prog.avals[a].shape == ()

    at = {p.index: p for p in plan.points}
    v = prog.outvars[0]
    while v in producer:                                    # output side: to the readout dot
        i, e = producer[v]
        dep = [a for a in e.ins if not isinstance(a, _Lit) and a in datadep]
        if len(dep) != 1:
            return
        others = [a for a in e.ins if a is not dep[0]]
        if e.name == 'dot_general':
            break
        if e.name not in _OUTPUT_CHAIN or uses.get(dep[0], 0) != 1:
            return
        if e.name in ('mul', 'div') and not all(free_scalar(a) for a in others):
            return
        if e.name in ('add', 'sub') and any(not isinstance(a, _Lit) and a in datadep
                                            for a in others):
            return
        v = dep[0]
    else:
        return
    x = dep[0]
    slot = e.ins.index(x)
    (lc, rc), (lb, rb) = e.eqn.params['dimension_numbers']
    contracted = lc if slot == 0 else rc
    shape = prog.avals[x].shape
    if lb or len(contracted) != 1 or \
            math.prod(n for d, n in enumerate(shape) if d != contracted[0]) != 1:
        return
    if x not in producer or uses.get(x, 0) != 1 or producer[x][0] in at:
        return
    readout = (producer[x][0], contracted[0])
    v, axis, path = x, contracted[0], []
    while v in producer and uses.get(v, 0) == 1:            # input side: to a structured y
        i, e = producer[v]
        if i in at:
            p = at[i]
            if p.rule == 'gram':
                _, y_lab = gram_labels(e, p.slot)
                if [d for d, lb in enumerate(y_lab) if lb[0] == 'M'] == [axis]:
                    plan.readout = readout
                    plan.factored[i] = axis
                    plan.path = tuple(reversed(path))
            return
        dep = [a for a in e.ins if not isinstance(a, _Lit) and a in anydep]
        if len(dep) != 1:
            return
        others = [a for a in e.ins if a is not dep[0]]
        if e.name in _ELEMENTWISE and all(free_scalar(a) for a in others):
            pass
        elif e.name == 'reduce_sum':              # output axis `axis` is the input's
            kept = [d for d in range(len(prog.avals[dep[0]].shape))
                    if d not in e.eqn.params['axes']]
            axis = kept[axis]
        else:
            return
        path.append((i, e.ins.index(dep[0])))
        v = dep[0]


# ---------------------------------------------------------------------------------------------
# the factors of one side: inputs and cotangents of the structured equations


def _dot_labels(eqn: Eqn, slot: int):
    """Labels of the data operand's axes and of the output's axes of a dot_general whose
    operand `slot` is the weight: ('K', i) contracted with the weight, ('B', i) batch (shared
    with the weight), ('M', i) free axes of the weight, ('F', d) free axes of the data."""
    (lc, rc), (lb, rb) = eqn.eqn.params['dimension_numbers']
    data_c, data_b = (lc, lb) if slot == 1 else (rc, rb)
    w_c, w_b = (rc, rb) if slot == 1 else (lc, lb)
    u_ndim = len(eqn.eqn.invars[1 - slot].aval.shape)
    w_ndim = len(eqn.eqn.invars[slot].aval.shape)
    u_lab = []
    for d in range(u_ndim):
        if d in data_c:
            u_lab.append(('K', data_c.index(d)))
        elif d in data_b:
            u_lab.append(('B', data_b.index(d)))
        else:
            u_lab.append(('F', d))
    u_free = [('F', d) for d in range(u_ndim) if d not in data_c and d not in data_b]
    w_free = [('M', d) for d in range(w_ndim) if d not in w_c and d not in w_b]
    y_lab = [('B', i) for i in range(len(lb))] + (u_free + w_free if slot == 1
                                                   else w_free + u_free)
    return u_lab, y_lab


def _conv_labels(eqn: Eqn):
    out_spec = eqn.eqn.params['dimension_numbers'].out_spec
    ndim = len(out_spec)
    u_lab = [('K', 0) if d == out_spec[1] else ('F', d) for d in range(ndim)]
    y_lab = [('M', 0) if d == out_spec[1] else ('F', d) for d in range(ndim)]
    return u_lab, y_lab


def gram_labels(eqn: Eqn, slot: int):
    """(labels of u, labels of y) of a 'gram' point: u is the data operand (dot_general) or
    the patches of the input (convolution)."""
    if eqn.name == 'dot_general':
        return _dot_labels(eqn, slot)
    return _conv_labels(eqn)


def _patches(eqn: Eqn, u):
    """Patches of a convolution's input (im2col), laid out like its output with features
    (*filter, C_in): ``conv(u, W) = patches(u) · W`` with W as a (∏filter·C_in, C_out)
    matrix.  The strided slices of the padded (and lhs-dilated) input are concatenated along
    the channel axis in (N, *spatial, C) order, so for the usual NHWC layout the patches come
    out as the matrix the per-layer Jacobian's product reads, with no transpose (the feature
    order only has to agree between the two sides, which it does)."""
    p = eqn.eqn.params
    dn = p['dimension_numbers']
    w_shape = eqn.eqn.invars[1].aval.shape
    y_shape = eqn.eqn.outvars[0].aval.shape
    filt = [w_shape[d] for d in dn.rhs_spec[2:]]
    outs = [y_shape[d] for d in dn.out_spec[2:]]
    nd = len(filt)
    x = jnp.transpose(u, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))  # (N, *sp, C)
    cfg = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d
                         in zip(p['padding'], p['lhs_dilation'])] + [(0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    cuts = []
    for ks in itertools.product(*(range(k) for k in filt)):
        start = [0] + [k * r for k, r in zip(ks, p['rhs_dilation'])] + [0]
        limit = [x.shape[0]] + [s0 + (o - 1) * st + 1 for s0, o, st
                                in zip(start[1:], outs, p['window_strides'])] + [x.shape[-1]]
        cuts.append(lax.slice(x, start, limit, [1] + list(p['window_strides']) + [1]))
    t = jnp.concatenate(cuts, axis=-1)                         # (N, *out spatial, K·C)
    perm = [0] * t.ndim
    perm[dn.out_spec[1]] = nd + 1
    for logical, axis in enumerate(dn.out_spec[2:]):
        perm[axis] = logical + 1
    return jnp.transpose(t, perm)


def _run(prog: Program, plan: StructuredPlan, leaves, data, deltas, fb, want=()):
    """Evaluate the program with `deltas` added to the outputs of the structured equations
    and fallback leaves replaced by `fb`; also returns the operand values of the structured
    equations and of their chains."""
    env = dict(prog.consts)
    vals = list(leaves) + list(data)
    for k, v in zip(sorted(plan.fallback), fb):
        vals[k] = v
    env.update(zip(prog.invars, vals))
    at = {p.index: j for j, p in enumerate(plan.points)}
    if plan.readout is not None:
        at[plan.readout[0]] = len(plan.points)
    keep = {i for p in plan.points for i, _ in p.chain} | set(at) | {i for i, _ in plan.path}
    seen = {}

    def read(a):
        return a.value if isinstance(a, _Lit) else env[a]

    for i, e in enumerate(prog.eqns):
        args = [read(a) for a in e.ins]
        if i in keep:
            seen[i] = args
        outs = e.bind(*args)
        if i in at:
            outs = [outs[0] + deltas[at[i]]]
        env.update(zip(e.outs, outs))
    if want:
        return [read(a) for a in prog.outvars], seen, [env[w] for w in want]
    return [read(a) for a in prog.outvars], seen


def _chain_scale(prog, point, seen):
    """c of an isometric chain W' = c·P(W)."""
    c = 1.
    for i, slot in point.chain:
        name = prog.eqns[i].name
        if name == 'neg':
            c = -c
        elif name in ('mul', 'div'):
            other = seen[i][1 - slot]
            c = c * other if name == 'mul' else c / other
    return c


def _replay(prog, steps, seen, v):
    """`v` through the equations `steps` ((index, slot) pairs), each re-bound with the operands
    the main pass recorded in `seen` and `v` in its slot."""
    for i, slot in steps:
        args = list(seen[i])
        args[slot] = v
        v = prog.eqns[i].bind(*args)[0]
    return v


def _chain_fn(prog, point, seen):
    """W -> the weight operand of the structured equation, through the chain."""
    return lambda w: _replay(prog, point.chain, seen, w)


def side_factors(prog: Program, plan: StructuredPlan, leaves, data):
    """The factors of one side: per output leaf, a list with, for each point of the plan,
    (u, g) for a 'gram' point (u already multiplied by the chain's scale), (u, g, h, r) for a
    channel-factored one (`_find_factored`; the caller keeps the cheaper form) or (J_W,), then
    (J,) for each fallback leaf.  Output axes lead g, r and J."""
    def zero(i):
        aval = prog.avals[prog.eqns[i].outs[0]]
        return jnp.zeros(aval.shape, aval.dtype)

    deltas = tuple(zero(p.index) for p in plan.points)
    if plan.readout is not None:
        deltas += (zero(plan.readout[0]),)
    fb = tuple(leaves[k] for k in sorted(plan.fallback))

    def run(d, f):
        outs, seen = _run(prog, plan, leaves, data, d, f)
        return outs, seen

    jac, seen = jax.jacrev(run, argnums=(0, 1), has_aux=True)(deltas, fb)
    h = _factored_h(prog, plan, seen)
    result = []
    for o, (jd, jf) in zip(prog.outvars, jac):
        n_out = len(prog.avals[o].shape) if not isinstance(o, _Lit) else np.ndim(o.value)
        per_point = []
        for j, (p, g) in enumerate(zip(plan.points, jd)):
            e = prog.eqns[p.index]
            if p.rule == 'gram':
                u = seen[p.index][1 - p.slot]
                if e.name == 'conv_general_dilated':
                    u = _patches(e, u)
                u = u * _chain_scale(prog, p, seen)
                if p.index in plan.factored:
                    ct_x = jd[-1]                   # (outputs, *x.shape): the readout's R
                    r = ct_x.reshape(ct_x.shape[:n_out] + (-1,))
                    per_point.append((u, g, h[j], r))
                else:
                    per_point.append((u, g))
            else:
                per_point.append((_explicit(prog, p, seen, g, n_out),))
        result.append(per_point + [(j,) for j in jf])
    return result


def _factored_h(prog, plan, seen):
    """Per point, ``h = (∂x/∂y)ᵀ 1`` for the channel-factored point (None for the others):
    one reverse pass through the per-channel maps from its output y to the readout's input x
    (`_find_factored`), re-run from the operands the main pass recorded, so the network
    before y is not evaluated again."""
    out = [None] * len(plan.points)
    if not plan.factored:
        return out

    (j,) = [j for j, p in enumerate(plan.points) if p.index in plan.factored]
    if not plan.path:                       # the readout reads y itself
        aval = prog.avals[prog.eqns[plan.points[j].index].outs[0]]
        out[j] = jnp.ones(aval.shape, aval.dtype)
        return out
    first, slot = plan.path[0]
    x, vjp = jax.vjp(lambda y: _replay(prog, plan.path, seen, y), seen[first][slot])
    (out[j],) = vjp(jnp.ones_like(x))
    return out


def _explicit(prog, p, seen, g, n_out):
    """Per-layer Jacobian J_W[o, ...] = chainᵀ(B_Wᵀ(u, g_o)) from one VJP per output entry."""
    e = prog.eqns[p.index]
    args = seen[p.index]
    out_shape = g.shape[:n_out]

    def weight_ct(go):
        def eq(v):
            a = list(args)
            a[p.slot] = v
            return e.bind(*a)[0]
        (jv,) = jax.vjp(eq, args[p.slot])[1](go)
        if p.chain:
            w = _leaf_aval(prog, p)
            (jv,) = jax.linear_transpose(_chain_fn(prog, p, seen), w)(jv)
        return jv

    flat = g.reshape((-1,) + g.shape[n_out:])
    j = jax.vmap(weight_ct)(flat)
    return j.reshape(out_shape + j.shape[1:])


def _leaf_aval(prog, p):
    a = prog.avals[prog.invars[p.leaf]]
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


# ---------------------------------------------------------------------------------------------
# contraction and plan text


def gram_spec(u_lab, y_lab, s1, s2, so, batch1, batch2, free_letters):
    """einsum subscripts 'u1,g1,u2,g2->out' of a gram point: s1/s2/so are the output-axis
    subscripts of `empirical._spec`; batch1/batch2 the letter of the vmapped example axis of
    u on each side ('' when not vmapped); free_letters supplies fresh letters."""
    shared, side = {}, [{}, {}]

    def letter(lab, k):
        if lab[0] == 'F':
            table = side[k]
        else:
            table = shared
        if lab not in table:
            table[lab] = next(free_letters)
        return table[lab]

    u1 = batch1 + ''.join(letter(lb, 0) for lb in u_lab)
    g1 = s1 + ''.join(letter(lb, 0) for lb in y_lab)
    u2 = batch2 + ''.join(letter(lb, 1) for lb in u_lab)
    g2 = s2 + ''.join(letter(lb, 1) for lb in y_lab)
    return f'{u1},{g1},{u2},{g2}->{so}'


def factored_spec(u_lab, y_lab, s1, s2, so, batch1, batch2, free_letters):
    """einsum subscripts 'u1,h1,r1,u2,h2,r2->out' of a channel-factored point (cotangent
    ``g[o] = h ⊙ r[o, c]``, `_find_factored`): as `gram_spec`, with h labelled like y without
    the output axes and r carrying the output axes and y's channel axis."""
    u1, g1, u2, g2 = gram_spec(u_lab, y_lab, s1, s2, so, batch1, batch2,
                               free_letters).split('->')[0].split(',')
    m = [k for k, lb in enumerate(y_lab) if lb[0] == 'M']
    c = g1[len(s1) + m[0]]
    h1, h2 = batch1 + g1[len(s1):], batch2 + g2[len(s2):]
    return f'{u1},{h1},{s1}{c},{u2},{h2},{s2}{c}->{so}'


def contraction_cost(spec: str, *shapes, optimize='optimal'):
    """(FLOPs, largest intermediate in elements, path) of the cheapest order (opt_einsum), or
    of the order `optimize` when it is a path."""
    _, info = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize=optimize)
    return float(info.opt_cost), float(info.largest_intermediate), info.path


# the two orders of a four-operand term 'u1,g1,u2,g2' (opt_einsum paths: contract the listed
# operands, append the result): the Gram of the inputs times the Gram of the cotangents, or the
# per-layer Jacobians J = Σ_F u g of each side, then J1·J2
ORDERS = {'Gram(u)*Gram(g)': ((0, 2), (0, 1), (0, 1)),
          'J_layer.J_layer': ((0, 1), (0, 1), (0, 1))}


def choose_order(spec: str, shapes):
    """(name, path, FLOPs) of the cheapest of `ORDERS` and opt_einsum's optimal order for a
    four-operand term, opt_einsum's optimal order for a channel-factored one (six operands;
    FLOPs as opt_einsum counts them)."""
    if len(shapes) == 6:
        flops, _, path = contraction_cost(spec, *shapes)
        return 'channel-factored', tuple(tuple(p) for p in path), flops
    cands = [(name, path) for name, path in ORDERS.items()]
    cands.append(('optimal', contraction_cost(spec, *shapes)[2]))
    best = None
    for name, path in cands:
        flops = contraction_cost(spec, *shapes, optimize=list(path))[0]
        if best is None or flops < best[2]:
            best = (name, tuple(tuple(p) for p in path), flops)
    name, path, flops = best
    if name == 'optimal':       # name opt_einsum's order by its first step when it is one of ours
        name = next((n for n, p in ORDERS.items() if p[0] == path[0]), 'optimal')
    return name, path, flops


def contract(spec: str, ops, path):
    """``einsum(spec, *ops)`` along `path`, one two-operand ``einsum`` (one XLA dot_general) per
    step.  Each intermediate keeps dot_general's own axis order (batch axes, then the free axes
    of the left and of the right operand), with the operands swapped when that puts the axes
    that reach the output before those contracted later: the per-layer Jacobian comes out as
    (example, output, weight axes), and J1·J2 is then a plain matrix product, with no transposes
    between steps."""
    ins, out = spec.split('->')
    subs, ops = ins.split(','), list(ops)
    for step, pair in enumerate(path):
        i, j = sorted(pair)
        rest = ''.join(s for k, s in enumerate(subs) if k not in (i, j))
        if step == len(path) - 1:
            so = out
        else:
            so = _natural(subs[i], subs[j], rest, out)
            swapped = _natural(subs[j], subs[i], rest, out)
            if _late_first(so, out) and not _late_first(swapped, out):
                so = swapped
                i, j = j, i
        r = _dot(subs[i], subs[j], so, ops[i], ops[j])
        for k in sorted((i, j), reverse=True):
            del ops[k], subs[k]
        ops.append(r)
        subs.append(so)
    return ops[0]


def _dot(sa: str, sb: str, so: str, a, b):
    """``einsum(f'{sa},{sb}->{so}', a, b)`` as one batched matrix product ``lax.dot_general``
    of 3-D operands (batch, rows, contracted) or (batch, contracted, columns), then a transpose
    to `so` when its order differs.  An operand whose axes already fall into such groups is
    only reshaped; the contracted axes take the order of the larger operand, so that the
    smaller one is the one transposed, and a transposed operand keeps its last axis last
    (contiguous runs).  XLA's CPU dot runs ~2x faster on such operands than with several
    contracted or free axes (jnp.einsum leaves those to it)."""
    if len(set(sa)) < len(sa) or len(set(sb)) < len(sb):
        return jnp.einsum(f'{sa},{sb}->{so}', a, b)
    only_a = [k for k, c in enumerate(sa) if c not in sb and c not in so]
    only_b = [k for k, c in enumerate(sb) if c not in sa and c not in so]
    if only_a:
        a, sa = jnp.sum(a, axis=tuple(only_a)), ''.join(c for c in sa if c in sb or c in so)
    if only_b:
        b, sb = jnp.sum(b, axis=tuple(only_b)), ''.join(c for c in sb if c in sa or c in so)
    batch = [c for c in sa if c in sb and c in so]
    free_a = [c for c in sa if c not in sb]
    free_b = [c for c in sb if c not in sa]
    size = dict(zip(sa, a.shape)) | dict(zip(sb, b.shape))

    def groups(sx, summed, free):
        """(axis groups, contracted position, transposed?) of one operand."""
        for order, dim in (([batch, free, summed], 2), ([batch, summed, free], 1)):
            if list(sx) == sum(order, []):
                return order, dim, False
        if sx[-1] in free:
            return [batch, summed, free], 1, True
        return [batch, free, summed], 2, True

    best = None
    for summed in ([c for c in sa if c in sb and c not in so],
                   [c for c in sb if c in sa and c not in so]):
        ga, gb = groups(sa, summed, free_a), groups(sb, summed, free_b)
        moved = ga[2] * a.size + gb[2] * b.size
        if best is None or moved < best[0]:
            best = (moved, ga, gb)
    _, (order_a, dim_a, _), (order_b, dim_b, _) = best

    def block(x, sx, order):        # transpose to `order` (a no-op when already there), 3-D
        x = jnp.transpose(x, [sx.index(c) for c in sum(order, [])])
        return x.reshape([math.prod(size[c] for c in group) for group in order])

    r = lax.dot_general(block(a, sa, order_a), block(b, sb, order_b),
                        (((dim_a,), (dim_b,)), ((0,), (0,))))
    got = ''.join(batch + free_a + free_b)
    r = r.reshape([size[c] for c in got])
    return r if got == so else jnp.transpose(r, [got.index(c) for c in so])


def _natural(sa: str, sb: str, rest: str, out: str) -> str:
    """dot_general's output subscripts for sa·sb keeping the letters in `rest` or `out`."""
    keep = [c for c in dict.fromkeys(sa + sb) if c in rest or c in out]
    batch = [c for c in keep if c in sa and c in sb]
    return ''.join(batch + [c for c in dict.fromkeys(sa) if c in keep and c not in batch]
                   + [c for c in dict.fromkeys(sb) if c in keep and c not in batch])


def _late_first(sub: str, out: str) -> bool:
    """Whether a letter contracted later comes before one of the output's."""
    late = [c not in out for c in sub]
    return any(a and not b for a, b in zip(late, late[1:]))


def explain(prog: Program, plan: StructuredPlan, leaf_names, terms, operands) -> str:
    """The empirical NTK program as a table: per parameter leaf (and output leaf), the
    equation that consumes it, the contraction used, its FLOPs (opt_einsum's cheapest order)
    and the bytes of its operands; fallback and unused leaves say so."""
    rows = [('param', 'equation', 'rule', 'contraction', 'flops', 'bytes')]
    total_flops = total_bytes = 0.
    fb = sorted(plan.fallback)
    for out_terms, out_ops in zip(terms, operands):
        n_fb = 0
        for (point, spec), ops in zip(out_terms, out_ops):
            shapes = [o.shape for o in ops]
            if len(ops) in (4, 6):
                order, _, flops = choose_order(spec, shapes)
            else:
                flops = contraction_cost(spec, *shapes)[0]
            nbytes = float(sum(np.prod(o.shape) * o.dtype.itemsize for o in ops))
            total_flops += flops
            total_bytes += nbytes
            if point is None:
                k = fb[n_fb]
                n_fb += 1
                row = (leaf_names[k], '-', f'fallback ({plan.fallback[k]})',
                       f'{spec} [Jacobian contraction]')
            else:
                e = prog.eqns[point.index]
                if len(ops) in (4, 6):
                    rule = f'structured {e.name}'
                else:
                    order, rule = 'per-layer Jacobian', f'structured {e.name} (VJP)'
                row = (leaf_names[point.leaf], f'#{point.index} {e.name}', rule,
                       f'{spec} [{order}]')
            rows.append(row + (f'{flops:.3g}', f'{nbytes:.3g}'))
    for k in plan.unused:
        rows.append((leaf_names[k], '-', 'unused', 'no contribution', '0', '0'))
    rows.append(('total', '', '', '', f'{total_flops:.3g}', f'{total_bytes:.3g}'))
    return _format(rows)


def _format(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
