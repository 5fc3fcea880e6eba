"""ntc, the neural tangents compiler: infinite-width NNGP and NTK kernels as compiled, inspectable
JAX programs.  `from ntc import stax` is a drop-in for `neural_tangents.stax`."""

from . import frontends, layers, spec, stax
from .api import compile
from .covariance.kernel import Kernel
from .errors import AccuracyWarning, NtcError
from .frontends import from_equinox, from_flax, trace
from .net import Net
from .plan import KernelPlan
from .runtime import (
    NtkImplementation,
    TileStore,
    batch,
    empirical_kernel_fn,
    empirical_nngp_fn,
    empirical_ntk_fn,
    empirical_ntk_vp_fn,
    linearize,
    monte_carlo_kernel_fn,
    predict,
    taylor_expand,
)

__all__ = ['stax', 'spec', 'layers', 'compile', 'NtcError', 'Net', 'Kernel', 'KernelPlan',
           'predict',
           'batch', 'TileStore', 'NtkImplementation', 'empirical_kernel_fn', 'empirical_nngp_fn',
           'empirical_ntk_fn', 'empirical_ntk_vp_fn', 'monte_carlo_kernel_fn', 'linearize',
           'taylor_expand']
__all__ += ['AccuracyWarning']
__all__ += ['trace', 'from_flax', 'from_equinox', 'frontends']
__version__ = '0.1.0'
