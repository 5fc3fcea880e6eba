"""Window geometry shared by convolutions and pooling: output sizes, SAME padding, window
checks, the window-op base class and the mask of a strided window op."""

from __future__ import annotations

import enum
from typing import Literal

import jax.numpy as jnp
from pydantic import field_validator

from ..errors import ShapeError
from ..ir.op import Op, PosInt, upper_name
from ..ir.types import TensorType

PaddingName = Literal['VALID', 'SAME', 'CIRCULAR']


class Padding(enum.Enum):
    """NT's `stax.Padding`: a window op's padding, accepted wherever its name is."""
    CIRCULAR = 'CIRCULAR'
    SAME = 'SAME'
    VALID = 'VALID'


SPATIAL_LETTERS = 'DHW'


def default_dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
    """NHWC-style specs for `n_spatial` spatial axes (NT's default)."""
    if n_spatial <= 3:  # ('NC', 'IO', 'NC') for a filter without spatial axes (a Dense)
        letters = SPATIAL_LETTERS[len(SPATIAL_LETTERS) - n_spatial:]
    else:
        letters = ''.join(chr(ord('A') + i) for i in range(n_spatial))
    return 'N' + letters + 'C', letters + 'IO', 'N' + letters + 'C'


def out_size(n: int, k: int, s: int, padding: str) -> int:
    """Output length of a window of size k and stride s over n positions."""
    if padding == 'VALID':
        return (n - k) // s + 1
    return -(-n // s)  # SAME and CIRCULAR: ceil(n / s)


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """(low, high) zero padding of XLA's SAME convention."""
    total = max((out_size(n, k, s, 'SAME') - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class _WindowBase(Op):
    """Fields and checks shared by convolutions and pooling."""

    strides: tuple[PosInt, ...] | None = None
    padding: PaddingName = 'VALID'

    @field_validator('padding', mode='before')
    @classmethod
    def _upper(cls, v):
        return upper_name(v)

    def window(self) -> tuple[int, ...]:
        raise NotImplementedError

    def reads_neighbours(self) -> bool:
        return any(k > 1 for k in self.window())

    def stride_tuple(self) -> tuple[int, ...]:
        return self.strides if self.strides is not None else (1,) * len(self.window())

    def kernel_key(self):
        return self.model_copy(update=dict(strides=self.stride_tuple()))

    def check_window(self, sizes: tuple[int, ...], path: str, what: str):
        win, strides = self.window(), self.stride_tuple()
        if len(strides) != len(win):
            raise ShapeError(f'{len(strides)} strides for a {len(win)}-d window', path=path)
        for n, k in zip(sizes, win):
            if self.padding == 'VALID' and k > n:
                raise ShapeError(f'the {what} ({k}) is larger than the input ({n}) under VALID '
                                 'padding', path=path, hint="use padding='SAME' or a smaller "
                                 f'{what}')
        check_window_bound(win, sizes, self.padding, path, what)


def check_window_bound(win: tuple[int, ...], sizes: tuple[int, ...], padding: str, path: str,
                       what: str) -> None:
    """Refuse a window longer than max(2n, WINDOW_SLACK) over an axis of n positions: its outer
    taps read nothing but padding, and lowering costs time linear in the window's length."""
    for n, k in zip(sizes, win):
        if n is not None and k > max(2 * n, WINDOW_SLACK):
            raise ShapeError(f'the {what} ({k}) is far larger than the input ({n}) under '
                             f'{padding} padding: taps beyond {2 * n} read only padding',
                             path=path, hint=f'use a {what} of at most {max(2 * n, WINDOW_SLACK)}')


#: windows up to this long are accepted over any input (e.g. 3×3 filters on a 1×1 image)
WINDOW_SLACK = 32


# ----------------------------------------------------------------------------- masks


def _axis_center_index(n_out: int, k: int, s: int, lo: int):
    """Input index of each output's window centre: -lo + (k - 1)//2 + o·s."""
    return -lo + (k - 1) // 2 + s * jnp.arange(n_out)


def window_mask(m, in_type: TensorType, out_type: TensorType, windows):
    """Mask of a strided window op: each output position takes its window centre's mask (the
    identity for stride-1 SAME windows).  `windows` lists, per input spatial index i,
    (i, output spatial index j, window size, stride, low padding)."""
    perm = [0] * (1 + len(windows))
    for i, j, k, s, lo in windows:
        n_in, n_out = in_type.spatial_shape[i], out_type.spatial_shape[j]
        perm[1 + j] = 1 + i
        if n_in == n_out and s == 1 and lo == (k - 1) // 2:
            continue
        idx = jnp.clip(_axis_center_index(n_out, k, s, lo), 0, n_in - 1)
        m = jnp.take(m, idx, axis=1 + i)
    return jnp.transpose(m, perm)


def _lo_pad(op, n: int, k: int, s: int) -> int:
    return 0 if op.padding == 'VALID' else same_pads(n, k, s)[0]
