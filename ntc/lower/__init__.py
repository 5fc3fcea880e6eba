"""Lowering: kernel and finite-network rule tables, the JAX lowering, the reference lowering."""

from . import lower  # noqa: F401,E402  (importing it fills both rule tables)
