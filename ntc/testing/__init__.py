"""ntc.testing: a public property-based correctness harness.

Strategies generate valid architectures and inputs (`ntc.testing.strategies`); properties check
a net's analytic kernels against the reference lowering, Monte-Carlo estimates from the finite
network built from the same IR, and invariants (`ntc.testing.properties`).
"""

from . import strategies
from .properties import check_against_reference

__all__ = ['strategies', 'check_against_reference']
