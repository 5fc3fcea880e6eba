"""Every op kind's case in `ntc.testing.cases.CASES`: analytic kernels vs Monte-Carlo finite
networks (hidden width 512, both parameterizations), the reference lowering, and the
invariants (symmetry, PSD, batching, layouts, spec round-trip).

Under the `ci` profile each case uses 128 samples; `NTC_HYPOTHESIS=thorough` uses 512."""

import os

import pytest

from ntc.testing import check_cases
from ntc.testing.cases import CASES

THOROUGH = os.environ.get('NTC_HYPOTHESIS') == 'thorough'
N_SAMPLES = 512 if THOROUGH else 128


@pytest.mark.parametrize('kind', sorted(CASES))
def test_case_matches_monte_carlo_and_invariants(kind):
    for report in check_cases(CASES[kind], n_samples=N_SAMPLES):
        report.assert_ok()
