"""Runtime: running plans at scale, inference, Monte-Carlo and empirical kernels."""
