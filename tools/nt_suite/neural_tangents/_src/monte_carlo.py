"""NT-private module: not provided by ntc (tests of it are out of scope)."""
from ntc import monte_carlo_kernel_fn  # noqa: F401
