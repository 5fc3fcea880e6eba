"""Symbolic kernels: the output NNGP and NTK of a network without spatial axes as sympy
expressions in the input covariance entries k11 = <x1,x1>/d, k12 = <x1,x2>/d, k22 = <x2,x2>/d
and the layers' weight and bias standard deviations.

The kernel rules are written against an array namespace, so the very same rules run here on
sympy expressions (namespace `SYM`) instead of arrays: the formulas theorists derive by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ..covariance.kernel import Kernel, adapt
from ..covariance.xp import SYM
from ..errors import NoClosedFormError
from ..ir.graph import Graph
from ..ir.op import Op
from ..ir.registry import get_kernel_rule
from ..ir.types import CovType
from ..layers.dense import Dense
from ..passes.options import Options
from .lower import LowerCtx, needed_input

K11, K12, K22 = sympy.symbols('k11 k12 k22', real=True)


@dataclass(frozen=True)
class SymbolicKernel:
    """Output NNGP and NTK expressions, and the values of the hyperparameter symbols."""

    nngp: sympy.Expr
    ntk: sympy.Expr
    params: dict = field(default_factory=dict)

    def latex(self) -> str:
        """LaTeX for both kernels (an `align*` body)."""
        return (r'K &= ' + sympy.latex(self.nngp) + r' \\' + '\n'
                + r'\Theta &= ' + sympy.latex(self.ntk))

    def with_params(self) -> SymbolicKernel:
        """The expressions with the hyperparameters replaced by the network's values."""
        return SymbolicKernel(self.nngp.subs(self.params), self.ntk.subs(self.params), {})

    def evaluate(self, k11: float, k12: float, k22: float) -> tuple[float, float]:
        """(NNGP, NTK) at given input covariances, with the network's hyperparameters."""
        vals = {**self.params, K11: k11, K12: k12, K22: k22}
        return float(self.nngp.subs(vals).evalf()), float(self.ntk.subs(vals).evalf())

    def __str__(self) -> str:
        return f'K = {self.nngp}\nΘ = {self.ntk}'


def _symbolic_op(op: Op, index: int, params: dict) -> Op:
    """A copy of an affine op whose stds are the symbols σ_w{index}, σ_b{index}."""
    if not isinstance(op, (Dense,)):
        return op
    w = sympy.Symbol(f'sigma_w{index}', positive=True)
    params[w] = op.W_std
    update = {'W_std': w}
    if op.b_std is not None:
        b = sympy.Symbol(f'sigma_b{index}', nonnegative=True)
        params[b] = op.b_std
        update['b_std'] = b
    return op.model_copy(update=update)


def symbolic_kernels(graph: Graph, opts: Options) -> SymbolicKernel:
    """Run the kernel rules of a typed, checked graph on sympy expressions."""
    for node in graph.nodes():
        if node.ttype.spatial_axes:
            raise NoClosedFormError('symbolic kernels cover networks without spatial axes',
                                    path=node.path, hint='use plan(x1, x2) for numbers')
    lay = CovType(marginal='NONE')
    ctx = LowerCtx(graph=graph, xp=SYM, want_ntk=True)
    env, params, index = {}, {}, 0
    for node in graph.nodes():
        node = node.model_copy(update=dict(cov=lay))
        if node.op.arity == 0:
            env[node.id] = Kernel(nngp=K12, cov1=K11, cov2=K22, layout=lay)
            continue
        if isinstance(node.op, Dense):
            index += 1
            node = node.model_copy(update=dict(op=_symbolic_op(node.op, index, params)))
        srcs = graph.inputs(node.id)
        ins = [adapt(env[s], needed_input(node, graph.node(s).model_copy(update=dict(cov=lay))))
               for s in srcs]
        env[node.id] = get_kernel_rule(node)(ctx, node, *ins)
    out = env[graph.output]
    ntk = out.ntk if out.ntk is not None else sympy.Integer(0)
    return SymbolicKernel(nngp=out.nngp, ntk=ntk, params=params)
