"""Test shim: a `neural_tangents` package that only re-exports ntc, to run NT's own tests."""
import sys

from ntc import (
    Kernel,
    NtkImplementation,
    batch,
    empirical_kernel_fn,
    empirical_nngp_fn,
    empirical_ntk_fn,
    empirical_ntk_vp_fn,
    linearize,
    monte_carlo_kernel_fn,
    predict,
    stax,
    taylor_expand,
)

__all__ = ['Kernel', 'NtkImplementation', 'batch', 'empirical_kernel_fn', 'empirical_nngp_fn',
           'empirical_ntk_fn', 'empirical_ntk_vp_fn', 'linearize', 'monte_carlo_kernel_fn',
           'predict', 'stax', 'taylor_expand']
sys.modules['neural_tangents.stax'] = stax
sys.modules['neural_tangents.predict'] = predict
