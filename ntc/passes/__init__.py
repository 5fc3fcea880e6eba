"""The compiler's passes: pure functions Graph -> Graph, run as a plain list.

    infer_types -> check -> canonicalize -> choose_layouts -> choose_axis_orders -> roll_loops

then the `cost` analysis.  With `verify=True` the verifier checks the IR between passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..ir.graph import Graph
from .canonicalize import canonicalize
from .check import check
from .choose_axis_orders import choose_axis_orders
from .choose_layouts import choose_layouts
from .cost import cost
from .infer_types import infer_types
from .options import KERNEL_NAMES, Options
from .roll_loops import roll_loops
from .verify import verify

Pass = Callable[[Graph, Options], Graph]

PIPELINE: tuple[Pass, ...] = (infer_types, check, canonicalize, choose_layouts,
                              choose_axis_orders, roll_loops)


def run_passes(graph: Graph, opts: Options, passes: Sequence[Pass] = PIPELINE,
               check_ir: bool = True) -> Graph:
    """Run `passes` in order, verifying the IR after each one when `check_ir`."""
    done: list[str] = []
    for p in passes:
        graph = p(graph, opts)
        done.append(p.__name__)
        if check_ir:
            verify(graph, done)
    return graph


__all__ = ['PIPELINE', 'KERNEL_NAMES', 'Options', 'run_passes', 'infer_types', 'check',
           'canonicalize', 'choose_layouts', 'choose_axis_orders', 'roll_loops', 'cost', 'verify']
