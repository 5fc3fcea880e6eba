"""Test configuration: float64 everywhere, no implicit rank promotion, and hypothesis profiles.

`NTC_HYPOTHESIS=thorough` selects the slow profile for long local runs; CI uses `ci`."""

import os

# four simulated CPU devices, so that sharding is exercised by every test run
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
# no implicit rank promotion, here and in the processes tests start (the CLI, workers)
os.environ.setdefault('JAX_NUMPY_RANK_PROMOTION', 'raise')

import jax  # noqa: E402

jax.config.update('jax_enable_x64', True)
# NT's tests and careful users forbid implicit rank promotion; ntc must be clean under it
jax.config.update('jax_numpy_rank_promotion', 'raise')

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile('ci', max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('thorough', max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('NTC_HYPOTHESIS', 'ci'))
