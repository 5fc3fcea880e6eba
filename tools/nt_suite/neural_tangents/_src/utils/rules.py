"""NT-private module: not provided by ntc (tests of it are out of scope)."""
