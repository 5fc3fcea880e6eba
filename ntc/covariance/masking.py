"""Masking: variable-length inputs via `mask_constant=` on `kernel_fn` and `apply_fn`.

Semantics (those of neural_tangents' `mask_constant`): an input entry equal to `mask_constant`
(or NaN when the constant is NaN) is masked.  A *position* (all channels at one spatial index of
one example) is masked when every channel there is masked; masked entries of the input are
replaced by 0.  Each layer then:

- propagates the position mask to its output with its rule in `MASK_RULES` (elementwise and
  channel-mixing layers keep it; strided windows keep the mask of each window's centre; global
  pooling masks an example only when all its positions are; fan-ins mask a position masked in
  every branch);
- sees its masked input positions as zero activations: the covariance entries that involve a
  masked position are zero (in the finite network every layer's input is zeroed there);
- excludes masked positions from its statistics: GlobalAvgPool averages over unmasked
  positions, LayerNorm normalises with the mean over unmasked positions, attention gives masked
  keys zero weight (their logits are -1e20 under SOFTMAX, 0 otherwise).

Masks are boolean arrays (N, *spatial) in the tensor's own spatial order ("canonical"); kernel
code moves them to a covariance's storage order with `to_storage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..errors import NtcError
from ..ir.registry import MASK_RULES, kernel_input
from ..ir.types import TensorType
from .kernel import Kernel, expand

#: logit given to masked keys under SOFTMAX (finite, so an all-masked row stays defined)
NEG_INF = -1e20




@kernel_input('mask_constant')
def _normalise_mask_constant(value, x1, x2):
    return None if value is None else jnp.asarray(value, dtype=jnp.result_type(x1))


@jax.tree_util.register_dataclass
@dataclass
class MaskedArray:
    """An `apply_fn` output with its mask (neural_tangents' `MaskedArray`): `masked_value` is
    the output, `mask` is True at masked entries (broadcastable to the output)."""

    masked_value: jax.Array
    mask: jax.Array


def entry_mask(x, mask_constant):
    """True where `x` equals `mask_constant` (or is NaN, for a NaN constant)."""
    c = jnp.asarray(mask_constant, dtype=x.dtype)
    return jnp.where(jnp.isnan(c), jnp.isnan(x), x == c)


def mask_input(x, t: TensorType, mask_constant):
    """(x with masked entries zeroed, its canonical position mask (N, *spatial))."""
    entries = entry_mask(x, mask_constant)
    x = jnp.where(entries, jnp.zeros((), x.dtype), x)
    pos = jnp.all(entries, axis=t.channel)
    return x, jnp.moveaxis(pos, t.batch if t.batch < t.channel else t.batch - 1, 0)


def mask_inputs(t: TensorType, x1, x2, mask_constant):
    """(x1, x2) with masked entries zeroed, and their position masks (m1, m2); m2 is m1 when
    x2 is None."""
    x1, m1 = mask_input(x1, t, mask_constant)
    if x2 is None:
        return x1, None, (m1, m1)
    x2, m2 = mask_input(x2, t, mask_constant)
    return x1, x2, (m1, m2)


def output_masks(graph, node, masks: dict):
    """(m1, m2) of `node`'s output from its inputs' entries in `masks`."""
    srcs = graph.inputs(node.id)
    pairs = [masks.get(s, (None, None)) for s in srcs]
    types = [graph.node(s).ttype for s in srcs]
    return (propagate(node, [p[0] for p in pairs], types),
            propagate(node, [p[1] for p in pairs], types))


def to_tensor(m, t: TensorType, shape=None):
    """A canonical mask (N, *spatial) as a tensor mask: batch and a size-1 channel axis at
    their positions in `t` (broadcast to `shape` when given)."""
    m = jnp.moveaxis(m[..., None], (0, m.ndim), (t.batch, t.channel))
    return m if shape is None else jnp.broadcast_to(m, shape)


def zero_tensor(x, m, t: TensorType):
    """`x` (a finite activation of type `t`) with its masked positions set to 0."""
    if m is None:
        return x
    return jnp.where(to_tensor(m, t), jnp.zeros((), x.dtype), x)


def to_storage(m, order: tuple[int, ...]):
    """A canonical mask (N, *spatial) with its spatial axes in storage `order`."""
    return jnp.transpose(m, (0,) + tuple(1 + i for i in order))


def propagate(node, masks: list, in_types: list[TensorType]):
    """The output position mask of `node` given its inputs' (None: nothing masked)."""
    if all(m is None for m in masks):
        return None
    rule = MASK_RULES.get(node.op.kind)
    if rule is not None:
        try:
            return rule(node.op, masks, in_types, node.ttype)
        except NtcError as e:      # a rule knows the op, not where it sits: name the layer
            if e.path is not None:
                raise
            raise type(e)(e.message, path=node.path, hint=e.hint) from None
    t, out = in_types[0], node.ttype
    if len(masks) == 1 and t.spatial_shape == out.spatial_shape:
        return masks[0]  # spatially local, shape-preserving: every position keeps its mask
    raise NtcError(f'masked inputs (mask_constant=...) cannot pass through {node.op.kind}: it has '
                   'no rule saying which output positions are masked', path=node.path,
                   hint='apply this layer before masking matters, or drop mask_constant')


def zero_masked(k: Kernel, m1, m2) -> Kernel:
    """Zero every covariance entry that involves a masked position (canonical masks m1 of x1
    and m2 of x2; m2 is m1 when x2 is x1)."""
    if m1 is None and m2 is None:
        return k
    lay = k.layout
    ns = len(lay.axis_order)
    ma, mb = side_masks(k, m1, m2)

    def keep(m):
        return None if m is None else ~to_storage(m, lay.axis_order)

    ka, kb = keep(ma), keep(mb)

    def cross(x):
        if x is None or getattr(x, 'ndim', 0) == 0:
            return x
        w = True
        if ka is not None:
            w = w & expand(ka, ns, lay.spatial, side=0, lead=2)
        if kb is not None:
            w = w & expand(kb, ns, lay.spatial, side=1, lead=2)
        return jnp.where(w, x, jnp.zeros((), x.dtype))

    def marg(x, m):
        if x is None or m is None:
            return x
        kk = keep(m)
        w = (expand(kk, ns, lay.marginal, side=0, lead=1)
             & expand(kk, ns, lay.marginal, side=1, lead=1))
        return jnp.where(w, x, jnp.zeros((), x.dtype))

    return k.replace(nngp=cross(k.nngp), ntk=cross(k.ntk), cov1=marg(k.cov1, m1),
                     cov2=marg(k.cov2, m2))


def side_masks(k: Kernel, m1, m2):
    """Canonical masks of the rows and the columns of `k.nngp` (the joint layout stacks x1 and
    x2 on both sides)."""
    if not k.joint or (m1 is None and m2 is None):
        return m1, m2
    if m1 is None:
        m1 = jnp.zeros_like(m2)
    if m2 is None:
        m2 = jnp.zeros_like(m1)
    m = m1 if k.x1_is_x2 else jnp.concatenate([m1, m2])
    return m, m
























# ----------------------------------------------------------------------------- statistics


def input_masks(ctx, node, slot: int = 0):
    """Canonical masks (m1, m2) of `node`'s input in `slot` ((None, None): unmasked)."""
    masks = getattr(ctx, 'masks', None)
    if not masks:
        return None, None
    return masks.get(ctx.graph.inputs(node.id)[slot], (None, None))


def masked_mean(v, m, order: tuple[int, ...], axes: tuple[int, ...]):
    """Mean of `v` (N, s...) in storage `order` over `axes`, counting unmasked positions only
    (at least one); masked entries of `v` must already be zero."""
    if m is None:
        return jnp.mean(v, axis=axes, keepdims=True)
    keep = (~to_storage(m, order)).astype(v.dtype)
    count = jnp.maximum(jnp.sum(keep, axis=axes, keepdims=True), 1)
    return jnp.sum(v, axis=axes, keepdims=True) / count


def unmasked_counts(m):
    """Unmasked positions per example (N,) of a canonical mask, at least 1."""
    return jnp.maximum(jnp.sum(~m.reshape(m.shape[0], -1), axis=1), 1)
