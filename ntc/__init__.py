"""ntc, the neural tangents compiler: infinite-width NNGP and NTK kernels as compiled, inspectable
JAX programs.  `from ntc import stax` is a drop-in for `neural_tangents.stax`."""

from . import stax
from .api import compile
from .errors import NtcError
from .ir.net import Net
from .lower.kernel import Kernel
from .plan import KernelPlan

__all__ = ['stax', 'compile', 'NtcError', 'Net', 'Kernel', 'KernelPlan']
__version__ = '0.1.0'
