"""`Op`: the base of every layer's model, and the one place its traits are declared.

A layer is a frozen pydantic model holding the layer's arguments (validated, so a bad value is
rejected with the field's name); its `op` field (a Literal) names its kind.  The passes read a
layer only through the traits below, each declared here once with its default, never through
its kind:

- `arity`: how many inputs it takes (None: a fan-in of two or more);
- `infer`: its shape rule, TensorType(s) in -> TensorType out;
- `spatial_need` / `marginal_need`: the covariance layout it needs from its input, given the
  layout its consumers need from its output (the `choose_layouts` pass);
- `flops_per_entry` / `entry_flops`: the cost of its kernel rule per stored entry (`cost`);
- `needs_joint_batch`: it needs the joint (batch FULL) layout (`choose_layouts`);
- `needs_gaussian`, `independent_of_input`, `branch_need`, `no_kernel` (the `check` pass);
- `batch_size`, `moves_examples`: how it maps the examples of its inputs to its output's;
- `input_axes`, `input_specs`, `natural_output`, `readout`, `serializable`, `in_specs`.

The layer's rules (kernel, finite network, masks) live next to its model in its family module
under `ntc.layers`, registered with the decorators of `ntc.ir.registry`.  This module imports
nothing above the IR: it is readable without JAX.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .types import SPATIAL_RANK, Spatial, TensorType

NonNegFloat = Annotated[float, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]


def upper_name(v):
    """A choice given as a string or an enum member (ntc's or NT's, valued by its name), as the
    upper-case name an op field stores; anything else unchanged (for pydantic to refuse)."""
    v = v.value if isinstance(v, enum.Enum) else v
    return v.upper() if isinstance(v, str) else v


def max_spatial(*levels: Spatial | None) -> Spatial | None:
    """The strongest of several spatial layout requirements (None: nothing required)."""
    present = [lv for lv in levels if lv is not None]
    return max(present, key=SPATIAL_RANK.__getitem__) if present else None


class Op(BaseModel):
    """Base of every op model."""

    # every float field must be finite (W_std=inf, LeakyRelu(nan), 1e400 in a spec are refused)
    model_config = ConfigDict(frozen=True, extra='forbid', arbitrary_types_allowed=True,
                              allow_inf_nan=False)

    arity: ClassVar[int | None] = 1
    needs_gaussian: ClassVar[bool] = False
    creates_fresh: ClassVar[bool] = False  # a random affine map with weights of its own
    flops_per_entry: ClassVar[float] = 1.0
    #: the network's output layout when this layer ends it with spatial axes left
    #: (ConvLocal: spatially diagonal, NT's (N1, N2, H, W))
    natural_output: ClassVar[Spatial] = 'FULL'
    #: as the last layer without spatial axes, the output covariance is stored as Σ⊗I over its
    #: channels (a Dense or folded Affine readout)
    readout: ClassVar[bool] = False
    #: the kind can be written in a spec file (False: made by passes, or holds Python functions)
    in_specs: ClassVar[bool] = True

    @property
    def kind(self) -> str:
        return self.op  # type: ignore[attr-defined]

    def args(self) -> dict[str, Any]:
        """The layer's arguments (everything but the discriminator)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != 'op'}

    def infer(self, ins: list[TensorType], path: str) -> TensorType:
        """Shape rule: the output TensorType.  Default: same shape, not Gaussian, not fresh."""
        return ins[0].model_copy(update=dict(is_gaussian=False, is_fresh=False))

    def spatial_need(self, out: Spatial, in_type: TensorType) -> Spatial:
        """Spatial layout needed of the input's cross kernel.  Default: spatially local."""
        return out if in_type.spatial_axes else 'NONE'

    def marginal_need(self, out: Spatial | None, in_type: TensorType) -> Spatial | None:
        """Spatial layout needed of the input's marginals (None: not needed).  Default: what
        the output's marginals need (computing them needs the input's)."""
        if out is None:
            return None
        return out if in_type.spatial_axes else 'NONE'

    def out_order(self, in_order: tuple[int, ...], in_type: TensorType,
                  out_type: TensorType) -> tuple[int, ...]:
        """Storage order of the output's spatial axes given the input's (`choose_axis_orders`).
        Default: unchanged, or () when the output has no spatial axes."""
        return in_order if out_type.spatial_axes else ()

    def entry_flops(self, in_types: list[TensorType], out_type: TensorType) -> float:
        """FLOPs of the kernel rule per stored output entry (the `cost` pass)."""
        return self.flops_per_entry

    def lowering_note(self, in_types: list[TensorType], spatial: Spatial,
                      stored_input: bool = False) -> str:
        """How the kernel rule runs for these inputs and the input's spatial layout, when that
        is a choice worth showing in `KernelPlan.explain()` (e.g. a fused stencil); '' if not.
        `stored_input`: the plan has a stencil read a stored padded copy of its input
        (`ntc.passes.choose_layouts.stores_padded_input`)."""
        return ''

    def reads_neighbours(self) -> bool:
        """True when each output entry reads several entries of the input covariance (a
        stencil), so a fused producer would be recomputed once per read."""
        return False

    def independent_of_input(self) -> bool:
        """True when, at infinite width, the output is independent of every random value its
        input depends on: a random affine map whose own weights (or bias) are random, so its
        output is a fresh Gaussian field (read by the `check` pass)."""
        return False

    def branch_need(self, out: TensorType) -> Literal['independent', 'uncorrelated'] | None:
        """What the kernel rule of a fan-in assumes of its branches (the `check` pass):
        'independent' (a product), 'uncorrelated' (a sum: zero cross second moments), or
        None (no assumption)."""
        return None

    def no_kernel(self, ins: list[TensorType]) -> tuple[str, str] | None:
        """(reason, fix) when this layer has no infinite-width kernel for inputs of types
        `ins`, None when it has one.  The `check` pass turns it into a compile-time
        NoClosedFormError; the finite network (init_fn, apply_fn) does not read it."""
        return None

    def input_axes(self, ndim: int) -> tuple[int, int] | None:
        """(batch, channel) axes this layer expects of an input of rank `ndim`, when it names
        them (the first such layer sets the network input's axes); None: it does not."""
        return None

    def input_specs(self) -> tuple[str, str, str] | None:
        """The dimension numbers (lhs, rhs, out), e.g. ('NHWC', 'HWIO', 'NHWC'), this layer
        reads its input with, when it has them (convolutions); None otherwise."""
        return None

    def batch_size(self, in_types: list[TensorType], sizes: list[int]) -> int:
        """The output's batch size given the batch sizes of the inputs (`sizes`, one per
        input).  Default: that of input 0 (a layer that keeps every example)."""
        return sizes[0]

    def moves_examples(self, in_types: list[TensorType]) -> bool:
        """True when an output example is not computed from the input example of the same
        number (examples selected, reordered or concatenated): tiles of the inputs then do not
        give tiles of the kernel (`ntc.batch`, pair blocks)."""
        return False

    def needs_joint_batch(self) -> bool:
        """True when the kernel rule needs the covariances between every pair of examples
        (NT's `diagonal_batch=False`), so the graph is stored in the joint (batch FULL) layout
        (`choose_layouts`)."""
        return False

    def is_identity(self) -> bool:
        """True when the layer returns its input unchanged (`canonicalize` removes it)."""
        return False

    def pointwise_affine(self, in_channels: int) -> tuple[float, ...] | None:
        """(a, b, c, d, e) when the kernel rule is the per-position affine map K -> a K + b,
        Θ -> c Θ + d K + e for an input of `in_channels` channels (`canonicalize` folds chains
        of them); None otherwise."""
        return None

    def kernel_key(self):
        """What two layers must share to compute the same kernel map (`roll_loops` rolls
        layers whose keys are equal): the layer itself, unless its arguments can be spelt in
        several ways (a window's strides None and all ones)."""
        return self

    def serializable(self) -> bool:
        """True when this layer can be written to a spec: no argument is a Python function."""
        return not any(callable(v) for v in self.args().values())

    def label(self) -> str:
        """Short text for plans: kind and non-default arguments."""
        defaults = {k: f.default for k, f in type(self).model_fields.items()}
        parts = []
        for k, v in self.args().items():
            if v == defaults.get(k, object()):
                continue
            if callable(v):
                v = getattr(v, '__name__', 'fn')
            elif isinstance(v, float):
                v = f'{v:g}'
            parts.append(f'{k}={v}')
        return f'{self.kind}({", ".join(parts)})' if parts else self.kind
