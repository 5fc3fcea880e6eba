"""NT-private module: not provided by ntc (tests of it are out of scope)."""
from ntc import batch  # noqa: F401  (NT re-exports the public function here)
