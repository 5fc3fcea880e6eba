"""The layer registry: every op class by kind, and the rules of each kind.

A family module under `ntc.layers` (or a user's own module) registers its layers here, next to
their models:

- `@register_op` on an `Op` subclass: its kind can be parsed from specs and saved graphs;
- `@kernel_rule(Op, ...)`: `fn(ctx, node, *in_kernels) -> Kernel`, the infinite-width rule;
- `@finite_rule(Op, ..., init=...)`: `apply(op, params, inputs, ctx)` and
  `init(key, op, in_types) -> params`, the finite network;
- `@mask_rule(Op, ...)`: `fn(op, masks, in_types, out_type) -> mask`, how the layer moves the
  position masks of `mask_constant` (default: a shape-preserving layer keeps them);
- `@kernel_input(name)`: a normaliser `fn(value, x1, x2)` of an extra keyword input of
  kernel_fn (Aggregate's `pattern`), read by rules as `ctx.extra(name)`.

Rules are keyed by kind, so a layer without a rule is found at compile time (the `check` pass
reads `has_kernel`) and a missing rule is a loud error, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import NoClosedFormError, NtcError
from .op import Op

OPS: dict[str, type[Op]] = {}
KERNEL_RULES: dict[str, Callable] = {}
FINITE_RULES: dict[str, FiniteRule] = {}
MASK_RULES: dict[str, Callable] = {}
KERNEL_INPUTS: dict[str, Callable] = {}


@dataclass(frozen=True)
class FiniteRule:
    """`init(key, op, in_types) -> params` and `apply(op, params, inputs, ctx) -> output`, where
    `inputs` is the list of input arrays and `ctx` carries rng and apply kwargs."""

    init: Callable
    apply: Callable


def kind_of(op: type[Op] | str) -> str:
    """The kind an op class (its `op` field's default) or a kind string names."""
    return op if isinstance(op, str) else op.model_fields['op'].default


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator: make `cls` known by its kind (specs, saved graphs)."""
    kind = kind_of(cls)
    if OPS.get(kind, cls) is not cls:
        raise NtcError(f'two layers named {kind!r}: {OPS[kind].__module__}.{OPS[kind].__name__} '
                       f'and {cls.__module__}.{cls.__name__}', hint='give the new layer its own '
                       "`op: Literal['...']` name")
    OPS[kind] = cls
    return cls


def kernel_rule(*ops: type[Op] | str):
    """Register the decorated function as the kernel rule of each op."""
    def deco(fn):
        for op in ops:
            KERNEL_RULES[kind_of(op)] = fn
        return fn
    return deco


def no_params(key, op, in_types):
    return ()


def finite_rule(*ops: type[Op] | str, init: Callable | None = None):
    """Register the decorated apply function (and `init`, default: no parameters)."""
    def deco(fn):
        for op in ops:
            FINITE_RULES[kind_of(op)] = FiniteRule(init=init or no_params, apply=fn)
        return fn
    return deco


def mask_rule(*ops: type[Op] | str):
    """Register the decorated function as the mask rule of each op."""
    def deco(fn):
        for op in ops:
            MASK_RULES[kind_of(op)] = fn
        return fn
    return deco


def kernel_input(name: str):
    """Register the decorated function as the normaliser of kernel_fn's keyword input `name`."""
    def deco(fn):
        KERNEL_INPUTS[name] = fn
        return fn
    return deco


def has_kernel(op: Op) -> bool:
    """True when `op`'s kind has a kernel rule (the network input needs none)."""
    return op.kind in KERNEL_RULES or op.arity == 0


def op_from_dict(data: dict) -> Op:
    """Parse one op from its dict form (validated; raises pydantic.ValidationError, or NtcError
    for an unknown kind)."""
    kind = data.get('op') if isinstance(data, dict) else None
    if kind not in OPS:
        raise NtcError(f'unknown layer kind {kind!r}',
                       hint=f'known kinds: {", ".join(sorted(OPS))}')
    return OPS[kind].model_validate(data)


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
