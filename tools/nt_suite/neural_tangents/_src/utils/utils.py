"""NT-private helpers; only a generic one the public tests use in their test functions."""
import itertools


def zip_flat(a, b):
    return tuple(itertools.chain.from_iterable(zip(a, b)))
