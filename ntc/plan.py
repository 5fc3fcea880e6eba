"""`KernelPlan`: a compiled, inspectable kernel program.

`ntc.compile(net, input_shape, get)` returns one.  `plan(x1, x2)` runs it (one jitted function),
`plan.explain()` prints an EXPLAIN-style table of its nodes, and `plan.symbolic()` gives the
output kernels as sympy expressions for networks whose rules all have closed forms.
"""

from __future__ import annotations

import collections
import hashlib

import jax

from . import checks
from .covariance.kernel import Kernel
from .errors import InputError
from .fingerprint import graph_fingerprint
from .ir.graph import Graph
from .ir.registry import KERNEL_INPUTS
from .ir.types import CovType, TensorType
from .lower.lower import block_shape, first_nonfinite, lower, symmetric_text
from .lower.symbolic import symbolic_kernels
from .passes import Options
from .passes.choose_layouts import stores_padded_input
from .passes.cost import (
    BLOCK_BYTES,
    BatchPoly,
    NodeCost,
    cost,
    pair_block,
    pair_bytes,
    traced_nodes,
)
from .passes.roll_loops import loops

_RESULT_TYPES: dict[tuple[str, ...], type] = {}


def result_type(get: tuple[str, ...]) -> type:
    """The namedtuple returned for a tuple `get` (fields in the order asked)."""
    if get not in _RESULT_TYPES:
        _RESULT_TYPES[get] = collections.namedtuple('Kernel', get)
    return _RESULT_TYPES[get]


class KernelPlan:
    """A compiled kernel program for one input feature shape and one set of requested kernels."""

    def __init__(self, graph: Graph, input_types: list[TensorType] | TensorType, opts: Options,
                 source: Graph, dtype_bytes: int = 4):
        self.graph = graph
        # one type per input node; `input_type` is the first (the only one, mostly)
        self.input_types = list(input_types) if isinstance(input_types, (list, tuple)) \
            else [input_types]
        self.input_type = self.input_types[0]
        self.opts = opts
        self.source = source  # the typed, checked graph before optimisation
        self.dtype_bytes = dtype_bytes
        self.costs: dict[int, NodeCost] = cost(graph, opts, dtype_bytes)
        single = len(graph.outputs) == 1 and len(graph.input_nodes()) == 1
        # pair blocks: one input and one output only (see `ntc.lower.lower.lower`)
        self.pair_blocks = pair_block(graph, opts, self.costs) if single else None
        self._fn = None

    # -- running ------------------------------------------------------------------------------

    @property
    def pair_block(self) -> int | None:
        """The most pairs of examples per block (`pair_blocks.most`), None without blocks."""
        return None if self.pair_blocks is None else self.pair_blocks.most

    @property
    def fn(self):
        """The lowered, jitted function (x1, x2) -> {name: array}."""
        if self._fn is None:
            self._fn = lower(self.graph, self.opts, self.pair_blocks)
        return self._fn

    @property
    def many_inputs(self) -> bool:
        return len(self.input_types) > 1

    def check_inputs(self, x1, x2) -> None:
        """Refuse inputs whose rank or feature shape differ from those compiled for (with
        several inputs, x1 and x2 are sequences of arrays, one per input)."""
        if self.many_inputs:
            for name, xs in (('x1', x1), ('x2', x2)):
                if xs is not None and (not isinstance(xs, (tuple, list))
                                       or len(xs) != len(self.input_types)):
                    raise InputError(f'{name} must be a tuple of {len(self.input_types)} '
                                     'arrays, one per input of the network')
            for i, t in enumerate(self.input_types):
                self._check_input(t, f'x1[{i}]', x1[i])
                self._check_input(t, f'x2[{i}]', None if x2 is None else x2[i])
            return
        self._check_input(self.input_type, 'x1', x1)
        self._check_input(self.input_type, 'x2', x2)

    def _check_input(self, t: TensorType, name: str, x) -> None:
        if x is not None:
            if x.ndim != t.ndim:
                raise InputError(f'{name} has rank {x.ndim} but the plan was compiled for '
                                 f'inputs of rank {t.ndim} {t.describe()}')
            feat = tuple(d for i, d in enumerate(x.shape) if i != t.batch)
            want = tuple(d for i, d in enumerate(t.shape) if i != t.batch)
            if feat != want:
                raise InputError(f'{name} has feature shape {feat} but the plan was compiled '
                                 f'for {want}', hint='compile a plan for this input shape')

    def raw(self, x1, x2=None, **kwargs) -> dict | list[dict]:
        """Run the plan: {name: array} for every name in `get` (a list of them, one per output,
        for a network with several outputs; x1 and x2 are then tuples of arrays, one per input,
        for a network with several inputs).  `kwargs` are NT's extra kernel_fn inputs, e.g.
        ``pattern=(pattern1, pattern2)`` for `Aggregate`.

        Integer inputs are cast to the float dtype in use.  With concrete (not traced) values,
        NaN/Inf inputs and calls that cannot fit in the device's memory are refused, and a
        non-finite result raises `NumericalError` naming the first non-finite layer
        (see `ntc.checks`)."""
        xs1 = list(x1) if self.many_inputs else [x1]
        xs2 = None if x2 is None else (list(x2) if self.many_inputs else [x2])
        xs1 = [checks.as_input(x, 'x1') for x in xs1]
        xs2 = None if xs2 is None else [checks.as_input(x, 'x2') for x in xs2]
        x1 = tuple(xs1) if self.many_inputs else xs1[0]
        x2 = None if xs2 is None else (tuple(xs2) if self.many_inputs else xs2[0])
        self.check_inputs(x1, x2)
        inputs = kernel_inputs(kwargs, xs1[0], None if xs2 is None else xs2[0])
        mask_constant = inputs.get('mask_constant')
        for side, xs in (('x1', xs1), ('x2', xs2 or [])):
            for i, x in enumerate(xs):
                checks.check_values(x, f'{side}[{i}]' if self.many_inputs else side,
                                    mask_constant)
        concrete = checks.is_concrete(x1, x2)
        if concrete:
            b = self.input_type.batch
            n1 = xs1[0].shape[b]
            n2 = n1 if xs2 is None else xs2[0].shape[b]
            scale = xs1[0].dtype.itemsize / self.dtype_bytes
            checks.check_memory(lambda m1, m2: scale * self.peak_bytes(m1, m2), n1, n2,
                                next(iter(xs1[0].devices())))
        out = self.fn(x1, x2, inputs) if inputs else self.fn(x1, x2)
        if concrete:
            for o in (out if isinstance(out, list) else [out]):
                checks.check_results(o, lambda: first_nonfinite(
                    self.graph, self.opts, x1, x2, inputs or None), xs1[0].dtype)
        return out

    def __call__(self, x1, x2=None, **kwargs):
        """The requested kernels: an array for one name, a namedtuple for several (a list of
        them, one per output, for a network with several outputs)."""
        out = self.raw(x1, x2, **kwargs)
        get = self.opts.get

        def pick(o):
            return o[get[0]] if len(get) == 1 else result_type(get)(*(o[g] for g in get))
        return [pick(o) for o in out] if isinstance(out, list) else pick(out)

    def kernel(self, x1, x2=None, **kwargs) -> Kernel | list[Kernel]:
        """All kernels as a `Kernel` (what `kernel_fn(x1, x2, get=None)` returns); a list of
        them, one per output, for a network with several outputs."""
        out = self.raw(x1, x2, **kwargs)

        def as_kernel(o, layout):
            return Kernel(nngp=o.get('nngp'), ntk=o.get('ntk'), cov1=o.get('cov1'),
                          cov2=None if x2 is None else o.get('cov2'), layout=layout,
                          x1_is_x2=x2 is None)
        if isinstance(out, list):
            return [as_kernel(o, lay) for o, lay in zip(out, self.output_layouts)]
        return as_kernel(out, self.output_layout)

    # -- inspecting ------------------------------------------------------------------------

    @property
    def output_layout(self) -> CovType:
        """The layout of the returned kernels (what the runtime reads to tile and mirror)."""
        return self.graph.node(self.graph.output).cov

    @property
    def output_layouts(self) -> list[CovType]:
        """The layout of each output's kernels, in output order."""
        return [self.graph.node(o).cov for o in self.graph.outputs]

    @property
    def batch_axis(self) -> int:
        """The inputs' batch axis (NT's `batch_axis`, from the first layer that names it)."""
        return self.input_type.batch

    @property
    def transposes(self) -> int:
        """Number of explicit Transpose nodes left in the plan."""
        return sum(1 for n in self.graph.nodes() if n.op.kind == 'Transpose')

    def total(self, field: str, n1: int, n2: int) -> float:
        """Total FLOPs or bytes ('flops'/'bytes'), or peak live bytes ('live'), at n1 × n2."""
        vals = [getattr(c, field).at(n1, n2) for c in self.costs.values()]
        return float(max(vals, default=0) if field == 'live' else sum(vals))

    def peak_bytes(self, n1: int, n2: int) -> float:
        """Peak live bytes of the covariances for an n1 × n2 kernel (the memory model).  With
        pair blocks: one block's peak plus the assembled output kernels."""
        whole = self.total('live', n1, n2)
        if self.pair_block is None:
            return whole
        b1, b2 = block_shape(n1, n2, self.pair_block, square=False)
        out = self.costs[self.graph.output].bytes.at(n1, n2)
        return min(whole, self.total('live', b1, b2) + out)

    def explain(self, n1: int | None = None, n2: int | None = None) -> str:
        """An EXPLAIN table: one row per node in execution order, then totals.  With n1/n2 the
        costs are evaluated; otherwise they are shown as expressions in N1 and N2."""
        rows = [('id', 'op', 'in', 'layout', 'shape', 'FLOPs', 'bytes', 'path', 'lowering')]
        for node in self.graph.nodes():
            c = self.costs[node.id]
            ins = ','.join(f'%{i}' for i in self.graph.inputs(node.id)) or '-'
            srcs = [self.graph.node(i) for i in self.graph.inputs(node.id)]
            # by keyword and only when set: a user op may override the two-argument form
            stored = {'stored_input': True} if stores_padded_input(self.graph, node) else {}
            note = node.op.lowering_note([n.ttype for n in srcs],
                                         srcs[0].cov.spatial if srcs else node.cov.spatial,
                                         **stored)
            layout = node.cov.describe() + (' [mat]' if node.materialize else '')
            if node.loop is not None:
                layout += f' [loop{node.loop[0]}.{node.loop[1]}]'
            rows.append((f'%{node.id}', node.op.label(), ins, layout, node.ttype.describe(),
                         _fmt(c.flops, n1, n2), _fmt(c.bytes, n1, n2), node.path, note))
        widths = [min(max(len(r[i]) for r in rows), 44) for i in range(len(rows[0]))]
        lines = []
        for j, r in enumerate(rows):
            cells = [r[i][:widths[i]].ljust(widths[i]) for i in range(len(r))]
            lines.append('  '.join(cells).rstrip())
            if j == 0:
                lines.append('  '.join('-' * w for w in widths))
        tot_f = sum((c.flops for c in self.costs.values()), BatchPoly())
        tot_b = sum((c.bytes for c in self.costs.values()), BatchPoly())
        peak = self.costs[max(self.costs, key=lambda i: self.costs[i].live.at(1000, 1000))].live
        lines.append('')
        lines.append(f'get={",".join(self.opts.get)}  {self.io_text()}  '
                     f'nodes {len(self.graph)}  transposes {self.transposes}  '
                     f'materialised {sum(n.materialize for n in self.graph.nodes())}  '
                     f'loops {self.loops_text()}')
        lines.append(f'total FLOPs {_fmt(tot_f, n1, n2)}   bytes written {_fmt(tot_b, n1, n2)}   '
                     f'peak live {_fmt(peak, n1, n2)}')
        if self.pair_blocks is not None:
            blocks = self.pair_blocks
            lines.append(f'pair blocks: ≤ {blocks.most} pairs of examples per block '
                         f'(lax.map), {_units(pair_bytes(self.costs))}B live per pair, '
                         f'{_units(BLOCK_BYTES)}B budget per block; an example\'s marginals '
                         f'{blocks.marginal_share:.3g} of a pair\'s FLOPs')
            lines.append('x2 None or equal to x1: the distinct pairs only, pair by pair (vmap) '
                         f'or in square blocks of ≥ {blocks.least} pairs on and above the '
                         'diagonal, whichever costs fewer FLOPs'
                         + ('' if blocks.split_whole else
                            f' (a batch that fits one block: for x2 None only; '
                            f'{traced_nodes(self.graph)} traced nodes are too many to compile '
                            'twice for x2 = x1)')
                         + ('' if n1 is None else f'; {n1} examples: '
                            + symmetric_text(n1, blocks)))
        return '\n'.join(lines)

    def io_text(self) -> str:
        """'input <type>', or for several inputs and outputs e.g.
        'inputs %0 <type>, %1 <type>  outputs %4, %6'."""
        if not self.many_inputs and len(self.graph.outputs) == 1:
            return f'input {self.input_type.describe()}'
        nodes = self.graph.input_nodes()
        ins = ', '.join(f'%{nid} {t.describe()}' for nid, t in zip(nodes, self.input_types))
        text = f'input{"s" * self.many_inputs} {ins}'
        if len(self.graph.outputs) > 1:
            text += '  outputs ' + ', '.join(f'%{o}' for o in self.graph.outputs)
        return text

    def loops_text(self) -> str:
        """The rolled loops: '0', or e.g. '1 (19 × 2 nodes)'."""
        found = loops(self.graph)
        if not found:
            return '0'
        each = ', '.join(f'{lp.n} × {len(lp.body)} nodes' for lp in found)
        return f'{len(found)} ({each})'

    def __repr__(self) -> str:
        return f'KernelPlan({len(self.graph)} nodes, get={self.opts.get})'

    def fingerprint(self) -> str:
        """A stable hash of everything that determines the plan's numbers: the optimised graph
        (every op's arguments, captured values of user functions included), the options and
        the input type.  Raises `Unfingerprintable` for a function with no stable value."""
        body = (graph_fingerprint(self.graph) + repr(self.opts)
                + ''.join(t.model_dump_json() for t in self.input_types))
        return hashlib.sha256(body.encode()).hexdigest()

    def symbolic(self):
        """The output NNGP and NTK as sympy expressions of k11, k12, k22 and the layers'
        σw, σb (see `ntc.lower.symbolic`)."""
        return symbolic_kernels(self.source, self.opts)


def kernel_inputs(kwargs: dict, x1, x2) -> dict:
    """Normalise kernel_fn's extra keyword inputs (NT passes them to every layer's kernel_fn)
    through the `KERNEL_INPUTS` table; None values count as absent, unknown names are an error
    (NT would silently ignore a misspelt one)."""
    out = {}
    for name, value in kwargs.items():
        if value is None:
            continue
        if name not in KERNEL_INPUTS:
            raise InputError(f'kernel_fn got an unknown keyword argument {name!r}',
                             hint=f'known inputs: {", ".join(sorted(KERNEL_INPUTS))}')
        out[name] = KERNEL_INPUTS[name](value, x1, x2)
        if name != 'mask_constant':  # NaN is a legitimate mask constant
            for leaf in jax.tree_util.tree_leaves(out[name]):
                checks.check_values(leaf, name)
    return out


def _units(v: float) -> str:
    for unit, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if abs(v) >= scale:
            return f'{v / scale:.3g}{unit}'
    return f'{v:.3g}'


def _fmt(poly: BatchPoly, n1, n2) -> str:
    if n1 is not None:
        return _units(poly.at(n1, n2 if n2 is not None else n1))
    if poly == 0:
        return '0'
    terms = []
    for (p1, p2), coef in poly.terms():
        mono = '·'.join(poly.monomial(p1, p2, power='^'))
        c = _units(float(coef))
        terms.append(f'{c}·{mono}' if mono else c)
    return ' + '.join(terms)
