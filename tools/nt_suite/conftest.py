"""Harness for NT 0.6.5's own tests run against ntc on a current JAX: restore the JAX names
those tests use (`jax.tree_map`, `jax.core.Primitive`), which newer JAX removed."""
import jax
import jax.core
import jax.tree_util

if not hasattr(jax, 'tree_map'):
    jax.tree_map = jax.tree_util.tree_map
if not hasattr(jax.core, 'Primitive'):
    import jax.extend.core
    jax.core.Primitive = jax.extend.core.Primitive
