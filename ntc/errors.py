"""The errors ntc raises.  Every one subclasses `NtcError`, names the layer by its path
(for example ``serial[3].Relu``) where one is involved, and says how to fix the problem."""

from __future__ import annotations


class NtcError(Exception):
    """Base class of every error ntc raises on purpose."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        self.message = message
        self.path = path
        self.hint = hint
        text = f'{path}: {message}' if path else message
        if hint:
            text = f'{text} ({hint})'
        super().__init__(text)


class ValidationError(NtcError, ValueError):
    """An op attribute or spec field failed validation (wraps pydantic's error)."""


class GaussianityError(NtcError, ValueError):
    """A layer that needs a Gaussian input (nonlinearity, LayerNorm) got a non-Gaussian one."""


class ArchitectureError(NtcError, ValueError):
    """The network's structure is invalid: wrong fan-in arity, FanOut/parallel mismatch, ..."""


class ShapeError(NtcError, ValueError):
    """An input or intermediate shape the network cannot take."""


class NoClosedFormError(NtcError, NotImplementedError):
    """The architecture has no closed-form kernel (use a Monte-Carlo estimate instead)."""


class InputError(NtcError, ValueError):
    """Bad arguments to a kernel, plan or runtime function (x1/x2 shapes, `get`, tile sizes)."""


class NumericalError(NtcError, ArithmeticError):
    """Numerical trouble: a non-PSD kernel, a failed Cholesky, non-finite values."""


class PassError(NtcError, RuntimeError):
    """A compiler pass produced a graph that breaks the IR's invariants (a bug in ntc)."""


class StoreError(NtcError, RuntimeError):
    """A tile store that does not match the current plan or inputs, or cannot be written."""


class DistributedError(NtcError, RuntimeError):
    """Multi-process coordination failed: unreachable coordinator, bad process id, disagreement."""


class AccuracyWarning(UserWarning):
    """A result computed at the working precision may be inaccurate (an ill-conditioned solve)."""
