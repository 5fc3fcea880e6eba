"""Lowering: turn a laid-out graph into one JAX function computing the output kernels.

`evaluate` walks the graph in topological order, adapts each input to the layout its consumer
needs, applies the op's kernel rule from `KERNEL_RULES`, and trims the result to the node's own
layout.  `lower` wraps it, with the output formatting, into one jitted function.  The same walk
on a reference plan (joint Gram matrix, FULL layouts) is the reference lowering.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import all_finite
from ..covariance import masking
from ..covariance.kernel import Kernel, adapt, batch_diag
from ..covariance.xp import JNP
from ..ir.graph import Graph, Node
from ..ir.registry import get_kernel_rule
from ..ir.types import CovType
from ..passes.choose_layouts import stores_padded_input
from ..passes.cost import PairBlocks
from ..passes.options import Options
from ..passes.roll_loops import Loop, loops


@dataclass(frozen=True)
class LowerCtx:
    """What a kernel rule may read besides its inputs."""

    graph: Graph
    xp: object
    want_ntk: bool
    inputs: dict | None = None  # extra kernel_fn inputs (e.g. Aggregate's `pattern`), a pytree
    x1_is_x2: bool = False
    masks: dict | None = None  # node id -> (mask1, mask2) position masks (`ntc.covariance.masking`)

    def extra(self, name: str, default=None):
        """The extra kernel_fn input `name` (see `ntc.plan.kernel_inputs`)."""
        return (self.inputs or {}).get(name, default)

    def in_types(self, node: Node):
        return [self.graph.node(i).ttype for i in self.graph.inputs(node.id)]

    def in_type(self, node: Node, slot: int = 0):
        return self.in_types(node)[slot]

    def stores_padded_input(self, node: Node) -> bool:
        """The plan's choice for stencil `node`: whether its taps all read a stored padded copy
        of its input (`ntc.passes.choose_layouts.stores_padded_input`)."""
        return not self.xp.symbolic and stores_padded_input(self.graph, node)


def needed_input(node: Node, producer: Node) -> CovType:
    """The layout `node` needs of the value it reads from `producer`."""
    have = producer.cov
    spatial = node.op.spatial_need(node.cov.spatial, producer.ttype)
    if have.batch == 'FULL':  # the joint Gram matrix carries its own marginals
        return CovType(batch='FULL', spatial=spatial, axis_order=have.axis_order)
    return CovType(batch='DIAG', spatial=spatial,
                   marginal=node.op.marginal_need(node.cov.marginal, producer.ttype),
                   axis_order=have.axis_order)


# ----------------------------------------------------------------------------- input kernel


def _canonical(x, t):
    """Move the batch axis first and the channel axis last; spatial axes keep tensor order."""
    return jnp.moveaxis(x, (t.batch, t.channel), (0, -1))


def _gram(a, b, ns: int, spatial: str, same_example: bool):
    """Σ_c a[i, s.., c] b[j, s'.., c] / C in the requested layout (a, b canonical, spatial axes
    already in storage order).  `same_example` pairs a[i] with b[i] only (marginals)."""
    letters = iter(string.ascii_lowercase[2:])
    sa = [next(letters) for _ in range(ns)]
    sb = sa if spatial == 'DIAG' else [next(letters) for _ in range(ns)]
    j = 'i' if same_example else 'j'
    if spatial == 'FULL':
        out = ''.join(x + y for x, y in zip(sa, sb))
    else:
        out = ''.join(sa)
    lhs = 'i' + ''.join(sa) + 'z'
    rhs = j + ''.join(sb) + 'z'
    res = ('i' if same_example else 'ij') + out
    return jnp.einsum(f'{lhs},{rhs}->{res}', a, b,
                      precision=jax.lax.Precision.HIGHEST) / a.shape[-1]


def input_kernel(node: Node, x1, x2) -> Kernel:
    """The covariance of the raw input: <x1, x2> / channels, per pair of positions."""
    t, cov = node.ttype, node.cov
    ns = len(t.spatial_axes)
    perm = (0,) + tuple(1 + i for i in cov.axis_order) + (ns + 1,)
    a = jnp.transpose(_canonical(x1, t), perm)
    b = None if x2 is None else jnp.transpose(_canonical(x2, t), perm)
    if cov.batch == 'FULL':
        joint = a if b is None else jnp.concatenate([a, b])
        return Kernel(nngp=_gram(joint, joint, ns, cov.spatial, False), layout=cov,
                      x1_is_x2=b is None, n1=a.shape[0])
    nngp = _gram(a, a if b is None else b, ns, cov.spatial, False)
    cov1 = cov2 = None
    if cov.marginal is not None:
        if b is None and cov.marginal == cov.spatial:
            # bitwise equal to nngp's diagonal, so that correlations there are exactly 1
            cov1 = batch_diag(nngp, ns)
        else:
            cov1 = _gram(a, a, ns, cov.marginal, True)
        cov2 = None if b is None else _gram(b, b, ns, cov.marginal, True)
    return Kernel(nngp=nngp, cov1=cov1, cov2=cov2, layout=cov, x1_is_x2=b is None)


# ----------------------------------------------------------------------------- the walk


def apply_node(ctx: LowerCtx, graph: Graph, node: Node, env: dict[int, Kernel]) -> Kernel:
    """One node's Kernel, in its own layout, from its inputs' Kernels in `env`."""
    ins = [adapt(env[s], needed_input(node, graph.node(s))) for s in graph.inputs(node.id)]
    k = adapt(get_kernel_rule(node)(ctx, node, *ins), node.cov)
    if ctx.x1_is_x2 and _one_example_full(k):
        k = k.replace(cov1=k.nngp[0])  # K(x, x) of one example is its own marginal
    if ctx.masks is not None:
        if node.id not in ctx.masks:
            ctx.masks[node.id] = masking.output_masks(graph, node, ctx.masks)
        k = masking.zero_masked(k, *ctx.masks[node.id])
    if node.materialize:
        k = jax.lax.optimization_barrier(k)
    return k


def _one_example_full(k: Kernel) -> bool:
    """Whether `k` is K(x, x) of a single example x whose marginal is kept in the cross
    kernel's own FULL spatial layout: cov1 is then nngp[0] exactly, and the marginal's own
    arithmetic (as much as the cross kernel's: 2× the work of a mirrored block's diagonal
    example at 32×32) is dead code for XLA to drop."""
    return (not k.joint and k.cov1 is not None and k.layout.spatial == 'FULL'
            and k.layout.marginal == 'FULL' and k.nngp.shape[:2] == (1, 1)
            and k.cov1.shape == k.nngp.shape[1:])


def run_loop(ctx: LowerCtx, graph: Graph, loop: Loop, carry: Kernel) -> Kernel:
    """The Kernel leaving a rolled loop: `loop.n` iterations of its body as one `lax.scan`
    (the body is traced and compiled once; `roll_loops` guarantees one carry layout)."""
    if ctx.want_ntk and carry.ntk is None:
        carry = carry.replace(ntk=jnp.zeros_like(carry.nngp))  # one carry structure throughout
    body = [graph.node(nid) for nid in loop.body]

    def step(k, _):
        env = {loop.entry: k}
        for node in body:
            env[node.id] = apply_node(ctx, graph, node, env)
        return env[loop.body[-1]], None

    out, _ = jax.lax.scan(step, carry, None, length=loop.n)
    return out


def evaluate(graph: Graph, opts: Options, x1, x2, inputs: dict | None = None,
             watch=None) -> list[Kernel]:
    """The output nodes' Kernels (each in its node's layout) for inputs x1, x2 (x2 None: x1);
    with several input nodes, x1 and x2 are sequences of arrays, one per input node in order.
    x1 may also be a `Kernel` that `kernel_fn` returned (NT's composition; x2 None).
    `inputs` holds extra kernel_fn inputs such as Aggregate's `pattern`.  Rolled loops run as
    scans, except under masking (whose per-node masks are built by the unrolled walk) or with
    `watch(ctx, node, env)`, called after each node's Kernel `env[node.id]` is computed (in
    execution order, its inputs still in `env`)."""
    mask_constant = (inputs or {}).get('mask_constant')
    masks = None if mask_constant is None else {}
    ctx = LowerCtx(graph=graph, xp=JNP, want_ntk=opts.want_ntk, inputs=inputs,
                   x1_is_x2=_given_x1_is_x2(x1, x2),
                   masks=masks)
    env: dict[int, Kernel] = {}
    given1, given2 = _per_input(graph, x1), _per_input(graph, x2)
    uses = {nid: len(graph.consumers(nid)) for nid in graph.order()}
    unrolled = masks is not None or watch is not None
    starts = {} if unrolled else {lp.body[0]: lp for lp in loops(graph)}
    inside = {nid for lp in starts.values() for nid in lp.members}

    def release(srcs):
        for s in srcs:
            uses[s] -= 1
            if uses[s] == 0 and s not in graph.outputs:
                del env[s]

    for node in graph.nodes():
        if node.id in starts:
            lp = starts[node.id]
            env[lp.exit] = run_loop(ctx, graph, lp, env[lp.entry])
            release([lp.entry] * sum(1 for c, _ in graph.consumers(lp.entry) if c in lp.members))
            continue
        if node.id in inside:
            continue
        if node.op.arity == 0:
            if not uses[node.id] and node.id not in graph.outputs:
                continue  # an input the outputs do not read
            a, b = given1[node.id], given2[node.id]
            if masks is not None:
                a, b, masks[node.id] = masking.mask_inputs(node.ttype, a, b, mask_constant)
            k = a.stored_as(node.cov) if isinstance(a, Kernel) else input_kernel(node, a, b)
            if node.materialize:
                k = jax.lax.optimization_barrier(k)
            env[node.id] = k
        else:
            env[node.id] = apply_node(ctx, graph, node, env)
        if watch is not None:
            watch(ctx, node, env)
        release(graph.inputs(node.id))
    return [env[o] for o in graph.outputs]


def _given_x1_is_x2(x1, x2) -> bool:
    """Whether x1 is x2: x2 None, or, for Kernel inputs (one, or one per input), their flag."""
    first = x1[0] if isinstance(x1, (tuple, list)) and x1 else x1
    return first.x1_is_x2 if isinstance(first, Kernel) else x2 is None


def _per_input(graph: Graph, x) -> dict:
    """Input node id -> its array: `x` itself for one input, else x[i] for the i-th input node
    (x None: None for each)."""
    nodes = graph.input_nodes()
    if x is None:
        return dict.fromkeys(nodes)
    if len(nodes) == 1 and not isinstance(x, (tuple, list)):
        return {nodes[0]: x}
    return dict(zip(nodes, x, strict=True))


def first_nonfinite(graph: Graph, opts: Options, x1, x2, inputs: dict | None = None):
    """(path, op kind) of the first node in execution order whose kernel has a NaN or Inf for
    these concrete inputs, or None.  Runs the walk eagerly, node by node (slow: for errors);
    a layer of a repeat is named with its iteration by its path (``repeat[i]``)."""
    class Found(Exception):
        pass

    def watch(ctx, node, env):
        if _finite(env[node.id]):
            return
        raise Found(node.path or node.op.kind, node.op.kind)

    try:
        evaluate(graph, opts, x1, x2, inputs, watch=watch)
    except Found as found:
        return found.args
    return None


def _finite(k: Kernel) -> bool:
    return all_finite([a for a in (k.nngp, k.ntk, k.cov1, k.cov2) if a is not None])


# ----------------------------------------------------------------------------- output


def to_user(k: Kernel, opts: Options) -> dict:
    """The requested kernels in neural_tangents' format: cross kernels (N1, N2, s1, s1', ...),
    marginals (N, s1, s1', ...).  The plan ends in the tensor's own spatial order."""
    assert list(k.layout.axis_order) == sorted(k.layout.axis_order)
    if k.joint:
        n1 = k.n1
        nngp, ntk = k.nngp, k.ntk
        cross = (lambda x: x) if k.x1_is_x2 else (lambda x: x[:n1, n1:])
        out = dict(nngp=cross(nngp), ntk=None if ntk is None else cross(ntk))
        diag = batch_diag(nngp, k.n_spatial)
        out['cov1'] = diag[:n1]
        out['cov2'] = None if k.x1_is_x2 else diag[n1:]
    else:
        out = dict(nngp=k.nngp, ntk=k.ntk, cov1=k.cov1, cov2=k.cov2)
    if out['ntk'] is None and opts.want_ntk:
        out['ntk'] = jnp.zeros_like(out['nngp'])
    res = {}
    for name in opts.get:
        x = out[name]
        if name == 'cov2' and x is None:
            x = out['cov1']
        res[name] = x
    return res


# ----------------------------------------------------------------------------- pair blocks


def _divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of n that is at most `limit` (at least 1)."""
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(limit, 1))


def block_shape(n1: int, n2: int, pairs: int, square: bool) -> tuple[int, int]:
    """(b1, b2): examples of x1 and x2 per block, b1·b2 ≤ `pairs`, dividing n1 and n2
    (b1 = b2 when `square`: the diagonal blocks of x2 = None).  Otherwise the most pairs, and
    of those, b1 = b2 where one is (x1's and x2's marginals then have one shape, so XLA
    compiles their fusions once), else the most examples of x2."""
    if square:
        b = _divisor_at_most(n1, math.isqrt(pairs))
        return b, b
    shapes = [(_divisor_at_most(n1, pairs // b2), b2)
              for b2 in range(1, min(n2, pairs) + 1) if n2 % b2 == 0]
    return max(shapes, key=lambda s: (s[0] * s[1], s[0] == s[1], s[1]))


def _split(x, batch: int, b: int):
    """(N, ...) with the batch axis at `batch` -> (N/b, ...) blocks of b examples each."""
    x = jnp.moveaxis(x, batch, 0)
    return x.reshape((x.shape[0] // b, b) + x.shape[1:])


def _join(blocks, nb1: int, nb2: int):
    """(nb1·nb2, b1, b2, ...) block results, row-major over (I, J) -> (N1, N2, ...)."""
    b1, b2, rest = blocks.shape[1], blocks.shape[2], blocks.shape[3:]
    x = blocks.reshape((nb1, nb2, b1, b2) + rest)
    x = jnp.moveaxis(x, 2, 1)
    return x.reshape((nb1 * b1, nb2 * b2) + rest)


@dataclass(frozen=True)
class SymmetricSplit:
    """How K(x, x) is split: pair by pair, `pairs` of its distinct pairs per chunk
    (`_symmetric_pairs`), or in square blocks of `side` examples (`_symmetric_blocks`)."""

    pairs: int = 0
    side: int = 0


def symmetric_split(n: int, blocks: PairBlocks) -> SymmetricSplit | None:
    """The cheapest way, in the plan's FLOPs, to compute K(x, x) of n examples (None: whole, in
    one piece).  With p a pair's cross kernels and m = `blocks.marginal_share`·p an example's
    marginals:
    - whole, where n² pairs fit one block: n²·p + n·m;
    - square blocks of b examples dividing n, nb = n/b of them per side (`least` ≤ b² ≤
      `most`: smaller blocks make too little work per `lax.map` trip): the nb diagonal blocks
      and the nb(nb - 1)/2 above it, nb·(b²p + b·m) + nb(nb - 1)/2·(b²p + 2b·m);
    - the n(n + 1)/2 distinct pairs, each with its two marginals, in chunks of ≤ `most`:
      n(n + 1)/2·(p + 2m).
    Ties go to the fewer pieces (whole, then square blocks)."""
    most, least, share = blocks.most, blocks.least, blocks.marginal_share
    options = []
    if n * n <= most:
        options.append((n * n + n * share, 0, None))
    for b in range(1, n):
        if n % b == 0 and least <= b * b <= most:
            nb = n // b
            work = nb * (b * b + b * share) + nb * (nb - 1) / 2 * (b * b + 2 * b * share)
            options.append((work, 1, SymmetricSplit(side=b)))
    distinct = n * (n + 1) // 2
    chunks = -(-distinct // most)
    options.append((distinct * (1 + 2 * share), 2,
                    SymmetricSplit(pairs=-(-distinct // chunks))))
    return min(options, key=lambda o: o[:2])[2]


def symmetric_text(n: int, blocks: PairBlocks) -> str:
    """`symmetric_split`'s choice for n examples, for `explain()`."""
    split = symmetric_split(n, blocks)
    if split is None:
        return 'whole, one block'
    if split.pairs:
        distinct = n * (n + 1) // 2
        chunks = -(-distinct // split.pairs)
        return f'{distinct} pairs in {chunks} chunk{"s" * (chunks > 1)} of {split.pairs}'
    nb = n // split.side
    return (f'{nb * (nb + 1) // 2} of {nb} × {nb} square blocks of {split.side} example'
            f'{"s" * (split.side > 1)} per side')


def evaluate_blocked(graph: Graph, opts: Options, x1, x2, blocks: PairBlocks) -> dict | None:
    """The user's kernels computed one block of ≤ `blocks.most` example pairs at a time (a
    `lax.map` over blocks), so that a block's covariances stay in cache across all layers; None
    when the inputs make one block.  Each block recomputes its examples' marginals.  When x2
    is None, or equal to x1 (tested at run time, `lax.cond`), only the distinct pairs are
    computed, in square blocks on and above the diagonal or pair by pair, whichever
    `symmetric_split` finds cheaper; the others are their mirror images.  A batch that fits
    one block is split for a given x2 only where the plan allows a second compiled program
    (`PairBlocks.split_whole`) and the batch holds at least `least` pairs."""
    batch = graph.node(graph.order()[0]).ttype.batch
    n1 = x1.shape[batch]
    split = symmetric_split(n1, blocks)
    if split is None:
        symmetric = None
    elif split.pairs:
        def symmetric(a, _):
            return _symmetric_pairs(graph, opts, a, split.pairs, batch)
    else:
        def symmetric(a, _):
            return _symmetric_blocks(graph, opts, a, split.side, batch)
    if x2 is None:
        return None if symmetric is None else symmetric(x1, None)
    n2 = x2.shape[batch]
    b1, b2 = block_shape(n1, n2, blocks.most, square=False)
    nb1, nb2 = n1 // b1, n2 // b2
    if nb1 * nb2 == 1 and (symmetric is None or not blocks.split_whole
                           or n1 * n2 < blocks.least):
        return None  # one block: splitting it for x2 = x1 compiles a second program

    def every_block(x1, x2):
        if nb1 * nb2 == 1:
            return to_user(evaluate(graph, opts, x1, x2)[0], opts)
        xs1, xs2 = _split(x1, batch, b1), _split(x2, batch, b2)
        rows, cols = (a.ravel() for a in np.meshgrid(np.arange(nb1), np.arange(nb2),
                                                      indexing='ij'))
        out = jax.lax.map(lambda ij: _block(graph, opts, xs1[ij[0]], xs2[ij[1]], batch)[0],
                          (rows, cols))
        return {name: _join(v, nb1, nb2) for name, v in out.items()}
    if symmetric is None or x1.shape != x2.shape or x1.dtype != x2.dtype:
        return every_block(x1, x2)
    return jax.lax.cond(jnp.array_equal(x1, x2), symmetric, every_block, x1, x2)


def _block(graph: Graph, opts: Options, a, b, batch: int, mirror: bool = False):
    """(the user's kernels of block a × b, and with `mirror` those of b × a): b None is a
    with itself."""
    a = jnp.moveaxis(a, 0, batch)
    b = None if b is None else jnp.moveaxis(b, 0, batch)
    k = evaluate(graph, opts, a, b)[0]
    out = to_user(k, opts)
    return out, ({name: _mirror(v, k.layout.spatial) for name, v in out.items()}
                 if mirror else None)


def _mirror(x, spatial: str):
    """K(b, a) from a cross kernel K(a, b) in the user's format (b1, b2, s1, s1', ...): the
    example axes swapped and, for FULL spatial covariances, each position pair (s, s')."""
    perm = [1, 0] + list(range(2, x.ndim))
    if spatial == 'FULL':
        for axis in range(2, x.ndim - 1, 2):
            perm[axis], perm[axis + 1] = axis + 1, axis
    return jnp.transpose(x, perm)


def _symmetric_blocks(graph: Graph, opts: Options, x, b: int, batch: int) -> dict:
    """K(x, x) in square blocks of b examples: the diagonal blocks as x-with-itself blocks, the
    blocks above the diagonal as cross blocks, and those below as their mirror images
    (K(x_j, x_i) is K(x_i, x_j) with the two examples' axes swapped), so nb(nb + 1)/2 of the
    nb² blocks are computed."""
    nb = x.shape[batch] // b
    xs = _split(x, batch, b)
    rows, cols = np.triu_indices(nb, 1)
    diag = jax.lax.map(lambda i: _block(graph, opts, xs[i], None, batch)[0], np.arange(nb))
    upper, lower_ = jax.lax.map(
        lambda ij: _block(graph, opts, xs[ij[0]], xs[ij[1]], batch, mirror=True), (rows, cols))
    joined = {}
    for name in diag:
        grid = jnp.zeros((nb, nb) + diag[name].shape[1:], diag[name].dtype)
        grid = grid.at[np.arange(nb), np.arange(nb)].set(diag[name])
        grid = grid.at[rows, cols].set(upper[name]).at[cols, rows].set(lower_[name])
        joined[name] = _join(grid.reshape((nb * nb,) + grid.shape[2:]), nb, nb)
    return joined


def _symmetric_pairs(graph: Graph, opts: Options, x, chunk: int, batch: int) -> dict:
    """K(x, x) from its n(n + 1)/2 distinct pairs (x_i, x_j), i ≤ j: each a cross block of one
    example by one, `jax.vmap`ped over a chunk of `chunk` pairs (one XLA program for the whole
    chunk, as large as a block), the chunks in a `lax.map`; K(x_j, x_i) is the mirror image of
    K(x_i, x_j).  The last chunk is filled up by repeating the last pair."""
    n = x.shape[batch]
    rows, cols = np.triu_indices(n)
    count = len(rows)
    chunks = -(-count // chunk)
    fill = np.full(chunks * chunk - count, n - 1)
    rows_c, cols_c = (np.concatenate([r, fill]).reshape(chunks, chunk) for r in (rows, cols))
    xs = _split(x, batch, 1)  # (n, 1, ...): one-example blocks
    pair = jax.vmap(lambda i, j: _block(graph, opts, xs[i], xs[j], batch, mirror=True))
    if chunks == 1:
        upper, lower_ = pair(rows_c[0], cols_c[0])
    else:
        upper, lower_ = jax.lax.map(lambda ij: pair(*ij), (rows_c, cols_c))

    lead = 3 if chunks == 1 else 4  # (chunks,) chunk, 1, 1 before the user's axes

    def listed(v):  # -> (count, the user's axes after the two example axes)
        return v.reshape((chunks * chunk,) + v.shape[lead:])[:count]
    joined = {}
    for name, v in upper.items():
        v, w = listed(v), listed(lower_[name])
        grid = jnp.zeros((n, n) + v.shape[1:], v.dtype)
        joined[name] = grid.at[cols, rows].set(w).at[rows, cols].set(v)
    return joined


def lower(graph: Graph, opts: Options, blocks: PairBlocks | None = None):
    """One jitted function (x1, x2, inputs=None) -> {name: array} for the names in `opts.get`
    (a list of such dicts, one per output, for a graph with several outputs); x1 and x2 are
    tuples of arrays for a graph with several inputs; `inputs` is a dict (a pytree) of extra
    kernel_fn inputs (see `ntc.plan.kernel_inputs`).  With `blocks` (the plan's choice, see
    `ntc.passes.cost.pair_block`), one input and one output, array inputs and no extra inputs,
    the kernels are computed in blocks of example pairs (`evaluate_blocked`)."""
    single = len(graph.outputs) == 1 and len(graph.input_nodes()) == 1

    def fn(x1, x2, inputs=None):
        if blocks is not None and single and not inputs and not isinstance(x1, Kernel):
            out = evaluate_blocked(graph, opts, x1, x2, blocks)
            if out is not None:
                return out
        outs = [to_user(k, opts) for k in evaluate(graph, opts, x1, x2, inputs)]
        return outs[0] if len(graph.outputs) == 1 else outs
    return jax.jit(fn)
