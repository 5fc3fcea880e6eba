"""Front ends that import networks written in JAX, Flax or Equinox: the function is traced to a
jaxpr, its equations are recognised layer by layer (`jaxpr.py`), and the result is a `Net` built
from `ntc.stax` builders, compiled like any other.  `libraries.py` reads the initialisers of
Flax and Equinox modules to get each layer's parameter variances."""

from .jaxpr import Recognised, TraceError, recognise, trace
from .libraries import from_equinox, from_flax, recognise_equinox, recognise_flax

__all__ = ['trace', 'recognise', 'Recognised', 'TraceError', 'from_flax', 'from_equinox',
           'recognise_flax', 'recognise_equinox']
