"""`GlobalSelfAttention` (Hron et al. 2020, "Infinite attention").

Infinite-width limit after Hron et al. 2020 ("Infinite attention: NNGP and NTK for deep
attention networks", ICML), with neural_tangents' conventions for positional embeddings, bias
and masking.  Positions are flattened to one axis of size S; per example the *interpolated*
covariance is  C̃ = w_x·C + w_p·R, where R is the positional embeddings' covariance (identity, or
`pos_emb_decay_fn` of the L^p distance between positions) and (w_x, w_p) = (1, σ_pe²) for SUM,
(C/(C+P), σ_pe²·P/(C+P)) for CONCAT of P embedding channels to C input channels.

- `linear_scaling=True` (keys and queries tied, logits scaled by 1/n_chan_key): the logits
  converge to the deterministic σ_QK·C̃(x, x), so the attention weights G(x) = mech(σ_QK·C̃(x, x))
  are deterministic (softmax over keys) and the output is a random linear map of G·V:
      K'(x, y) = σ_OV²·G(x) K_v(x, y) G(y)ᵀ + σ_b²,
      Θ'(x, y) = σ_OV²·G(x) Θ_v(x, y) G(y)ᵀ + σ_b² + 2·σ_OV²·G(x) K_v(x, y) G(y)ᵀ
  (value and output weights each add one K term), K_v = K̃ with `val_pos_emb`, else K.
- `linear_scaling=False`, IDENTITY: the logits are Gaussian; with ⟨A, B⟩ the sum over all
  position pairs, K' = σ²⟨K̃, K_v⟩ K̃ + σ_b² and
      Θ' = σ²((⟨K̃, Θ̃_v⟩ + ⟨K̃_v, Θ̃⟩)·K̃ + ⟨K̃, K_v⟩(Θ̃ + 4 K̃)) + σ_b²,   σ = σ_QK σ_OV.
- `linear_scaling=False` with any other mechanism has no known closed form.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

import jax
import jax.numpy as jnp
from pydantic import Field, field_validator

from ..covariance.kernel import batch_diag
from ..covariance.masking import NEG_INF, side_masks, to_storage
from ..errors import ShapeError
from ..ir.op import NonNegFloat, Op, PosInt, upper_name
from ..ir.registry import finite_rule, kernel_rule, register_op
from ..ir.types import TensorType

AttentionMechanismName = Literal['SOFTMAX', 'IDENTITY', 'ABS', 'RELU']


PositionalEmbeddingName = Literal['NONE', 'SUM', 'CONCAT']


class AttentionMechanism(enum.Enum):
    """NT's `stax.AttentionMechanism`: the attention nonlinearity, accepted wherever its name
    is."""
    SOFTMAX = 'SOFTMAX'
    IDENTITY = 'IDENTITY'
    ABS = 'ABS'
    RELU = 'RELU'


class PositionalEmbedding(enum.Enum):
    """NT's `stax.PositionalEmbedding`: how positional embeddings enter attention, accepted
    wherever its name is."""
    NONE = 'NONE'
    SUM = 'SUM'
    CONCAT = 'CONCAT'


@register_op
class GlobalSelfAttention(Op):
    """Multi-head self-attention over all spatial positions (Hron et al. 2020, "Infinite
    attention").  Mixes every pair of positions, so it needs FULL spatial covariances."""

    op: Literal['GlobalSelfAttention'] = 'GlobalSelfAttention'
    n_chan_out: PosInt
    n_chan_key: PosInt
    n_chan_val: PosInt
    n_heads: PosInt
    linear_scaling: bool = True
    W_key_std: NonNegFloat = 1.0
    W_value_std: NonNegFloat = 1.0
    W_query_std: NonNegFloat = 1.0
    W_out_std: NonNegFloat = 1.0
    b_std: NonNegFloat | None = None
    attention_mechanism: AttentionMechanismName = 'SOFTMAX'
    pos_emb_type: PositionalEmbeddingName = 'NONE'
    pos_emb_p_norm: Annotated[float, Field(gt=0, allow_inf_nan=True)] = 2  # inf: max norm
    pos_emb_decay_fn: Callable | None = None
    n_chan_pos_emb: PosInt | None = None
    W_pos_emb_std: NonNegFloat = 1.0
    val_pos_emb: bool = False
    batch_axis: int = 0
    channel_axis: int = -1
    creates_fresh: ClassVar[bool] = True

    @field_validator('attention_mechanism', 'pos_emb_type', mode='before')
    @classmethod
    def _upper(cls, v):
        return upper_name(v)

    def input_axes(self, ndim: int) -> tuple[int, int]:
        return self.batch_axis % ndim, self.channel_axis % ndim

    def independent_of_input(self) -> bool:
        # the output projection W_out (or the bias) is random and its own
        return (self.W_out_std > 0 and self.W_value_std > 0) or bool(self.b_std)

    def no_kernel(self, ins):
        if self.linear_scaling or self.attention_mechanism == 'IDENTITY':
            return None
        return (f"GlobalSelfAttention(attention_mechanism='{self.attention_mechanism}', "
                f'linear_scaling=False, pos_emb_type={self.pos_emb_type!r}) has no known '
                'closed-form kernel (the softmax/abs/relu of a Gaussian logit matrix has no '
                'tractable expectation)',
                "use linear_scaling=True or attention_mechanism='IDENTITY', or estimate the "
                'kernel with ntc.monte_carlo_kernel_fn')

    def pos_emb_channels(self, in_channels: int) -> int:
        """Channels of the positional embedding (NT: the input's, unless given)."""
        return in_channels if self.n_chan_pos_emb is None else self.n_chan_pos_emb

    def infer(self, ins, path):
        t = ins[0]
        if not t.spatial_axes:
            raise ShapeError(f'GlobalSelfAttention needs an input with spatial axes (positions '
                             f'to attend over), got {t.describe()}', path=path,
                             hint='give the input a sequence or image axis, e.g. (N, L, C)')
        if self.pos_emb_type == 'SUM' and self.pos_emb_channels(t.channels) != t.channels:
            raise ShapeError(f"pos_emb_type='SUM' adds embeddings of {self.n_chan_pos_emb} "
                             f'channels to an input of {t.channels}', path=path,
                             hint="leave n_chan_pos_emb=None, or use pos_emb_type='CONCAT'")
        shape = list(t.shape)
        shape[t.channel] = self.n_chan_out
        return t.model_copy(update=dict(shape=tuple(shape), is_gaussian=True, is_fresh=True))

    def spatial_need(self, out, in_type):
        return 'FULL'  # every output position reads every pair of input positions

    def marginal_need(self, out, in_type):
        if self.linear_scaling:
            return 'FULL'  # the attention weights are functions of each example's covariance
        return None if out is None else 'FULL'

    def entry_flops(self, in_types, out_type):
        return 4.0 * math.prod(out_type.spatial_shape) + 2.0


# ----------------------------------------------------------------------------- rules


_HI = jax.lax.Precision.HIGHEST


def _flat(x, lead: int, ns: int):
    """(..., a, a', b, b') -> (..., S, S'): query positions, then key positions."""
    if x is None or x.ndim == 0:
        return x
    perm = (tuple(range(lead)) + tuple(lead + 2 * i for i in range(ns))
            + tuple(lead + 2 * i + 1 for i in range(ns)))
    x = jnp.transpose(x, perm)
    size = math.prod(x.shape[lead:lead + ns])
    return x.reshape(x.shape[:lead] + (size, size))


def _unflat(x, lead: int, sizes: tuple[int, ...]):
    ns = len(sizes)
    x = x.reshape(x.shape[:lead] + sizes + sizes)
    perm = tuple(range(lead)) + tuple(a for i in range(ns) for a in (lead + i, lead + ns + i))
    return jnp.transpose(x, perm)


def pos_emb_covariance(op, sizes: tuple[int, ...], dtype=jnp.float32):
    """R (S, S): covariance of the positional embeddings over positions of the given shape
    (flattened row-major): the identity, or decay_fn(Σ_axis |i - j|^p)."""
    size = math.prod(sizes)
    if op.pos_emb_decay_fn is None:
        return jnp.eye(size, dtype=dtype)
    coords = jnp.stack(jnp.unravel_index(jnp.arange(size), sizes), axis=-1)
    diff = jnp.abs(coords[:, None, :] - coords[None, :, :]).astype(dtype)
    return jnp.asarray(op.pos_emb_decay_fn(jnp.sum(diff ** op.pos_emb_p_norm, axis=-1)), dtype)


def interpolation_weights(op, in_channels: int) -> tuple[float, float]:
    """(w_x, w_p): weights of the input and of the positional covariance in C̃."""
    w_x, w_p = 1.0, op.W_pos_emb_std ** 2
    if op.pos_emb_type == 'CONCAT':
        p = op.pos_emb_channels(in_channels)
        w_x, w_p = in_channels / (in_channels + p), w_p * p / (in_channels + p)
    return w_x, w_p


def _mechanism(op, logits, key_mask):
    """Attention weights from logits (..., S, S'), masked keys excluded."""
    mech = op.attention_mechanism
    if key_mask is not None:
        fill = NEG_INF if mech == 'SOFTMAX' else 0.0
        logits = jnp.where(key_mask, jnp.asarray(fill, logits.dtype), logits)
    if mech == 'SOFTMAX':
        return jax.nn.softmax(logits, axis=-1)
    if mech == 'IDENTITY':
        return logits
    if mech == 'ABS':
        return jnp.abs(logits)
    return jax.nn.relu(logits)


@kernel_rule(GlobalSelfAttention)
def attention_kernel(ctx, node, k):
    """See the module docstring.  Needs FULL spatial covariances (and FULL marginals).  The
    check pass has rejected the combinations without a closed form
    (`GlobalSelfAttention.no_kernel`)."""
    op = node.op
    t = ctx.in_type(node)
    order = k.layout.axis_order
    ns = len(order)
    sizes = tuple(t.spatial_shape[i] for i in order)
    dtype = k.nngp.dtype

    K = _flat(k.nngp, 2, ns)
    Th = _flat(k.ntk, 2, ns) if (ctx.want_ntk and k.ntk is not None) else None
    if k.joint:
        C1 = C2 = batch_diag(K, 1)
    else:
        C1 = _flat(k.cov1, 1, ns)
        C2 = C1 if k.cov2 is None else _flat(k.cov2, 1, ns)

    m1, m2 = ctx_masks(ctx, node)
    m1, m2 = side_masks(k, m1, m2)
    keep1 = None if m1 is None else ~to_storage(m1, order).reshape(m1.shape[0], -1)
    keep2 = None if m2 is None else ~to_storage(m2, order).reshape(m2.shape[0], -1)
    if keep1 is None and keep2 is not None:
        keep1 = jnp.ones((K.shape[0], K.shape[-1]), bool)
    if keep2 is None and keep1 is not None:
        keep2 = jnp.ones((K.shape[1], K.shape[-1]), bool)

    w_x, w_p = interpolation_weights(op, t.channels)
    if op.pos_emb_type == 'NONE':
        R11 = R22 = R12 = None
    else:
        R = pos_emb_covariance(op, sizes, dtype)
        if keep1 is None:
            R11 = R22 = R[None]
            R12 = R[None, None]
        else:
            R11 = R[None] * (keep1[:, :, None] & keep1[:, None, :])
            R22 = R[None] * (keep2[:, :, None] & keep2[:, None, :])
            R12 = R[None, None] * (keep1[:, None, :, None] & keep2[None, :, None, :])

    def interp(x, r):
        return x if (x is None or r is None) else w_x * x + w_p * r

    C1i, C2i, Ki = interp(C1, R11), interp(C2, R22), interp(K, R12)
    zero = jnp.zeros_like(K)
    Thi = interp(zero if Th is None else Th, R12)
    vpe = op.val_pos_emb
    qk = op.W_query_std * op.W_key_std
    ov2 = (op.W_out_std * op.W_value_std) ** 2
    b2 = 0.0 if op.b_std is None else op.b_std ** 2

    if op.linear_scaling:
        G1 = _mechanism(op, qk * C1i, None if keep1 is None else ~keep1[:, None, :])
        G2 = G1 if (C2 is C1 and keep2 is keep1) else _mechanism(
            op, qk * C2i, None if keep2 is None else ~keep2[:, None, :])

        def cross(x):
            return jnp.einsum('isa,ijab,jtb->ijst', G1, x, G2, precision=_HI)

        def marginal(x, G):
            return jnp.einsum('isa,iab,itb->ist', G, x, G, precision=_HI)

        nngp_w = cross(Ki if vpe else K)
        nngp = ov2 * nngp_w + b2
        ntk = None
        if ctx.want_ntk:
            th = Thi if vpe else Th
            ntk = (0.0 if th is None else ov2 * cross(th)) + b2 + 2 * ov2 * nngp_w
        cov1 = None if k.cov1 is None else ov2 * marginal(C1i if vpe else C1, G1) + b2
        cov2 = None if k.cov2 is None else ov2 * marginal(C2i if vpe else C2, G2) + b2
    else:
        s2 = (qk * op.W_out_std * op.W_value_std) ** 2

        def dot(a, b, lead):
            return jnp.sum(a * b, axis=(-2, -1), keepdims=True) if lead else None

        d12 = dot(Ki, Ki if vpe else K, 2)
        nngp = s2 * d12 * Ki + b2
        ntk = None
        if ctx.want_ntk:
            th = zero if Th is None else Th
            if vpe or op.pos_emb_type == 'NONE':
                term = 2 * dot(Ki, Thi, 2)
            else:
                term = dot(Ki, th, 2) + dot(K, Thi, 2)
            ntk = s2 * (term * Ki + d12 * (Thi + 4 * Ki)) + b2
        cov1 = cov2 = None
        if k.cov1 is not None:
            cov1 = s2 * dot(C1i, C1i if vpe else C1, 1) * C1i + b2
        if k.cov2 is not None:
            cov2 = s2 * dot(C2i, C2i if vpe else C2, 1) * C2i + b2

    def back(x, lead):
        return None if x is None else _unflat(x, lead, sizes)

    return k.replace(nngp=back(nngp, 2), ntk=back(ntk, 2), cov1=back(cov1, 1),
                     cov2=back(cov2, 1))


def ctx_masks(ctx, node, slot: int = 0):
    """Canonical masks (m1, m2) of `node`'s input in `slot` (None, None when unmasked)."""
    masks = getattr(ctx, 'masks', None)
    if not masks:
        return None, None
    src = ctx.graph.inputs(node.id)[slot]
    return masks.get(src, (None, None))


def _attention_init(key, op, in_types):
    (t,) = in_types
    kq, kk, kv, ko, kb, kp = jax.random.split(key, 6)
    c_keys = c_vals = t.channels
    pos_emb = None
    if op.pos_emb_type != 'NONE':
        p = op.pos_emb_channels(t.channels)
        pos_emb = jax.random.normal(kp, _along_tensor(t, p))
        if op.pos_emb_type == 'CONCAT':
            c_keys += p
            c_vals += p if op.val_pos_emb else 0
    keys = jax.random.normal(kk, (op.n_heads, c_keys, op.n_chan_key))
    queries = None if op.linear_scaling else jax.random.normal(
        kq, (op.n_heads, c_keys, op.n_chan_key))
    values = jax.random.normal(kv, (op.n_heads, c_vals, op.n_chan_val))
    w_out = jax.random.normal(ko, (op.n_heads * op.n_chan_val, op.n_chan_out))
    b_shape = tuple(op.n_chan_out if i == t.channel else 1 for i in range(t.ndim))
    b = None if op.b_std is None else jax.random.normal(kb, b_shape)
    return (queries, keys, values, w_out, b, pos_emb)


def _along_tensor(t: TensorType, channels: int) -> tuple[int, ...]:
    """NT's shape of the positional embeddings of input `t`: batch axis 1, channel axis
    `channels`, the spatial axes as they are."""
    shape = list(t.shape)
    shape[t.batch], shape[t.channel] = 1, channels
    return tuple(shape)


@finite_rule(GlobalSelfAttention, init=_attention_init)
def attention_apply(op, params, inputs, ctx):
    """f(x) = concat_h[mech(σ_QK·Q_h K_hᵀ / (C·d_k^α)) V_h] W_out·σ_OV/sqrt(H·d_v·C) + σ_b·b,
    α = 1 (tied Q = K) with linear scaling, 1/2 otherwise; NTK parameterisation throughout."""
    (x,) = inputs
    w_queries, w_keys, w_values, w_out, b, pos_emb = params  # NT's order
    b_ax, c_ax = op.batch_axis % x.ndim, op.channel_axis % x.ndim
    x = jnp.moveaxis(x, (b_ax, c_ax), (0, -1))
    n, spatial = x.shape[0], x.shape[1:-1]
    mask = ctx.mask  # canonical (N, *spatial) position mask, or None
    h = x.reshape(n, -1, x.shape[-1])
    values_in = h
    if pos_emb is not None:
        pe = jnp.moveaxis(pos_emb, (b_ax, c_ax), (0, -1))[0]
        if op.pos_emb_decay_fn is not None:
            R = pos_emb_covariance(op, spatial, pe.dtype)
            L = jnp.linalg.cholesky(R + 1e-12 * jnp.eye(R.shape[0], dtype=R.dtype))
            pe = (L @ pe.reshape(-1, pe.shape[-1])).reshape(pe.shape)
        pe = jnp.broadcast_to(op.W_pos_emb_std * pe.reshape(1, -1, pe.shape[-1]),
                              (n,) + (h.shape[1], pe.shape[-1]))
        if mask is not None:
            pe = jnp.where(mask.reshape(n, -1, 1), 0.0, pe)
        if op.pos_emb_type == 'SUM':
            h = h + pe
        else:
            h = jnp.concatenate([h, pe], axis=-1)
        if op.val_pos_emb:
            values_in = h
    c_in = h.shape[-1]
    keys = jnp.einsum('nsc,hck->hnsk', h, w_keys, precision=_HI)
    queries = keys if op.linear_scaling else jnp.einsum('nsc,hck->hnsk', h, w_queries,
                                                       precision=_HI)
    values = jnp.einsum('nsc,hcv->hnsv', values_in, w_values, precision=_HI)
    scale = c_in * op.n_chan_key ** (1.0 if op.linear_scaling else 0.5)
    logits = (op.W_query_std * op.W_key_std / scale) * jnp.einsum(
        'hnsk,hntk->hnst', queries, keys, precision=_HI)
    key_mask = None if mask is None else mask.reshape(1, n, 1, -1)
    G = _mechanism(op, logits, key_mask)
    heads = jnp.einsum('hnst,hntv->nshv', G, values, precision=_HI)
    heads = heads.reshape(n, heads.shape[1], -1)
    out = heads @ w_out * (op.W_out_std * op.W_value_std
                                   / math.sqrt(op.n_chan_val * op.n_heads * values_in.shape[-1]))
    if b is not None:
        out = out + op.b_std * b.reshape(1, 1, -1)
    out = out.reshape((n,) + spatial + (op.n_chan_out,))
    return jnp.moveaxis(out, (0, -1), (b_ax, c_ax))
