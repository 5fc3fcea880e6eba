"""The coverage table, generated from the rule tables: every built-in op kind with a kernel rule
has a case in `ntc.testing.cases.CASES`, and that case's network really contains the kind.  A
user's own layer (tests/user_layers.py, registered here too) needs no case."""

import pytest

from ntc.ir.registry import KERNEL_RULES
from ntc.testing.cases import CASES
from ntc.testing.coverage import (
    PENDING,
    builtin_kernel_kinds,
    case_kinds,
    coverage_table,
    format_table,
)
from tests import user_layers


def test_every_op_kind_with_a_kernel_rule_has_a_case():
    rows = coverage_table()
    missing = [r.kind for r in rows if r.status == 'MISSING']
    assert not missing, ('op kinds without a case in ntc/testing/cases.py: '
                         f'{missing}\n{format_table(rows)}')
    builtin = builtin_kernel_kinds()
    assert {r.kind for r in rows if r.status == 'covered'} == builtin
    # "pending" is only for kinds that do not exist yet
    assert not {r.kind for r in rows if r.status == 'pending'} & set(KERNEL_RULES)
    assert set(PENDING) - set(KERNEL_RULES) == {r.kind for r in rows if r.status == 'pending'}


def test_user_layers_need_no_case():
    """Layers registered from outside ntc have kernel rules but are not built-in kinds."""
    user = {'ShiftedRelu', 'Flip'}
    assert user <= set(KERNEL_RULES)
    assert not user & builtin_kernel_kinds()
    assert not user & {r.kind for r in coverage_table()}
    assert user_layers.Flip.__module__ == 'tests.user_layers'


@pytest.mark.parametrize('kind', sorted(CASES))
def test_each_case_contains_its_op_kind(kind):
    for case in CASES[kind]:
        assert kind in case_kinds(case), f'the {kind} case never uses {kind}'


def test_table_is_markdown_with_one_row_per_kind():
    text = format_table()
    assert text.count('\n') == len(coverage_table()) + 1
    assert '| Relu | yes | yes | 1 | covered |' in text
