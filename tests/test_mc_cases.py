"""Every op kind's case in `ntc.testing.cases.CASES`: analytic kernels vs Monte-Carlo finite
networks (hidden width 512, both parameterizations), the reference lowering, and the
invariants (symmetry, PSD, batching, layouts, spec round-trip).

Under the `ci` profile every kind runs its first case (Conv: every padding and both strides)
through the reference lowering and the invariants; the Monte-Carlo comparison (64 samples of
networks at most 64 wide: the threshold comes from the samples, so it stays calibrated, and
`test_harness_mutations.py` shows its power) runs for the kinds no exact NT fixture checks
(`tests/test_nt_fixtures.py`) and for the conv, pooling and concat kinds, whose Monte-Carlo
agreement in both parameterizations is a stated requirement.  Ops that only passes insert
(`Transpose`, `Affine`) are checked in CI against the reference lowering, which never contains
them, so it is an independent computation of the same kernel.  `NTC_HYPOTHESIS=thorough` runs
every case with 512 samples at the cases' full widths."""

import dataclasses
import os

import pytest

from ntc import stax
from ntc.testing import check_cases
from ntc.testing.cases import CASES

THOROUGH = os.environ.get('NTC_HYPOTHESIS') == 'thorough'
N_SAMPLES = 512 if THOROUGH else 64
MAX_WIDTH = None if THOROUGH else 64




def ci_cases(kind):
    """Under `ci` a kind runs its first case only.  Conv (CASES: 1-D for each padding with
    strides 1 and 2, then 2-D for each padding) runs 1-D SAME stride 1, 1-D CIRCULAR stride 2,
    and 2-D SAME with a non-square filter and strides (2, 1); the other paddings are matched
    exactly by NT fixtures (`tests/test_nt_fixtures.py`)."""
    if kind == 'Conv':
        return [CASES[kind][i] for i in (0, 5, 6)]
    return CASES[kind][:1]


PASS_KINDS = {'Transpose', 'Affine'}
MC_IN_CI = {'Conv', 'ConvTranspose', 'AvgPool', 'SumPool', 'GlobalAvgPool', 'GlobalSumPool',
            'FanInConcat'}


def fixture_kinds() -> set[str]:
    """Op kinds that appear in an NT fixture net ntc matches exactly (deviations excluded)."""
    from tests.nt_zoo import ZOO
    from tests.test_nt_fixtures import CASES as FIXTURES
    from tests.test_nt_fixtures import DEVIATIONS

    found: set[str] = set()
    for name in FIXTURES:
        if name not in DEVIATIONS:
            found |= {n.op.kind for n in ZOO[name][0](stax).graph().nodes()}
    return found


FIXTURE_KINDS = fixture_kinds()


@pytest.mark.parametrize('kind', sorted(CASES))
def test_case_matches_monte_carlo_and_invariants(kind):
    cases = CASES[kind] if THOROUGH else ci_cases(kind)
    if not THOROUGH and (kind in FIXTURE_KINDS or kind in PASS_KINDS) and kind not in MC_IN_CI:
        cases = [dataclasses.replace(c, mc=False) for c in cases]
    for report in check_cases(cases, n_samples=N_SAMPLES, max_width=MAX_WIDTH):
        report.assert_ok()
