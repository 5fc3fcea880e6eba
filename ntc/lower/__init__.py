"""Lowering: kernel and finite-network rule tables, the JAX lowering, the reference lowering."""
