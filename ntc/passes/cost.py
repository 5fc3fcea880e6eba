"""cost: FLOPs, bytes written and peak live bytes of every node, as sympy expressions in the
batch sizes N1 and N2 (spatial sizes are concrete).  Evaluated at concrete sizes, the peak is
the memory model the runtime uses to choose tile sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..ir.graph import Graph, Node
from ..ir.types import CovType, TensorType
from .options import Options
from .roll_loops import loops

N1, N2 = sympy.symbols('N1 N2', positive=True, integer=True)


@dataclass(frozen=True)
class NodeCost:
    flops: sympy.Expr
    bytes: sympy.Expr  # bytes of the covariances this node stores
    live: sympy.Expr  # bytes live while this node runs (its inputs still needed + its output)


def spatial_entries(t: TensorType, spatial: str | None) -> int:
    """Entries per pair of examples: 1 (NONE), S (DIAG) or S² (FULL)."""
    size = math.prod(t.spatial_shape) if t.spatial_axes else 1
    return {'NONE': 1, 'DIAG': size, 'FULL': size * size, None: 0}[spatial]


def stored_entries(node: Node, opts: Options) -> tuple[sympy.Expr, sympy.Expr]:
    """(cross entries, marginal entries) stored for a node's value."""
    t, cov = node.ttype, node.cov
    kernels = 2 if opts.want_ntk else 1
    if cov.batch == 'FULL':
        return kernels * (N1 + N2) ** 2 * spatial_entries(t, cov.spatial), sympy.Integer(0)
    cross = kernels * N1 * N2 * spatial_entries(t, cov.spatial)
    marg = (N1 + N2) * spatial_entries(t, cov.marginal) if cov.marginal is not None else 0
    return cross, sympy.sympify(marg)


def node_bytes(node: Node, opts: Options, itemsize: int) -> sympy.Expr:
    cross, marg = stored_entries(node, opts)
    return itemsize * (cross + marg)


def cost(graph: Graph, opts: Options, itemsize: int = 4) -> dict[int, NodeCost]:
    """Per-node cost table (an analysis: the graph is unchanged)."""
    order = graph.order()
    last_use = {}
    for nid in order:
        for src in graph.inputs(nid):
            last_use[src] = nid
    table, live = {}, {}
    memo: dict = {}  # (type, layout, FLOPs per entry) -> (flops, bytes): repeated layers share it
    for nid in order:
        node = graph.node(nid)
        ins = [graph.node(i) for i in graph.inputs(nid)]
        per_entry = node.op.entry_flops([n.ttype for n in ins], node.ttype)
        key = (node.ttype, node.cov, per_entry)
        if key not in memo:
            cross, marg = stored_entries(node, opts)
            memo[key] = (sympy.expand(per_entry * (cross + marg)),
                         sympy.expand(itemsize * (cross + marg)))
        flops, out_bytes = memo[key]
        live[nid] = out_bytes
        now = sum(live.values(), sympy.Integer(0))
        table[nid] = NodeCost(flops=flops, bytes=out_bytes, live=sympy.expand(now))
        for src in graph.inputs(nid):
            if last_use.get(src) == nid and src not in graph.outputs:
                live.pop(src, None)
    return table


#: the smallest pair footprint worth a loop over blocks of pairs: below it (DIAG or NONE spatial
#: layouts) one block's fusions are too small to amortise their launches
MIN_PAIR_BYTES = 64 * 1024

#: live covariance bytes of one block of example pairs.  Small enough that a block's layers run
#: in the last-level cache, large enough that each of XLA:CPU's loops (which it splits across
#: the cores) has work to spare over its start-up.  Measured on this 2-core CPU (2 MiB L2 per
#: core), 21-layer CNN + GAP, seconds per call by pairs per block (1.05 MB live per pair at
#: 16×16, 16.8 MB at 32×32): 16×16, 8 images: 4 → 0.221, 8 → 0.186, 16 → 0.178, 32 → 0.206,
#: all 64 → 0.294; 16×16, 4 images: 2 → 0.060, 8 → 0.046, all 16 → 0.043; 32×32, 2 images:
#: 1 → 0.169, 2 → 0.172, all 4 → 0.236.  (Blocks sized to one core's L2, the first choice, were
#: 20–30% slower: ~1000 small loops per call.)
BLOCK_BYTES = 24 * 2 ** 20

#: the fewest live covariance bytes worth a square block of their own when K(x, x) is split
#: into square blocks to compute only those on and above the diagonal (one `lax.map` trip
#: each): `cnn21_gap_16x16_n4` in 2 × 2 blocks of 4 pairs (4.2 MB) 0.035 s against 0.040
#: unsplit.  Pair by pair, a chunk is as large as a block allows, so this does not bound it;
#: it does bound a batch that fits one block, split for a given x2 equal to x1 at the cost of
#: a second compiled program (`ntc.lower.lower.evaluate_blocked`).
MIN_BLOCK_BYTES = 4 * 2 ** 20

#: the most nodes a plan may trace (a rolled loop's body counted once) for K(x, x) of a batch
#: that fits one block to be split anyway when x2 is given equal to x1: the run-time test
#: (`lax.cond`) then compiles the split and the whole batch, two programs.  Measured, 8 images
#: at 8×8, compile / steady call before → after: the 21-layer CNN + GAP (6 traced nodes)
#: 0.6–0.9 s / 0.018–0.033 s → 1.5–1.8 s / 0.017 s; the small WideResNet (20 traced nodes)
#: 2.2–2.7 s / 0.011–0.020 s → 4.3–4.8 s / 0.010 s
MAX_TWICE_COMPILED_NODES = 12


def pair_bytes(costs: dict[int, NodeCost]) -> int:
    """Bytes per pair of examples at the plan's peak: the largest N1·N2 coefficient of a node's
    live bytes (what one more pair adds to the working set)."""
    return max((int(sympy.Poly(c.live, N1, N2).coeff_monomial(N1 * N2))
                for c in costs.values()), default=0)


@dataclass(frozen=True)
class PairBlocks:
    """The plan's pair blocks: at most `most` pairs of examples per block (`BLOCK_BYTES`), at
    least `least` per square block of K(x, x) (`MIN_BLOCK_BYTES`), and `marginal_share`: the
    FLOPs of one example's marginals over those of one pair's cross kernels (what computing
    K(x, x) pair by pair, each pair with its own two marginals, costs on top of its pairs)."""

    most: int
    least: int
    marginal_share: float = 0.0
    split_whole: bool = True  # whether a batch that fits one block (≥ least pairs) is split
    # for x2 = x1 (`MAX_TWICE_COMPILED_NODES`)


def traced_nodes(graph: Graph) -> int:
    """Nodes the lowering traces: a rolled loop's body once (`ntc.passes.roll_loops`)."""
    return len(graph) - sum(len(lp.members) - len(lp.body) for lp in loops(graph))


def marginal_share(costs: dict[int, NodeCost]) -> float:
    """FLOPs per example (the N1 coefficient of the total, the marginals) over FLOPs per pair
    of examples (the N1·N2 coefficient, the cross kernels)."""
    total = sympy.Poly(sum((c.flops for c in costs.values()), sympy.Integer(0)), N1, N2)
    per_pair = total.coeff_monomial(N1 * N2)
    return float(total.coeff_monomial(N1) / per_pair) if per_pair else math.inf


def pair_block(graph: Graph, opts: Options, costs: dict[int, NodeCost],
               budget: int = BLOCK_BYTES) -> PairBlocks | None:
    """Pairs of examples per block such that a block's covariances fit in `budget` bytes
    (`BLOCK_BYTES`), so that all its layers run in cache (`ntc.lower.lower.evaluate_blocked`),
    the fewest a square block of K(x, x) should hold (`MIN_BLOCK_BYTES`), the marginals'
    share of the work (`marginal_share`) and whether a batch that fits one block is split for
    x2 equal to x1 (`MAX_TWICE_COMPILED_NODES`); None where blocking does not apply: joint
    (reference) layouts, plans that return marginals (a block does not own its examples'
    marginals), layers that select or concatenate examples, or pairs smaller than
    `MIN_PAIR_BYTES`."""
    if (opts.want_marginals or any(n.cov.batch == 'FULL' for n in graph.nodes())
            or graph.moving_examples() is not None):  # a block's examples must stay its own
        return None
    per_pair = pair_bytes(costs)
    if per_pair < MIN_PAIR_BYTES:
        return None
    return PairBlocks(most=max(1, budget // per_pair), least=-(-MIN_BLOCK_BYTES // per_pair),
                      marginal_share=marginal_share(costs),
                      split_whole=traced_nodes(graph) <= MAX_TWICE_COMPILED_NODES)


def covtype_bytes(t: TensorType, cov: CovType, n1: int, n2: int, itemsize: int = 4) -> int:
    """Concrete bytes of one stored kernel (nngp or ntk) of this type, for an n1×n2 tile."""
    return itemsize * n1 * n2 * spatial_entries(t, cov.spatial)
