"""Value types of the IR.

`TensorType` describes a value of the finite network (an activation tensor); `CovType` describes
how the compiler stores that value's covariance.  Every pass that decides something about shapes
or layouts reads and writes these two types, never loose flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

Spatial = Literal['FULL', 'DIAG', 'NONE']
SPATIAL_RANK = {'NONE': 0, 'DIAG': 1, 'FULL': 2}


class TensorType(BaseModel):
    """A finite-network activation: its shape (batch entry None), its axes, and its statistics.

    `is_gaussian`: the infinite-width value is a Gaussian process (it comes from a random affine
    map, possibly followed by linear ops).  `is_fresh`: its covariance with every value that is
    not computed from it is zero (it is a random affine image with its own weights), which is what
    makes summing or concatenating branches exact.
    """

    model_config = ConfigDict(frozen=True, extra='forbid')

    shape: tuple[int | None, ...]
    batch_axis: int = 0
    channel_axis: int = -1
    is_gaussian: bool = False
    is_fresh: bool = False

    @model_validator(mode='after')
    def _axes_in_range(self):
        n = len(self.shape)
        if n < 2:
            raise ValueError(f'a tensor needs a batch and a channel axis, got shape {self.shape}')
        b, c = self.batch_axis % n, self.channel_axis % n
        if b == c:
            raise ValueError(f'batch_axis and channel_axis are the same axis ({b})')
        return self

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def batch(self) -> int:
        """The batch axis as a non-negative position."""
        return self.batch_axis % self.ndim

    @property
    def channel(self) -> int:
        """The channel axis as a non-negative position."""
        return self.channel_axis % self.ndim

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Tensor positions of the spatial axes (everything but batch and channel), in order."""
        return tuple(i for i in range(self.ndim) if i not in (self.batch, self.channel))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self.spatial_axes)

    @property
    def channels(self) -> int:
        return self.shape[self.channel]

    def describe(self) -> str:
        dims = ['N' if i == self.batch else str(d) for i, d in enumerate(self.shape)]
        return '(' + ','.join(dims) + ')'


class CovType(BaseModel):
    """How a value's covariance is stored.

    - `batch`: 'DIAG' stores the cross kernel K(x1, x2) of shape (N1, N2, ...) plus, where needed,
      the per-example marginals cov1 (N1, ...) and cov2 (N2, ...).  'FULL' stores one joint
      Gram matrix over the concatenated batch [x1; x2] (the reference lowering).
    - `spatial`: layout of the cross kernel over space. 'FULL' keeps every pair of positions
      (s, s'), 'DIAG' only s == s' ("no-spatial"), 'NONE' means the value has no spatial axes.
    - `marginal`: spatial layout of the kept marginals cov1/cov2, or None when nothing downstream
      reads them.
    - `axis_order`: storage order of the logical spatial axes (indices into the tensor's spatial
      axes).  FULL stores each pair adjacent: (N1, N2, a, a', b, b', ...) for order (a, b).
    - `readout`: the number of output classes C when this value is a readout whose covariance is
      Σ ⊗ I_C; only the block Σ is ever stored.
    """

    model_config = ConfigDict(frozen=True, extra='forbid')

    batch: Literal['FULL', 'DIAG'] = 'DIAG'
    spatial: Spatial = 'NONE'
    marginal: Spatial | None = None
    axis_order: tuple[int, ...] = ()
    readout: int | None = None

    @model_validator(mode='after')
    def _order_is_permutation(self):
        if sorted(self.axis_order) != list(range(len(self.axis_order))):
            raise ValueError(f'axis_order {self.axis_order} is not a permutation')
        if (self.spatial == 'NONE') != (len(self.axis_order) == 0):
            raise ValueError('spatial NONE exactly when there are no spatial axes')
        return self

    def describe(self) -> str:
        if self.batch == 'FULL':
            text = 'joint'
        else:
            text = 'cross'
        text += f' sp={self.spatial}'
        if self.spatial != 'NONE':
            text += ' ord=' + ''.join('abcdefgh'[i] for i in self.axis_order)
        if self.batch == 'DIAG':
            text += f' var={self.marginal or "-"}'
        if self.readout is not None:
            text += f' Σ⊗I{self.readout}'
        return text
