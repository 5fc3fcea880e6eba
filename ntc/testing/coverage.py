"""The coverage table: every built-in op kind with a kernel rule, and the harness case that
checks it.

Generated from the rule tables themselves (`ntc.ir.registry.KERNEL_RULES`, `FINITE_RULES`),
so a new rule without an entry in `ntc.testing.cases.CASES` shows up as MISSING.  Only the
layers of `ntc.layers` (the built-in families) need a case here: a user's own layer, registered
from its own module, is checked with `ntc.testing.check_layer` by its owner.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api import compile as compile_plan
from ..ir.registry import FINITE_RULES, KERNEL_RULES, OPS
from ..layers import FAMILIES
from .cases import CASES, harness_net
from .layer import example_inputs

# op kinds other issues are adding; listed as "pending" only while they have no kernel rule
PENDING = ('Attention', 'Aggregate', 'DotGeneral', 'Index', 'ImageResize', 'ConvLocal')


@dataclass(frozen=True)
class Row:
    kind: str
    kernel_rule: bool
    finite_rule: bool
    n_cases: int
    status: str   # 'covered', 'MISSING', 'pending', 'no kernel rule'


def builtin_kernel_kinds() -> set[str]:
    """The op kinds with a kernel rule whose layer belongs to a family of `ntc.layers`."""
    families = {m.__name__ for m in FAMILIES}
    return {kind for kind in KERNEL_RULES
            if kind in OPS and OPS[kind].__module__ in families}


def case_kinds(case) -> set[str]:
    """Op kinds present in a case's network: its source graph and its optimised plan (which
    holds pass-made kinds such as Affine and Transpose)."""
    net = harness_net(case)
    kinds = {n.op.kind for n in net.graph().nodes()}
    x1, _ = example_inputs(case.input_shape)
    kinds |= {n.op.kind for n in compile_plan(net, x1.shape).graph.nodes()}
    return kinds


def coverage_table() -> list[Row]:
    """One row per built-in op kind with a kernel rule (plus pending kinds), sorted by kind."""
    rows = []
    builtin = builtin_kernel_kinds()
    for kind in sorted(builtin | set(CASES) | set(PENDING)):
        has_rule = kind in builtin
        n = len(CASES.get(kind, ()))
        if has_rule:
            status = 'covered' if n else 'MISSING'
        else:
            status = 'pending' if kind in PENDING and not n else 'no kernel rule'
        rows.append(Row(kind, has_rule, kind in FINITE_RULES, n, status))
    return rows


def format_table(rows: list[Row] | None = None) -> str:
    """The coverage table as Markdown."""
    rows = coverage_table() if rows is None else rows
    lines = ['| op kind | kernel rule | finite rule | cases | status |',
             '|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r.kind} | {"yes" if r.kernel_rule else "-"} | '
                     f'{"yes" if r.finite_rule else "-"} | {r.n_cases} | {r.status} |')
    return '\n'.join(lines)


__all__ = ['coverage_table', 'format_table', 'case_kinds', 'builtin_kernel_kinds', 'Row',
           'PENDING']
