"""Test configuration: float64 everywhere, no implicit rank promotion, and hypothesis profiles.

`NTC_HYPOTHESIS=thorough` selects the slow profile for long local runs; CI uses `ci`."""

import os
import shutil
import tempfile

# four simulated CPU devices, so that sharding is exercised by every test run
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
# no implicit rank promotion, here and in the processes tests start (the CLI, workers)
os.environ.setdefault('JAX_NUMPY_RANK_PROMOTION', 'raise')
# one XLA compilation cache for the whole run, made by pytest's main process and inherited by
# pytest-xdist's workers and the processes tests start: many tests compile the same programs
# (the same plans, the CLI's subprocesses); those taking 0.2 s or more to compile are stored
_OWN_CACHE = ('PYTEST_XDIST_WORKER' not in os.environ
              and 'JAX_COMPILATION_CACHE_DIR' not in os.environ)
if _OWN_CACHE:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ntc-test-xla-cache-')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

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

THOROUGH = os.environ.get('NTC_HYPOTHESIS') == 'thorough'


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'thorough: a slow variant of a test whose other variants run in CI; runs '
        'under NTC_HYPOTHESIS=thorough')


# Slow parametrized variants whose sibling variants exercise the same code in CI (each took
# 10-35 s); they run under NTC_HYPOTHESIS=thorough.
THOROUGH_VARIANTS = {
    'test_pair_blocks.py::test_blocked_equals_whole_batch': [
        f'{split}-{pairs}-{same}-{extra}' for split in ('pairs', 'square') for pairs in (1, 4)
        for same in ('x1_x2', 'x2_none') for extra in ('plain', 'dropout')
        if (split, pairs, same, extra) not in {('pairs', 4, 'x2_none', 'plain'),
                                               ('pairs', 1, 'x1_x2', 'dropout'),
                                               ('square', 4, 'x1_x2', 'dropout'),
                                               ('square', 1, 'x2_none', 'plain')}],
    'test_pair_blocks.py::test_symmetric_inputs_compute_the_distinct_pairs_only': [
        'pairs-none-gap', 'pairs-equal-spatial', 'pairs-other-spatial', 'square-other-gap',
        'square-other-spatial', 'square-equal-gap', 'square-none-spatial'],
    'test_harness_mutations.py::test_broken_rule_is_caught': [
        'layer norm identity', 'relu derivative kernel'],
    'test_empirical_vmap_axes.py::test_vmap_axes_with_negative_out_axes_match_plain': [
        'other-2', 'other-3', 'none-3'],
    'test_roll_loops.py::test_rolled_plans_equal_unrolled_ones': ['conv_flatten', 'conv_pool'],
    'test_nt_kernel.py::test_composed_kernel_is_the_whole_networks': [
        'False-nchw', 'False-conv_pool', 'True-conv_convs'],
    'test_rank_promotion.py::test_ensemble_times_and_covariance': ['x_test-t-1d', 'train-t-2d'],
    'test_nt_params.py::test_standard_parameterization_gradients_give_the_analytic_ntk': [
        'True-s0', 'True-s2'],
}


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Under the `ci` profile, tests marked `thorough` and the variants in THOROUGH_VARIANTS are
    skipped; their sibling variants run."""
    if THOROUGH:
        return
    import pytest

    slow = {f'tests/{test}[{variant}]' for test, variants in THOROUGH_VARIANTS.items()
            for variant in variants}
    skip = pytest.mark.skip(reason='slow variant: run with NTC_HYPOTHESIS=thorough')
    for item in items:
        if 'thorough' in item.keywords or item.nodeid in slow:
            item.add_marker(skip)
