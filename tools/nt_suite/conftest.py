"""Harness for NT 0.6.5's own tests run against ntc on a current JAX: restore the JAX names
those tests use (`jax.tree_map`, `jax.core.Primitive`), which newer JAX removed.

NT's tests simulate 2 devices on one CPU by swapping NT's private `pmap` for `vmap`
(`test_utils.stub_out_pmap`), which the shim cannot see; without that stub NT itself refuses
`device_count=2` on one device, as ntc does.  ntc's way to simulate devices is JAX's: the
CPU is split into 2 host devices here, before JAX starts its backend."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=2').strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.core  # noqa: E402
import jax.tree_util  # noqa: E402

if not hasattr(jax, 'tree_map'):
    jax.tree_map = jax.tree_util.tree_map
if not hasattr(jax.core, 'Primitive'):
    import jax.extend.core
    jax.core.Primitive = jax.extend.core.Primitive
