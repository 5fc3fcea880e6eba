"""Options shared by the passes of one compilation."""

from __future__ import annotations

from dataclasses import dataclass

KERNEL_NAMES = ('nngp', 'ntk', 'cov1', 'cov2')

#: what else a kernel_fn's `get` may name (NT's Kernel.shape1/shape2): the finite network's
#: output shapes on x1 and x2, which come from shape inference, not from a plan
SHAPE_NAMES = ('shape1', 'shape2')


@dataclass(frozen=True)
class Options:
    """`get`: the kernels asked for.  `reference`: compile the reference plan (joint batch
    Gram matrix, FULL spatial layouts, no folding, nothing fused).  `force_full`: FULL spatial
    layouts everywhere (for layout-invariance checks).  `roll_loops`: run runs of identical
    layers as one loop (`passes.roll_loops`).  `diagonal_spatial`: return only the spatial
    diagonal of the output kernels, (N1, N2, s1, s2, ...) (NT's `diagonal_spatial=True`)."""

    get: tuple[str, ...] = ('nngp', 'ntk')
    reference: bool = False
    force_full: bool = False
    roll_loops: bool = True
    diagonal_spatial: bool = False

    @property
    def want_ntk(self) -> bool:
        return 'ntk' in self.get

    @property
    def want_marginals(self) -> bool:
        return 'cov1' in self.get or 'cov2' in self.get
