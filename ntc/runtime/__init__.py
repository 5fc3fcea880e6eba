"""Runtime: running plans at scale, inference, Monte-Carlo and empirical kernels."""

from . import predict
from .batching import BatchStats, batch
from .empirical import (
    NtkImplementation,
    empirical_kernel_fn,
    empirical_nngp_fn,
    empirical_ntk_fn,
    empirical_ntk_vp_fn,
)
from .monte_carlo import monte_carlo_kernel_fn, monte_carlo_kernel_stats
from .store import TileStore
from .taylor import linearize, taylor_expand

__all__ = ['predict', 'batch', 'BatchStats', 'NtkImplementation', 'empirical_kernel_fn',
           'empirical_ntk_vp_fn',
           'empirical_nngp_fn', 'empirical_ntk_fn', 'monte_carlo_kernel_fn',
           'monte_carlo_kernel_stats', 'TileStore', 'linearize', 'taylor_expand']
