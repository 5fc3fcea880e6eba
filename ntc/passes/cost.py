"""cost: FLOPs, bytes written and peak live bytes of every node, as polynomials in the batch
sizes N1 and N2 (spatial sizes are concrete).  Evaluated at concrete sizes, the peak is the
memory model the runtime uses to choose tile sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.graph import Graph, Node
from ..ir.types import CovType, TensorType
from .options import Options
from .roll_loops import loops


class BatchPoly:
    """A polynomial in the batch sizes N1 and N2 with numeric coefficients, `coeffs` mapping
    exponents (p1, p2) to the coefficient of N1^p1·N2^p2.  Plain arithmetic: a plan's costs
    are sums and products of these; built as sympy expressions they made a plan's first build
    in a process take 0.1 s instead of 0.02 (sympy's own first-use work)."""

    __slots__ = ('coeffs',)

    def __init__(self, coeffs: dict[tuple[int, int], float] | None = None):
        self.coeffs = {k: v for k, v in (coeffs or {}).items() if v != 0}

    @staticmethod
    def of(x) -> BatchPoly:
        """`x` as a polynomial (a number is a constant)."""
        return x if isinstance(x, BatchPoly) else BatchPoly({(0, 0): x})

    def __add__(self, other) -> BatchPoly:
        out = dict(self.coeffs)
        for k, v in BatchPoly.of(other).coeffs.items():
            out[k] = out.get(k, 0) + v
        return BatchPoly(out)

    __radd__ = __add__

    def __sub__(self, other) -> BatchPoly:
        return self + (-1) * BatchPoly.of(other)

    def __mul__(self, other) -> BatchPoly:
        out: dict[tuple[int, int], float] = {}
        other = BatchPoly.of(other)
        for (a1, a2), u in self.coeffs.items():
            for (b1, b2), v in other.coeffs.items():
                out[a1 + b1, a2 + b2] = out.get((a1 + b1, a2 + b2), 0) + u * v
        return BatchPoly(out)

    __rmul__ = __mul__

    def __pow__(self, n: int) -> BatchPoly:
        out = BatchPoly.of(1)
        for _ in range(n):
            out = out * self
        return out

    def __eq__(self, other) -> bool:
        return self.coeffs == BatchPoly.of(other).coeffs

    def __hash__(self) -> int:
        return hash(frozenset(self.coeffs.items()))

    def at(self, n1: float, n2: float) -> float:
        """The value at N1 = n1, N2 = n2."""
        return float(sum(c * n1 ** p1 * n2 ** p2 for (p1, p2), c in self.coeffs.items()))

    def coeff(self, p1: int, p2: int) -> float:
        """The coefficient of N1^p1·N2^p2."""
        return self.coeffs.get((p1, p2), 0)

    def terms(self) -> list[tuple[tuple[int, int], float]]:
        """((p1, p2), coefficient) by descending exponents, N1 first (N1², N1·N2, N1, N2², ...)."""
        return sorted(self.coeffs.items(), reverse=True)

    def as_expr(self):
        """The same polynomial as a sympy expression in the symbols N1, N2 (positive integers),
        for symbolic work on a plan's costs."""
        import sympy  # only here: a plan never needs it

        n1, n2 = sympy.symbols('N1 N2', positive=True, integer=True)
        return sympy.Add(*(sympy.nsimplify(c) * n1 ** p1 * n2 ** p2
                           for (p1, p2), c in self.terms()))

    @staticmethod
    def monomial(p1: int, p2: int, power: str = '**') -> list[str]:
        """The factors of N1^p1·N2^p2 as text, e.g. ['N1**2', 'N2'] ([] for a constant)."""
        return ([f'N1{power}{p1}' if p1 > 1 else 'N1'] * (p1 > 0)
                + [f'N2{power}{p2}' if p2 > 1 else 'N2'] * (p2 > 0))

    def __str__(self) -> str:
        if not self.coeffs:
            return '0'
        parts = []
        for (p1, p2), c in self.terms():
            mono = self.monomial(p1, p2)
            num = int(c) if float(c).is_integer() else c
            parts.append('*'.join([str(num)] * (num != 1 or not mono) + mono))
        return ' + '.join(parts)

    __repr__ = __str__


N1, N2 = BatchPoly({(1, 0): 1}), BatchPoly({(0, 1): 1})


@dataclass(frozen=True)
class NodeCost:
    flops: BatchPoly
    bytes: BatchPoly  # bytes of the covariances this node stores
    live: BatchPoly  # bytes live while this node runs (its inputs still needed + its output)


def spatial_entries(t: TensorType, spatial: str | None) -> int:
    """Entries per pair of examples: 1 (NONE), S (DIAG) or S² (FULL)."""
    size = math.prod(t.spatial_shape) if t.spatial_axes else 1
    return {'NONE': 1, 'DIAG': size, 'FULL': size * size, None: 0}[spatial]


def stored_entries(node: Node, opts: Options) -> tuple[BatchPoly, BatchPoly]:
    """(cross entries, marginal entries) stored for a node's value."""
    t, cov = node.ttype, node.cov
    kernels = 2 if opts.want_ntk else 1
    if cov.batch == 'FULL':
        return kernels * (N1 + N2) ** 2 * spatial_entries(t, cov.spatial), BatchPoly()
    cross = kernels * N1 * N2 * spatial_entries(t, cov.spatial)
    marg = (N1 + N2) * spatial_entries(t, cov.marginal) if cov.marginal is not None else 0
    return cross, BatchPoly.of(marg)


def node_bytes(node: Node, opts: Options, itemsize: int) -> BatchPoly:
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
            memo[key] = (per_entry * (cross + marg), itemsize * (cross + marg))
        flops, out_bytes = memo[key]
        live[nid] = out_bytes
        table[nid] = NodeCost(flops=flops, bytes=out_bytes, live=sum(live.values(), BatchPoly()))
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
    return max((int(c.live.coeff(1, 1)) for c in costs.values()), default=0)


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
    total = sum((c.flops for c in costs.values()), BatchPoly())
    per_pair = total.coeff(1, 1)
    return float(total.coeff(1, 0) / per_pair) if per_pair else math.inf


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
