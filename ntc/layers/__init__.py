"""Every built-in layer, one module per family; importing this package registers them all.

A family module holds, for each of its layers, the op model (arguments, shape rule, layout
needs, cost: see `ntc.ir.op.Op`) and every rule: the infinite-width kernel, the finite network
(init and apply) and how the layer moves `mask_constant` masks, each registered next to it with
the decorators of `ntc.ir.registry`.  `FAMILIES` below is the one place that loads them; a layer
of your own registers the same way from your module (see docs/adding_a_layer.md), with what
this package exports for it: `Op`, the decorators, `Kernel` (what a kernel rule receives and
returns) and `TensorType` (what a shape rule reads and returns); `ntc.stax.layer(cls, ...)`
makes its builder.
"""

from __future__ import annotations

from ..covariance.kernel import Kernel
from ..ir.op import Op
from ..ir.registry import finite_rule, kernel_input, kernel_rule, mask_rule, register_op
from ..ir.types import TensorType
from . import (
    activations,
    attention,
    conv,
    custom,
    dense,
    dropout,
    graphs,
    linear,
    normalization,
    pooling,
    structure,
)

FAMILIES = (structure, dense, conv, pooling, activations, normalization, dropout, attention,
            linear, graphs, custom)

__all__ = ['FAMILIES', 'Op', 'Kernel', 'TensorType', 'register_op', 'kernel_rule', 'finite_rule',
           'mask_rule', 'kernel_input', 'activations', 'attention', 'conv', 'custom', 'dense',
           'dropout', 'graphs', 'linear', 'normalization', 'pooling', 'structure']
