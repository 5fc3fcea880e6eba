"""ntc.testing: a public property-based correctness harness.

- `strategies`: hypothesis strategies generating valid architectures (as `ntc.stax` nets) and
  inputs that fit them;
- `check_against_monte_carlo`: analytic kernels vs Monte-Carlo estimates from the finite
  network built from the same IR, with a tolerance of k standard errors (family-wise);
- `check_against_reference`: the optimised plan vs the reference lowering, to float64 round-off;
- invariants: `check_symmetry`, `check_psd`, `check_batching`, `check_layouts`,
  `check_spec_roundtrip`;
- `check_layer(builder, input_shape)`: all of the above for a new layer in one call;
- `cases.CASES`: the per-op-kind test table, and `coverage.coverage_table()`, which shows that
  every op kind in the rule tables has a case.
"""

from . import strategies
from .invariants import (
    check_batching,
    check_layouts,
    check_psd,
    check_spec_roundtrip,
    check_symmetry,
)
from .layer import LayerReport, check_cases, check_layer
from .monte_carlo import (
    MonteCarloReport,
    check_against_monte_carlo,
    check_many_against_monte_carlo,
    widen,
    z_threshold,
)
from .properties import Report, check_against_reference

__all__ = ['strategies', 'check_against_reference', 'check_against_monte_carlo',
           'check_many_against_monte_carlo', 'check_symmetry', 'check_psd', 'check_batching',
           'check_layouts', 'check_spec_roundtrip', 'check_layer', 'check_cases', 'LayerReport',
           'MonteCarloReport', 'Report', 'widen', 'z_threshold']
