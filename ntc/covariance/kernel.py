"""`Kernel`: the value kernel rules pass between them, a pytree whose layout is static.

Storage, for a value whose spatial axes are stored in `layout.axis_order` = (a, b, ...):

| layout                    | nngp / ntk              | cov1 (cov2 alike)                    |
| ------------------------- | ----------------------- | ------------------------------------ |
| batch DIAG, spatial NONE  | (N1, N2)                | (N1,)                                |
| batch DIAG, spatial DIAG  | (N1, N2, a, b)          | (N1, a, b) marginal DIAG, or         |
| batch DIAG, spatial FULL  | (N1, N2, a, a', b, b')  | (N1, a, a', b, b') marginal FULL     |
| batch FULL (reference)    | (N, N, a, a', b, b') over [x1; x2]; no cov1/cov2               |

Rules read variances through `cross_vars` / `marginal_vars`, which return arrays that broadcast
against the covariance they belong to, so one rule serves every layout.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, fields, replace

import jax
import jax.numpy as jnp

from ..ir.types import CovType


def _static(default=None, factory=None):
    """A field kept in the pytree's static aux data, marked as NT marks it (`pytree_node`
    False in its metadata: NT's tests compare such fields with `==`, not as arrays)."""
    if factory is not None:
        return field(default_factory=factory, metadata={'pytree_node': False})
    return field(default=default, metadata={'pytree_node': False})


@dataclass(frozen=True)
class Kernel:
    """Covariances of one value.  `nngp`/`ntk` are cross kernels (or the joint one), `cov1`/
    `cov2` the per-example marginals (cov2 is None when x2 is x1).

    The fields from `x1_is_x2` to `mask2` are neural_tangents' `Kernel` fields, in NT's order and
    with NT's meaning; kernel rules read only `layout` (how the arrays are stored) and `n1`.  A
    kernel returned by `kernel_fn` carries NT's values (the finite output's `shape1`/`shape2`,
    axes and Gaussianity); ntc keeps spatial axes in tensor order, so `is_reversed` is False."""

    nngp: jax.Array | None
    ntk: jax.Array | None = None
    cov1: jax.Array | None = None
    cov2: jax.Array | None = None
    x1_is_x2: bool = _static(False)
    is_gaussian: bool = _static(False)
    is_reversed: bool = _static(False)
    is_input: bool = _static(False)
    diagonal_batch: bool = _static(True)  # cov1/cov2 are (N, ...), not (N, N, ...)
    diagonal_spatial: bool = _static(False)  # nngp/ntk keep only the spatial diagonal
    shape1: tuple[int, ...] | None = _static()  # the finite output's shape on x1 (x2)
    shape2: tuple[int, ...] | None = _static()
    batch_axis: int = _static(0)  # of shape1/shape2
    channel_axis: int = _static(-1)
    mask1: jax.Array | None = None  # NT's masks of the output positions (ntc: always None)
    mask2: jax.Array | None = None
    # How the arrays are stored, and the rows of x1 in the joint (batch FULL) layout: ntc's own
    # metadata, kept out of `dataclasses.fields` (what NT code walks) and in the static aux data.
    layout: InitVar[CovType | None] = None
    n1: InitVar[int | None] = None

    def __post_init__(self, layout, n1):
        object.__setattr__(self, 'layout', CovType() if layout is None else layout)
        object.__setattr__(self, 'n1', n1)

    def replace(self, **kw) -> Kernel:
        """A copy with the given fields (NT's fields, `layout` or `n1`) changed."""
        kw.setdefault('layout', self.layout)
        kw.setdefault('n1', self.n1)
        return replace(self, **kw)

    @property
    def n_spatial(self) -> int:
        return len(self.layout.axis_order)

    @property
    def joint(self) -> bool:
        return self.layout.batch == 'FULL'

    # -- variances ----------------------------------------------------------------------------

    def vars(self):
        """(v1, v2): per-position variances of x1 and x2, shaped (N, s...) in storage order.
        In the joint layout both are the variances of the concatenated batch."""
        ns = self.n_spatial
        if self.joint:
            var = batch_diag(spatial_diag(self.nngp, ns, self.layout.spatial, lead=2), ns)
            return var, var
        v1 = marginal_var(self.cov1, ns, self.layout.marginal)
        v2 = v1 if self.cov2 is None else marginal_var(self.cov2, ns, self.layout.marginal)
        return v1, v2

    def expand_cross(self, v1, v2):
        """Place per-position variances so they broadcast against `nngp`."""
        ns, sp = self.n_spatial, self.layout.spatial
        return expand(v1, ns, sp, side=0, lead=2), expand(v2, ns, sp, side=1, lead=2)

    def expand_marginal(self, v):
        """Place per-position variances (N, s...) to broadcast against a marginal, both sides."""
        ns, mg = self.n_spatial, self.layout.marginal
        return expand(v, ns, mg, side=0, lead=1), expand(v, ns, mg, side=1, lead=1)

    def cross_vars(self):
        """(q1, q2): variances of the left and right argument of every nngp entry."""
        return self.expand_cross(*self.vars())

    def marginal_vars(self, cov):
        """(qa, qb) for a marginal array `cov` (N, ...): its own variances, broadcastable."""
        return self.expand_marginal(marginal_var(cov, self.n_spatial, self.layout.marginal))

    # -- a kernel_fn result as the input of another kernel_fn (NT's kernel composition) -------

    @property
    def returned_layout(self) -> CovType:
        """The layout of a kernel as `kernel_fn` returns it, read from NT's fields: batch DIAG,
        spatial axes in tensor order, FULL or (`diagonal_spatial`) DIAG, and marginals stored
        as `cov1` says (None when absent)."""
        ns = len(self.shape1) - 2
        spatial = 'NONE' if ns == 0 else 'DIAG' if self.diagonal_spatial else 'FULL'
        marginal = None
        if self.cov1 is not None:
            marginal = 'NONE' if ns == 0 else 'DIAG' if self.cov1.ndim == 1 + ns else 'FULL'
        return CovType(batch='DIAG', spatial=spatial, marginal=marginal,
                       axis_order=tuple(range(ns)))

    def stored_as(self, want: CovType) -> Kernel:
        """This kernel, a `kernel_fn` result (see `returned_layout`), in the layout `want`: its
        spatial axis pairs moved to `want.axis_order`, then diagonals taken or marginals dropped
        where `want` needs less (`adapt`)."""
        have = self.returned_layout
        order = want.axis_order

        def perm(x, lead: int, spatial: str | None):
            if x is None or spatial in (None, 'NONE') or order == have.axis_order:
                return x
            width = 2 if spatial == 'FULL' else 1
            axes = [lead + width * o + j for o in order for j in range(width)]
            return jnp.transpose(x, tuple(range(lead)) + tuple(axes))

        k = self.replace(nngp=perm(self.nngp, 2, have.spatial), ntk=perm(self.ntk, 2, have.spatial),
                         cov1=perm(self.cov1, 1, have.marginal),
                         cov2=perm(self.cov2, 1, have.marginal),
                         layout=have.model_copy(update=dict(axis_order=order)))
        return adapt(k, want)

    def map_covariances(self, fn) -> Kernel:
        """Apply `fn` to nngp, cov1 and cov2 (not ntk)."""
        return self.replace(nngp=_opt(fn, self.nngp), cov1=_opt(fn, self.cov1),
                            cov2=_opt(fn, self.cov2))


_DATA = tuple(f.name for f in fields(Kernel) if f.metadata.get('pytree_node', True))
_META = tuple(f.name for f in fields(Kernel) if not f.metadata.get('pytree_node', True))


def _flatten(k: Kernel):
    children = tuple((jax.tree_util.GetAttrKey(name), getattr(k, name)) for name in _DATA)
    return children, tuple(getattr(k, name) for name in _META) + (k.layout, k.n1)


def _unflatten(meta, children) -> Kernel:
    *static, layout, n1 = meta
    return Kernel(**dict(zip(_DATA, children)), **dict(zip(_META, static)), layout=layout, n1=n1)


jax.tree_util.register_pytree_with_keys(Kernel, _flatten, _unflatten)


def _opt(fn, x):
    return None if x is None else fn(x)


# ----------------------------------------------------------------------------- layout helpers
# `lead` is the number of leading batch axes (2 for cross/joint kernels, 1 for marginals).


def spatial_diag(x, ns: int, spatial: str, lead: int):
    """FULL (…, a, a', b, b') -> (…, a, b); DIAG/NONE unchanged."""
    if spatial != 'FULL':
        return x
    for i in range(ns):
        # after i diagonals, the next pair sits at lead + i, lead + i + 1
        x = jnp.moveaxis(jnp.diagonal(x, axis1=lead + i, axis2=lead + i + 1), -1, lead + i)
    return x


def batch_diag(x, ns: int):
    """(N, N, s...) -> (N, s...)."""
    return jnp.moveaxis(jnp.diagonal(x, axis1=0, axis2=1), -1, 0)


def marginal_var(cov, ns: int, marginal: str | None):
    """Per-position variances (N, s...) from a marginal stored FULL or DIAG."""
    return spatial_diag(cov, ns, marginal, lead=1)


def expand(var, ns: int, spatial: str, side: int, lead: int):
    """Place per-position variances (N, s...) so they broadcast against a covariance with
    `lead` batch axes and the given spatial layout; `side` 0 is the row (first) argument.
    Scalars (symbolic kernels of single examples) pass through."""
    if not hasattr(var, 'shape'):
        return var
    if lead == 2:
        var = var[:, None] if side == 0 else var[None, :]
    if spatial != 'FULL':
        return var
    shape = list(var.shape[:lead])
    for size in var.shape[lead:]:
        shape += [size, 1] if side == 0 else [1, size]
    return var.reshape(shape)


def diag_to(x, ns: int, have: str, want: str, lead: int):
    """Convert a covariance stored with spatial layout `have` to the weaker layout `want`."""
    if have == want or want == 'NONE':
        return x
    if have == 'FULL' and want == 'DIAG':
        return spatial_diag(x, ns, 'FULL', lead)
    raise AssertionError(f'cannot convert spatial layout {have} to {want}')


def adapt(k: Kernel, want: CovType) -> Kernel:
    """Bring `k` to the (weaker or equal) layout `want`: drop what is not needed, take
    diagonals where a consumer needs less than what is stored."""
    have = k.layout
    if have == want:
        return k
    if have.axis_order != want.axis_order:
        raise AssertionError(f'axis order {have.axis_order} reaches a consumer expecting '
                             f'{want.axis_order} without a Transpose')
    ns = len(want.axis_order)
    nngp, ntk, cov1, cov2 = k.nngp, k.ntk, k.cov1, k.cov2
    if have.spatial != want.spatial:
        nngp = diag_to(nngp, ns, have.spatial, want.spatial, 2)
        ntk = None if ntk is None else diag_to(ntk, ns, have.spatial, want.spatial, 2)
    if want.batch == 'DIAG':
        if want.marginal is None:
            cov1 = cov2 = None
        elif have.marginal != want.marginal:
            cov1 = diag_to(cov1, ns, have.marginal, want.marginal, 1)
            cov2 = None if cov2 is None else diag_to(cov2, ns, have.marginal, want.marginal, 1)
    return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, layout=want)


def reduce_spatial(k: Kernel, fn) -> Kernel:
    """`k` with its spatial axes reduced by `fn` (jnp.mean, jnp.sum) in every covariance: a
    DIAG layout's mean over positions, or a FULL layout's over pairs; the layout becomes NONE."""
    lay = k.layout.model_copy(update=dict(spatial='NONE', axis_order=(),
                                          marginal=None if k.layout.marginal is None else 'NONE'))

    def red(x, lead):
        return None if x is None else fn(x, axis=tuple(range(lead, x.ndim)))

    return k.replace(nngp=red(k.nngp, 2), ntk=red(k.ntk, 2), cov1=red(k.cov1, 1),
                     cov2=red(k.cov2, 1), layout=lay)
