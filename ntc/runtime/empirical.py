"""Empirical (finite-width) NNGP and NTK of any JAX function ``f(params, x, **kwargs)``.

Drop-in for `neural_tangents.empirical_{kernel,ntk,nngp}_fn`.  For outputs ``f(params, x)``:

- NNGP sample: ``f(x1) · f(x2)``, the outer product of the outputs (Neal 1996; Lee et al. 2018);
- NTK sample: ``Σ_p ∂f(x1)/∂p · ∂f(x2)/∂p`` (Jacot et al. 2018, eq. 5);

each contracted over ``trace_axes`` by *averaging* (a mean over the channel axis, as NT does,
so a width-C readout gives the per-channel kernel) and restricted to the diagonal along
``diagonal_axes``.  The result has the axes of ``zip(f(x1).shape, f(x2).shape)`` in output-axis
order: a free axis ``a`` gives the pair ``(a of x1, a of x2)``, a diagonal axis appears once and a
traced axis not at all; for ``(N, C)`` outputs and ``trace_axes=(-1,)`` this is ``(N1, N2)``.

Three NTK implementations (Novak et al. 2022, "Fast finite width neural tangent kernel"):
`NtkImplementation.JACOBIAN_CONTRACTION` instantiates the Jacobians (reverse mode) and
contracts them; `NtkImplementation.NTK_VECTOR_PRODUCTS` never forms a Jacobian: each column
``Θ e = J1 (J2^T e)`` is a VJP of ``f(x2)`` followed by a JVP of ``f(x1)``;
`NtkImplementation.STRUCTURED_DERIVATIVES` reads the jaxpr of ``f`` and, for each parameter
consumed by one linear equation (dot_general, convolution, bias add, scale), contracts that
equation's inputs with the cotangents reaching its output (`structured.py`,
``docs/empirical_ntk.md``), falling back to Jacobian contraction per parameter; its
``ntk_fn.explain(x1, x2, params)`` prints the plan.  ``AUTO`` compiles the three and keeps the
one XLA counts fewest FLOPs for (logged on this module's logger); FLOPs ignore memory traffic,
so choose explicitly when speed matters.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
import string
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from . import structured

__all__ = ['NtkImplementation', 'DEFAULT_NTK_IMPLEMENTATION', 'empirical_kernel_fn',
           'empirical_ntk_fn', 'empirical_ntk_vp_fn', 'empirical_nngp_fn', 'per_example_pairs',
           'slice_pairs']


class NtkImplementation(enum.IntEnum):
    """How the empirical NTK is computed (same values as NT's enum; ints are accepted)."""

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


DEFAULT_NTK_IMPLEMENTATION = NtkImplementation.JACOBIAN_CONTRACTION

_tree = jax.tree_util
_log = logging.getLogger(__name__)
_LETTERS = string.ascii_letters


# ---------------------------------------------------------------------------------------------
# axes and contractions


def _canon(axes, ndim: int, what: str) -> tuple[int, ...]:
    """`axes` as sorted non-negative axes of a rank-`ndim` output; an axis named twice (e.g.
    `(0, -3)` of a rank-3 output) counts once, as in NT."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = set()
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise InputError(f'{what}={axes} is out of range for outputs with {ndim} axes')
        out.add(int(a) % ndim)
    return tuple(sorted(out))


def _axes(ndim, trace_axes, diagonal_axes):
    tr = _canon(trace_axes, ndim, 'trace_axes')
    dg = _canon(diagonal_axes, ndim, 'diagonal_axes')
    if set(tr) & set(dg):
        raise InputError(f'trace_axes={tuple(trace_axes)} and diagonal_axes='
                         f'{tuple(diagonal_axes)} share an axis')
    return tr, dg


def _spec(ndim: int, tr, dg, n_extra: int = 0):
    """einsum subscripts (x1 side, x2 side, output) for a kernel of two rank-`ndim` outputs,
    with `n_extra` trailing axes (parameter axes) contracted on both sides."""
    if 2 * ndim + n_extra > len(_LETTERS):
        raise InputError(f'outputs with {ndim} axes are too many to contract')
    one, two, out = [], [], []
    for a in range(ndim):
        l1, l2 = _LETTERS[2 * a], _LETTERS[2 * a + 1]
        if a in tr:
            one.append(l1)
            two.append(l1)
        elif a in dg:
            one.append(l1)
            two.append(l1)
            out.append(l1)
        else:
            one.append(l1)
            two.append(l2)
            out += [l1, l2]
    extra = list(_LETTERS[2 * ndim:2 * ndim + n_extra])
    return ''.join(one + extra), ''.join(two + extra), ''.join(out)


def _contract(a, b, n_out: int, tr, dg):
    """Kernel from two arrays whose first `n_out` axes are outputs and the rest are contracted
    (parameter axes): mean over traced axes, diagonal over diagonal axes."""
    if any(a.shape[i] != b.shape[i] for i in tr + dg):
        raise InputError(f'f(x1) and f(x2) must agree on trace_axes and diagonal_axes, got '
                         f'shapes {a.shape[:n_out]} and {b.shape[:n_out]}')
    s1, s2, so = _spec(n_out, tr, dg, a.ndim - n_out)
    size = math.prod(a.shape[i] for i in tr)
    return jnp.einsum(f'{s1},{s2}->{so}', a, b) / size


def _reduce_full(k, n_out: int, tr, dg):
    """(trace, diagonal) of a full kernel with axes f(x1).shape + f(x2).shape."""
    s1, s2, so = _spec(n_out, tr, dg)
    size = math.prod(k.shape[i] for i in tr)
    return jnp.einsum(f'{s1}{s2}->{so}', k) / size


# ---------------------------------------------------------------------------------------------
# keyword arguments and vmap axes


def _same(x1, x2):
    l1, l2 = _tree.tree_leaves(x1), _tree.tree_leaves(x2)
    if len(l1) != len(l2) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(l1, l2)):
        return jnp.asarray(False)
    return jnp.all(jnp.asarray([jnp.all(a == b) for a, b in zip(l1, l2)]))


def _reads_nt_x2(fn):
    """`fn(x1, x2, ...)` that reads NT's "x2 = x1" for a network with several inputs, a tree
    of Nones such as ``[(None, None), None]``, as x2 = None."""
    @functools.wraps(fn)
    def wrapped(x1, x2=None, *args, **kwargs):
        if x2 is not None and not _tree.tree_leaves(x2):
            x2 = None
        return fn(x1, x2, *args, **kwargs)
    return wrapped


def _split_kwargs(kwargs: dict, x1, x2):
    """Per-input keyword arguments, as in NT: a pair ``(v1, v2)`` is split between the two calls;
    ``rng`` becomes two keys, equal when the inputs are equal; other values are shared."""
    kw1, kw2 = {}, {}
    for k, v in kwargs.items():
        if k == 'rng' and v is not None and x2 is not None and not isinstance(v, tuple):
            kw1[k] = v
            kw2[k] = jax.lax.cond(_same(x1, x2), lambda key: key,
                                  lambda key: jax.random.fold_in(key, 1), v)
        elif isinstance(v, tuple) and len(v) == 2:
            kw1[k], kw2[k] = v
        else:
            kw1[k] = kw2[k] = v
    return kw1, kw2


def per_example_pairs(kwargs: dict, n1: int, n2: int) -> dict:
    """The keyword arguments that are pairs ``(v1, v2)`` of per-example arrays, one row per
    example of x1 (``n1``) and of x2 (``n2``; ``v2`` may be None when x2 is x1), as NT's
    ``pattern=(p1, p2)``: what is cut into blocks along with x1 and x2.  ``rng`` never is."""
    def rows(v, n):
        return isinstance(v, (np.ndarray, jax.Array)) and v.ndim >= 1 and v.shape[0] == n
    return {k: v for k, v in kwargs.items()
            if k != 'rng' and isinstance(v, tuple) and len(v) == 2
            and rows(v[0], n1) and (rows(v[1], n2) or (v[1] is None and n1 == n2))}


def slice_pairs(kwargs: dict, n1: int, n2: int, rows: slice, cols: slice) -> dict:
    """`kwargs` with its per-example pairs (`per_example_pairs`) cut to x1[rows], x2[cols]."""
    pairs = per_example_pairs(kwargs, n1, n2)
    return dict(kwargs, **{k: (v1[rows], None if v2 is None else v2[cols])
                           for k, (v1, v2) in pairs.items()})


def _vmap_triple(vmap_axes, kwargs, fx):
    """NT's `vmap_axes` as (in_axes, out_axes, kwargs_axes), with out_axes a tree shaped like
    the outputs `fx` (shape structs) holding each output's batch axis counted from the front
    (NT allows negative ones; the Jacobians' parameter axes come after the output axes)."""
    if vmap_axes is None:
        return None
    if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
        in_axes, out_axes, kw_axes = vmap_axes
    else:
        in_axes, out_axes, kw_axes = vmap_axes, vmap_axes, {}
    kw_axes = {k: v for k, v in dict(kw_axes or {}).items() if k in kwargs}
    out_axes = _tree.tree_map(lambda a, o: a if a is None else int(a) % len(o.shape),
                              _leafwise(out_axes, fx), fx)
    return in_axes, out_axes, kw_axes


def _leafwise(axes, tree):
    """Broadcast an int (or None) axis spec to a pytree, leaving a pytree spec as is."""
    if axes is None or isinstance(axes, int):
        return _tree.tree_map(lambda _: axes, tree)
    return axes


def _expand(tree, axes):
    if axes is None:
        return tree
    return _tree.tree_map(lambda x, a: x if a is None else jnp.expand_dims(x, a), tree,
                          _leafwise(axes, tree))


def _squeeze(tree, axes):
    if axes is None:
        return tree
    return _tree.tree_map(lambda x, a: x if a is None else jnp.squeeze(x, a), tree,
                          _leafwise(axes, tree))


def _per_example(f, x_axis, fx_axis, x, kw):
    """``p -> f(p, x[i:i+1])`` with the singleton batch axis squeezed from the outputs."""
    def g(p):
        return _squeeze(f(p, _expand(x, x_axis), **_expand_kw(kw)), fx_axis)
    return g


def _expand_kw(kw):
    return {k: (_expand(v, a) if a is not None else v) for k, (v, a) in kw.items()}


# ---------------------------------------------------------------------------------------------
# NNGP


def empirical_nngp_fn(f, trace_axes=(-1,), diagonal_axes=()):
    """Single-sample empirical NNGP ``f(x1) f(x2)^T / C`` of ``f`` at fixed parameters (the
    outputs' second moment, whose average over initialisations is the NNGP; Lee et al. 2018).

    Returns ``nngp_fn(x1, x2, params, **apply_fn_kwargs)``; ``x2=None`` means ``x2 = x1``.
    """
    def nngp_fn(x1, x2, params, **apply_fn_kwargs):
        """Empirical NNGP between `x1` and `x2` (None: x1) at `params`."""
        kw1, kw2 = _split_kwargs(apply_fn_kwargs, x1, x2)
        out1 = f(params, x1, **kw1)
        out2 = out1 if x2 is None else f(params, x2, **kw2)

        def one(a, b):
            tr, dg = _axes(a.ndim, trace_axes, diagonal_axes)
            if b.ndim != a.ndim:
                raise InputError(f'f(x1) and f(x2) have different ranks: {a.shape}, {b.shape}')
            return _contract(a, b, a.ndim, tr, dg)

        return _tree.tree_map(one, out1, out2)

    return _reads_nt_x2(nngp_fn)


# ---------------------------------------------------------------------------------------------
# NTK


def _jacobian_contraction(f, trace_axes, diagonal_axes, vmap_axes, fwd):
    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        kw1, kw2 = _split_kwargs(apply_fn_kwargs, x1, x2)
        fx1 = jax.eval_shape(lambda p: f(p, x1, **kw1), params)
        n_params = sum(math.prod(p.shape) for p in _tree.tree_leaves(params))
        n_out = max(math.prod(o.shape) for o in _tree.tree_leaves(fx1))
        use_fwd = fwd if fwd is not None else n_params < n_out
        jac = jax.jacfwd if use_fwd else jax.jacrev
        triple = _vmap_triple(vmap_axes, apply_fn_kwargs, fx1)

        def jacobian(x, kw):
            if triple is None:
                return jac(lambda p: f(p, x, **kw))(params)
            in_axes, out_axes, kw_axes = triple
            out_axes = _leafwise(out_axes, fx1)
            names = sorted(kw)

            def single(xi, *vals):
                kwi = {k: (v, kw_axes.get(k)) for k, v in zip(names, vals)}
                return jac(_per_example(f, in_axes, out_axes, xi, kwi))(params)

            jout = _tree.tree_map(lambda a, o: _tree.tree_map(lambda _: a, params),
                                  out_axes, fx1)
            return jax.vmap(single, in_axes=(in_axes,) + tuple(kw_axes.get(k) for k in names),
                            out_axes=jout)(x, *(kw[k] for k in names))

        j1 = jacobian(x1, kw1)
        j2 = j1 if x2 is None else jacobian(x2, kw2)
        fx2 = fx1 if x2 is None else jax.eval_shape(lambda p: f(p, x2, **kw2), params)

        leaves1, tdef = _tree.tree_flatten(fx1)
        leaves2 = _tree.tree_leaves(fx2)
        js1 = tdef.flatten_up_to(j1)
        js2 = js1 if x2 is None else tdef.flatten_up_to(j2)
        out = []
        for o1, o2, ja, jb in zip(leaves1, leaves2, js1, js2):
            if o1.ndim != o2.ndim:
                raise InputError(f'f(x1) and f(x2) have different ranks: {o1.shape}, {o2.shape}')
            tr, dg = _axes(o1.ndim, trace_axes, diagonal_axes)
            terms = [_contract(a, b, o1.ndim, tr, dg)
                     for a, b in zip(_tree.tree_leaves(ja), _tree.tree_leaves(jb))]
            out.append(sum(terms[1:], terms[0]))
        return tdef.unflatten(out)

    return ntk_fn


def _vector_products(f, trace_axes, diagonal_axes, vmap_axes):
    def block(fa, fb, params, i):
        """Full NTK block of output leaf i, axes fa(params)[i].shape + fb(params)[i].shape:
        each column is J_a (J_b^T e), a VJP of fb followed by a JVP of fa."""
        out_b, vjp_b = jax.vjp(fb, params)
        leaves_b, tdef = _tree.tree_flatten(out_b)
        target = leaves_b[i]

        def column(e):
            cot = [jnp.zeros_like(x) for x in leaves_b]
            cot[i] = e.reshape(target.shape)
            (tangent,) = vjp_b(tdef.unflatten(cot))
            return _tree.tree_leaves(jax.jvp(fa, (params,), (tangent,))[1])[i]

        eye = jnp.eye(target.size, dtype=target.dtype)
        cols = jax.vmap(column)(eye)                   # (size_b, *shape_a)
        shape_a = cols.shape[1:]
        cols = cols.reshape((target.size,) + shape_a)
        return jnp.moveaxis(cols, 0, -1).reshape(shape_a + target.shape)

    def full(x1, x2, params, kw1, kw2, i, same):
        f1 = lambda p: f(p, x1, **kw1)  # noqa: E731
        f2 = f1 if same else (lambda p: f(p, x2, **kw2))
        n1 = _tree.tree_leaves(jax.eval_shape(f1, params))[i].size
        n2 = _tree.tree_leaves(jax.eval_shape(f2, params))[i].size
        if n1 < n2:     # put the basis on the smaller side, then swap the two halves back
            k = block(f2, f1, params, i)
            m = _tree.tree_leaves(jax.eval_shape(f2, params))[i].ndim
            return jnp.moveaxis(k, tuple(range(m)), tuple(range(k.ndim - m, k.ndim)))
        return block(f1, f2, params, i)

    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        kw1, kw2 = _split_kwargs(apply_fn_kwargs, x1, x2)
        same = x2 is None
        x2_ = x1 if same else x2
        fx1 = jax.eval_shape(lambda p: f(p, x1, **kw1), params)
        leaves1, tdef = _tree.tree_flatten(fx1)
        triple = _vmap_triple(vmap_axes, apply_fn_kwargs, fx1)
        out = []
        for i, o1 in enumerate(leaves1):
            tr, dg = _axes(o1.ndim, trace_axes, diagonal_axes)
            if triple is None:
                k = full(x1, x2_, params, kw1, kw2, i, same)
            else:
                k = _vmapped_full(f, triple, fx1, x1, x2_, params, kw1, kw2, i, full)
            out.append(_reduce_full(k, o1.ndim, tr, dg))
        return tdef.unflatten(out)

    return ntk_fn


def _vmapped_full(f, triple, fx1, x1, x2, params, kw1, kw2, i, full):
    """Full NTK block built from per-example-pair blocks (double vmap over the batch axes)."""
    in_axes, out_axes, kw_axes = triple
    out_ax = _tree.tree_leaves(_leafwise(out_axes, fx1))[i]
    names = sorted(kw1)
    n = len(names)

    def pair(xa, xb, *vals):
        va, vb = vals[:n], vals[n:]
        ka = {k: _expand(v, kw_axes[k]) if kw_axes.get(k) is not None else v
              for k, v in zip(names, va)}
        kb = {k: _expand(v, kw_axes[k]) if kw_axes.get(k) is not None else v
              for k, v in zip(names, vb)}
        k = full(_expand(xa, in_axes), _expand(xb, in_axes), params, ka, kb, i, False)
        o = k.ndim // 2          # squeeze the singleton batch axes of both halves
        return jnp.squeeze(k, (out_ax, o + out_ax))

    kw_in = tuple(kw_axes.get(k) for k in names)
    nd1 = _tree.tree_leaves(fx1)[i].ndim - 1     # rank of one example's output
    inner = jax.vmap(pair, in_axes=(in_axes, None) + kw_in + (None,) * n, out_axes=out_ax)
    outer = jax.vmap(inner, in_axes=(None, in_axes) + (None,) * n + kw_in,
                     out_axes=nd1 + 1 + out_ax)
    return outer(x1, x2, *(kw1[k] for k in names), *(kw2[k] for k in names))


# ---------------------------------------------------------------------------------------------
# structured derivatives (rules in `structured.py`)


def _partition(tree):
    """(array leaves, rebuild) of a pytree: `rebuild(arrays)` puts the other leaves back."""
    leaves, tdef = _tree.tree_flatten(tree)
    is_arr = [hasattr(v, 'shape') and hasattr(v, 'dtype') for v in leaves]
    arrays = [v for v, a in zip(leaves, is_arr) if a]

    def rebuild(arrs):
        it = iter(arrs)
        return tdef.unflatten([next(it) if a else v for v, a in zip(leaves, is_arr)])

    return arrays, rebuild


def _program(h, leaves, arrays):
    """The flattened program of ``h(leaves, arrays)`` and its structured plan."""
    spec = _tree.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                          (list(leaves), list(arrays)))
    prog = structured.flatten(jax.make_jaxpr(h)(*spec))
    return prog, structured.analyse(prog, len(leaves))


def _structured_side(f, params, x, kw, triple, fx):
    """Factors of one side (see `structured.side_factors`), the program and its plan.  With
    `vmap_axes`, per example: u gets the example axis first, g and J at the output's batch
    axis."""
    leaves, ptdef = _tree.tree_flatten(params)
    held = {}
    if triple is None:
        arrays, rebuild = _partition((x, kw))

        def h(lv, arr):
            xx, kk = rebuild(arr)
            return _tree.tree_leaves(f(ptdef.unflatten(lv), xx, **kk))

        prog, plan = _program(h, leaves, arrays)
        return structured.side_factors(prog, plan, leaves, arrays), prog, plan

    in_axes, out_axes, kw_axes = triple
    out_tree = _leafwise(out_axes, fx)
    out_ax = _tree.tree_leaves(out_tree)
    names = sorted(kw)

    def single(xi, *vals):
        kwi = {k: (v, kw_axes.get(k)) for k, v in zip(names, vals)}
        arrays, rebuild = _partition((xi, kwi))

        def h(lv, arr):
            xx, kk = rebuild(arr)
            return _tree.tree_leaves(_per_example(f, in_axes, out_tree, xx, kk)(
                ptdef.unflatten(lv)))

        held['prog'], held['plan'] = _program(h, leaves, arrays)
        return structured.side_factors(held['prog'], held['plan'], leaves, arrays)

    facs = jax.vmap(single, in_axes=(in_axes,) + tuple(kw_axes.get(k) for k in names))(
        x, *(kw[k] for k in names))
    lead = {1: (0,), 2: (1,), 4: (1, 3)}      # the factors with output axes (g, r, J)
    moved = [[tuple(jnp.moveaxis(a, 0, ax) if k in lead[len(fa)] else a
                    for k, a in enumerate(fa)) for fa in per_out]
             for per_out, ax in zip(facs, out_ax)]
    return moved, held['prog'], held['plan']


def _structured_terms(f, trace_axes, diagonal_axes, vmap_axes, x1, x2, params, kwargs):
    """Per output leaf, the list of (einsum spec, operands) whose sum is the NTK, with the
    program and plan (shared by `ntk_fn` and `explain`)."""
    kw1, kw2 = _split_kwargs(kwargs, x1, x2)
    fx1 = jax.eval_shape(lambda p: f(p, x1, **kw1), params)
    triple = _vmap_triple(vmap_axes, kwargs, fx1)
    fx2 = fx1 if x2 is None else jax.eval_shape(lambda p: f(p, x2, **kw2), params)
    f1, prog, plan = _structured_side(f, params, x1, kw1, triple, fx1)
    if x2 is None:
        f2 = f1
    else:
        f2, _, plan2 = _structured_side(f, params, x2, kw2, triple, fx2)
        if plan2.key() != plan.key():
            raise InputError('f follows different structured rules on x1 and x2; use '
                             'implementation=JACOBIAN_CONTRACTION for it')
    out_ax = (None if triple is None
              else _tree.tree_leaves(_leafwise(triple[1], fx1)))
    leaves1, tdef = _tree.tree_flatten(fx1)
    leaves2 = _tree.tree_leaves(fx2)
    kinds = [p for p in plan.points] + [None] * len(plan.fallback)
    out = []
    for i, (o1, o2) in enumerate(zip(leaves1, leaves2)):
        if o1.ndim != o2.ndim:
            raise InputError(f'f(x1) and f(x2) have different ranks: {o1.shape}, {o2.shape}')
        tr, dg = _axes(o1.ndim, trace_axes, diagonal_axes)
        if any(o1.shape[a] != o2.shape[a] for a in tr + dg):
            raise InputError(f'f(x1) and f(x2) must agree on trace_axes and diagonal_axes, '
                             f'got shapes {o1.shape} and {o2.shape}')
        size = math.prod(o1.shape[a] for a in tr)
        s1, s2, so = _spec(o1.ndim, tr, dg)
        terms = []
        for point, fa, fb in zip(kinds, f1[i], f2[i]):
            if len(fa) in (2, 4):
                u_lab, y_lab = structured.gram_labels(prog.eqns[point.index], point.slot)
                b1 = '' if out_ax is None else s1[out_ax[i]]
                b2 = '' if out_ax is None else s2[out_ax[i]]
                letters = _LETTERS[2 * o1.ndim:]
                spec = structured.gram_spec(u_lab, y_lab, s1, s2, so, b1, b2, iter(letters))
                ops = (fa[0], fa[1], fb[0], fb[1])
                if len(fa) == 4:        # channel-factored: keep it when it costs fewer FLOPs
                    spec6 = structured.factored_spec(u_lab, y_lab, s1, s2, so, b1, b2,
                                                     iter(letters))
                    ops6 = (fa[0], fa[2], fa[3], fb[0], fb[2], fb[3])
                    cost = [structured.choose_order(sp, [o.shape for o in op])[2]
                            for sp, op in ((spec, ops), (spec6, ops6))]
                    if cost[1] < cost[0]:
                        spec, ops = spec6, ops6
                terms.append((point, spec, ops))
            else:
                a1, a2, ao = _spec(o1.ndim, tr, dg, fa[0].ndim - o1.ndim)
                terms.append((point, f'{a1},{a2}->{ao}', (fa[0], fb[0])))
        out.append((terms, size))
    return tdef, out, prog, plan


def _structured(f, trace_axes, diagonal_axes, vmap_axes):
    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        tdef, out, _, _ = _structured_terms(f, trace_axes, diagonal_axes, vmap_axes, x1, x2,
                                            params, apply_fn_kwargs)
        kernels = []
        for terms, size in out:
            parts = [structured.contract(spec, ops, structured.choose_order(
                         spec, [o.shape for o in ops])[1]) if len(ops) in (4, 6)
                     else jnp.einsum(spec, *ops) for _, spec, ops in terms]
            kernels.append(sum(parts[1:], parts[0]) / size)
        return tdef.unflatten(kernels)

    def explain(x1, x2, params, **apply_fn_kwargs) -> str:
        """The structured program as a table: per parameter, the equation that consumes it,
        the contraction used, and its FLOPs and bytes (opt_einsum's cheapest order)."""
        held = {}

        def shapes(x1, x2, params):
            tdef, out, prog, plan = _structured_terms(f, trace_axes, diagonal_axes, vmap_axes,
                                                      x1, x2, params, apply_fn_kwargs)
            held.update(prog=prog, plan=plan)
            held['terms'] = [[(p, spec) for p, spec, _ in terms] for terms, _ in out]
            return [[ops for _, _, ops in terms] for terms, _ in out]

        ops = jax.eval_shape(shapes, x1, x2, params)
        names = [_tree.keystr(k) for k, _ in _tree.tree_flatten_with_path(params)[0]]
        return structured.explain(held['prog'], held['plan'], names, held['terms'], ops)

    ntk_fn.explain = explain
    return ntk_fn


def _flops(fn, *args, **kwargs) -> float:
    """FLOPs XLA's cost analysis assigns to fn(*args, **kwargs) (inf when unavailable)."""
    arrays, rest = {}, {}
    for k, v in kwargs.items():
        (arrays if all(hasattr(x, 'shape') for x in _tree.tree_leaves(v)) else rest)[k] = v
    spec = _tree.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
                          (args, arrays))
    try:
        compiled = jax.jit(lambda a, kw: fn(*a, **kw, **rest)).lower(*spec).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get('flops', np.inf))
    except Exception:  # noqa: BLE001 - no cost model: fall back to the default implementation
        return float('inf')


def _auto(f, trace_axes, diagonal_axes, vmap_axes, fwd):
    impls = {NtkImplementation.JACOBIAN_CONTRACTION:
             _jacobian_contraction(f, trace_axes, diagonal_axes, vmap_axes, fwd),
             NtkImplementation.NTK_VECTOR_PRODUCTS:
             _vector_products(f, trace_axes, diagonal_axes, vmap_axes),
             NtkImplementation.STRUCTURED_DERIVATIVES:
             _structured(f, trace_axes, diagonal_axes, vmap_axes)}
    chosen: dict = {}

    def ntk_fn(x1, x2, params, **apply_fn_kwargs):
        key = _tree.tree_map(lambda x: (jnp.shape(x), str(jnp.result_type(x)))
                             if hasattr(x, 'shape') else x,
                             (x1, x2, params, apply_fn_kwargs))
        key = str(key)
        if key not in chosen:
            cost = {i: _flops(fn, x1, x2, params, **apply_fn_kwargs) for i, fn in impls.items()}
            chosen[key] = min(cost, key=lambda i: (cost[i], i))
            _log.info('empirical_ntk_fn(implementation=AUTO) picked %s: XLA FLOPs %s',
                      chosen[key].name, ', '.join(f'{i.name} {c:.3g}' for i, c in cost.items()))
        return impls[chosen[key]](x1, x2, params, **apply_fn_kwargs)

    ntk_fn.chosen = chosen
    return ntk_fn


def _implementation(implementation) -> NtkImplementation:
    try:
        return NtkImplementation(int(implementation))
    except (ValueError, TypeError) as e:
        raise InputError(f'implementation={implementation!r} is not one of '
                         f'{[int(i) for i in NtkImplementation]} '
                         f'({", ".join(i.name for i in NtkImplementation)})') from e


def empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
                     implementation=DEFAULT_NTK_IMPLEMENTATION, _j_rules: bool = True,
                     _s_rules: bool = True, _fwd: bool | None = None):
    """Single-sample empirical NTK ``Σ_p ∂f(x1)/∂p ∂f(x2)/∂p`` of ``f`` at fixed parameters
    (Jacot et al. 2018), averaged over ``trace_axes``.

    ``vmap_axes`` (an int, or NT's triple ``(in_axes, out_axes, kwargs_axes)``) declares that
    examples along those axes do not interact, so Jacobians are computed per example.
    ``_fwd`` picks forward (True) or reverse (False) mode for the Jacobians of
    ``JACOBIAN_CONTRACTION`` (None: whichever is cheaper by size); ``_j_rules`` / ``_s_rules``
    are NT's switches for its structured-derivatives interpreter, accepted and unused.

    Returns ``ntk_fn(x1, x2, params, **apply_fn_kwargs)``; ``x2=None`` means ``x2 = x1``.
    """
    impl = _implementation(implementation)
    if impl == NtkImplementation.STRUCTURED_DERIVATIVES:
        return _reads_nt_x2(_structured(f, trace_axes, diagonal_axes, vmap_axes))
    if impl == NtkImplementation.NTK_VECTOR_PRODUCTS:
        return _reads_nt_x2(_vector_products(f, trace_axes, diagonal_axes, vmap_axes))
    if impl == NtkImplementation.AUTO:
        return _reads_nt_x2(_auto(f, trace_axes, diagonal_axes, vmap_axes, _fwd))
    return _reads_nt_x2(_jacobian_contraction(f, trace_axes, diagonal_axes, vmap_axes, _fwd))


def empirical_kernel_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
                        implementation=DEFAULT_NTK_IMPLEMENTATION, _j_rules: bool = True,
                        _s_rules: bool = True, _fwd: bool | None = None):
    """Single-sample empirical NNGP and / or NTK of ``f`` (see `empirical_nngp_fn`,
    `empirical_ntk_fn`).

    Returns ``kernel_fn(x1, x2, get, params, **apply_fn_kwargs)``: the array for a string
    ``get``, else a namedtuple ``EmpiricalKernel`` over ``get`` (``None``: ``('nngp', 'ntk')``);
    for pytree outputs, a pytree of those.
    """
    fns = {'nngp': empirical_nngp_fn(f, trace_axes, diagonal_axes),
           'ntk': empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation,
                                   _j_rules, _s_rules, _fwd)}

    def kernel_fn(x1, x2, get, params, **apply_fn_kwargs):
        """Empirical kernels `get` between `x1` and `x2` (None: x1) at `params`."""
        names, single = _get(get)
        out = {g: fns[g](x1, x2, params, **apply_fn_kwargs) for g in names}
        if single:
            return out[names[0]]
        typ = namedtuple('EmpiricalKernel', names)
        return _tree.tree_map(lambda *leaves: typ(*leaves), *(out[g] for g in names))

    return kernel_fn


def _get(get):
    """`get` as (names, single) for 'nngp' / 'ntk'."""
    if get is None:
        return ('nngp', 'ntk'), False
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    names = tuple(str(g).lower() for g in names)
    if not names or len(set(names)) != len(names) or any(g not in ('nngp', 'ntk')
                                                         for g in names):
        raise InputError(f"get={get!r} must be 'nngp', 'ntk', a tuple of them, or None")
    return names, single


def accepts_rng(fn) -> bool:
    """Whether ``fn`` takes an ``rng`` keyword (or ``**kwargs``); True when it cannot be told."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == 'rng' or p.kind == p.VAR_KEYWORD for p in params)


def empirical_ntk_vp_fn(f, x1, x2, params, **apply_fn_kwargs):
    """NT's NTK-vector product: a function v -> Θ(x1, x2)·v for cotangents v shaped like
    f(params, x2), without forming Θ: with J_i the Jacobian of f(·, x_i) at `params`,
    Θ v = J1 (J2ᵀ v), one vector-Jacobian product on x2 and one Jacobian-vector product on x1
    (Novak et al. 2022, "Fast finite width neural tangent kernel", sec. L).  x2 None: x1."""
    x2 = x1 if x2 is None else x2
    kw1, kw2 = _split_kwargs(apply_fn_kwargs, x1, x2)

    def ntk_vp(cotangents):
        _, vjp = jax.vjp(lambda p: f(p, x2, **kw2), params)
        (tangents,) = vjp(cotangents)
        return jax.jvp(lambda p: f(p, x1, **kw1), (params,), (tangents,))[1]

    ntk_vp.ntk_vp_inputs = dict(f=f, x1=x1, x2=x2, params=params, kwargs=apply_fn_kwargs)
    return ntk_vp
