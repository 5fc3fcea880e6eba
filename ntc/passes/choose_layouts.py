"""choose_layouts: a backward requirement analysis that picks each value's covariance layout.

Walking the DAG from the output back, every op declares what it needs of its input given what
its consumers need of its output (`Op.spatial_need`, `Op.marginal_need`):
- spatially local ops (Dense, Conv, nonlinearities) pass DIAG through; pooling, GlobalAvgPool
  and other position-mixing ops need FULL; Flatten needs DIAG; values without spatial axes are
  NONE;
- the marginals cov1/cov2 are kept only where a nonlinearity or normalisation reads them (or the
  caller asked for them);
- at a fan-out the strongest requirement among the consumers wins.
A layer that needs the covariances between every pair of examples (`Op.needs_joint_batch`,
NT's `diagonal_batch=False`) puts the whole graph in the reference plan's joint layout.
The readout (a final Dense without spatial axes) is marked as the block Σ of Σ ⊗ I_C.

The pass also decides where a covariance is materialised.  XLA fuses elementwise work into its
consumers; when the consumer is a stencil that reads each input entry several times, an
expensive nonlinearity (arccos, erf, ...) is recomputed once per read.  Materialising the
nonlinearity's FULL-layout output before a stencil measured ~20% faster on the 21-layer CNN with
global pooling (unrolled), and made no gain (or a small loss) in DIAG layouts, so only FULL ones
are materialised.  Lowering uses `optimization_barrier`, which XLA's CPU backend does not treat as
a fusion boundary; in rolled loops (`roll_loops`) the stored carry is what keeps the expensive
value from being recomputed, and the mark measures within noise there.  What does work is a
barrier on the stencil's padded copy of its input (`stores_padded_input`, decided here too).
"""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.op import max_spatial
from ..ir.types import CovType
from .options import Options


def requirements(g: Graph, opts: Options) -> tuple[dict, dict]:
    """Per node: the spatial layout its consumers need of its cross kernel, and of its
    marginals (None: marginals not needed)."""
    natural = {o: output_spatial(g, opts, o) for o in g.outputs}
    return propagate_needs(g, natural, natural if opts.want_marginals else {})


def propagate_needs(g: Graph, out_x: dict, out_m: dict) -> tuple[dict, dict]:
    """Backward from the outputs' needs (cross kernel, marginals; output id -> layout): each op
    maps the layout its consumers need to the one it needs of its inputs; at a FanOut the
    strongest need wins."""
    need_x, need_m = dict(out_x), dict(out_m)
    for nid in reversed(g.order()):
        node = g.node(nid)
        for src in g.inputs(nid):
            t = g.node(src).ttype
            need_x[src] = max_spatial(need_x.get(src), node.op.spatial_need(need_x[nid], t))
            need_m[src] = max_spatial(need_m.get(src), node.op.marginal_need(need_m.get(nid), t))
    return need_x, need_m


def output_spatial(g: Graph, opts: Options, nid: int) -> str:
    """The layout the network returns at output `nid`: FULL while spatial axes remain, except
    after an op whose output is naturally spatially diagonal (ConvLocal: NT returns
    (N1, N2, H, W)) or when only the diagonal is asked for (`opts.diagonal_spatial`)."""
    node = g.node(nid)
    if not node.ttype.spatial_axes:
        return 'NONE'
    return 'DIAG' if opts.diagonal_spatial else node.op.natural_output


def choose_layouts(graph: Graph, opts: Options) -> Graph:
    g = graph.copy()
    need_x, need_m = requirements(g, opts)
    # a layer needing the covariances between every pair of examples gets the joint layout
    joint = opts.reference or any(node.op.needs_joint_batch() for node in g.nodes())
    for node in g.nodes():
        t = node.ttype
        has_space = bool(t.spatial_axes)
        order = tuple(range(len(t.spatial_axes)))
        if joint:
            spatial = 'FULL' if has_space else 'NONE'
            if node.id in g.outputs:
                spatial = output_spatial(g, opts, node.id)
            cov = CovType(batch='FULL', spatial=spatial, marginal=None, axis_order=order)
        else:  # an unused input needs nothing: its diagonal is cheapest
            spatial = need_x.get(node.id, 'DIAG' if has_space else 'NONE')
            marginal = need_m.get(node.id)
            if opts.force_full and has_space:
                spatial = 'FULL'
                marginal = None if marginal is None else 'FULL'
            cov = CovType(batch='DIAG', spatial=spatial, marginal=marginal, axis_order=order)
        if node.id in g.outputs and node.op.readout and not has_space and not g.consumers(node.id):
            cov = cov.model_copy(update=dict(readout=t.channels))
        g.replace(node.id, cov=cov, materialize=should_materialize(g, node, cov))
    return g


EXPENSIVE_FLOPS = 10.0  # per entry: a transcendental function or more


def should_materialize(g: Graph, node, cov: CovType) -> bool:
    """Store this value before its consumers read it (see the module docstring)."""
    return (cov.spatial == 'FULL' and node.op.flops_per_entry >= EXPENSIVE_FLOPS
            and any(g.node(c).op.reads_neighbours() for c, _ in g.consumers(node.id)))


def stores_padded_input(g: Graph, node) -> bool:
    """Whether the stencil `node` reads a stored, padded copy of its input in every tap (see
    `ntc.covariance.stencil._stored`): the padded copy is then the one kernel that runs the
    producer's arithmetic (an arc-cosine), where the stencil's own kernel otherwise recomputes
    it for the tap that covers the unpadded input (the small WideResNet: 53 → 46 XLA kernels).
    Not when the stencil's output reaches a reduction of the spatial axes (GlobalAvgPool,
    Flatten) through pointwise layers only: that is a reduction fusion on XLA's CPU backend
    that takes no slices of its own, so each tap becomes a kernel of its own, and with the
    padded copy each of them would recompute the producer (the unpadded input is stored for
    the reduction's centre tap instead).  A stencil or a loop boundary (a stored carry) on the
    way ends the search."""
    if not node.op.reads_neighbours():
        return False
    todo = [node]
    while todo:
        n = todo.pop()
        consumers = [g.node(c) for c, _ in g.consumers(n.id)]
        if any(c.loop != n.loop for c in consumers):
            continue  # a loop's carry: stored
        for consumer in consumers:
            if consumer.cov.spatial == 'NONE':
                return False
            if not consumer.op.reads_neighbours():
                todo.append(consumer)
    return True
