"""The one NT-private constant NT's public tests import at module level."""
from ntc import NtkImplementation

_DEFAULT_TESTING_NTK_IMPLEMENTATION = NtkImplementation.STRUCTURED_DERIVATIVES
