"""The rule tables of lowering, keyed by op kind and filled next to each op family.

- `KERNEL_RULES[kind](ctx, node, *in_kernels) -> Kernel`: the infinite-width translation rule.
- `FINITE_RULES[kind]`: the finite-network rule, a `FiniteRule(init, apply)`.

A missing rule is a loud error (`NoClosedFormError` / `NtcError`), never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import NoClosedFormError, NtcError

KERNEL_RULES: dict[str, Callable] = {}
FINITE_RULES: dict[str, FiniteRule] = {}
# extra keyword inputs of kernel_fn (e.g. Aggregate's `pattern`): name -> normaliser
# `fn(value, x1, x2) -> pytree` run before the jitted kernel function; rules read the result
# as `ctx.extra(name)`.
KERNEL_INPUTS: dict[str, Callable] = {}


@dataclass(frozen=True)
class FiniteRule:
    """`init(key, op, in_types) -> params` and `apply(op, params, inputs, ctx) -> output`, where
    `inputs` is the list of input arrays and `ctx` carries rng and apply kwargs."""

    init: Callable
    apply: Callable


def kernel_rule(*kinds: str):
    """Register the decorated function as the kernel rule of each op kind."""
    def deco(fn):
        for kind in kinds:
            KERNEL_RULES[kind] = fn
        return fn
    return deco


def finite_rule(*kinds: str, init: Callable | None = None):
    """Register the decorated apply function (and `init`, default: no parameters)."""
    def deco(fn):
        for kind in kinds:
            FINITE_RULES[kind] = FiniteRule(init=init or no_params, apply=fn)
        return fn
    return deco


def kernel_input(name: str):
    """Register the decorated function as the normaliser of kernel_fn's keyword input `name`."""
    def deco(fn):
        KERNEL_INPUTS[name] = fn
        return fn
    return deco


def no_params(key, op, in_types):
    return ()


def get_kernel_rule(node) -> Callable:
    try:
        return KERNEL_RULES[node.op.kind]
    except KeyError:
        raise NoClosedFormError(f'no kernel rule for {node.op.kind}', path=node.path,
                                hint='estimate its kernel with ntc.monte_carlo_kernel_fn') from None


def get_finite_rule(node) -> FiniteRule:
    try:
        return FINITE_RULES[node.op.kind]
    except KeyError:
        raise NtcError(f'{node.op.kind} has no finite-network form', path=node.path) from None
