"""Properties a correct kernel must have, each a function users can call on their own nets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..api import compile as compile_plan
from ..net import Net


@dataclass(frozen=True)
class Report:
    """The outcome of one check: `ok`, the worst error found and where, and a readable text."""

    ok: bool
    worst: float
    where: str
    text: str

    def __bool__(self) -> bool:
        return self.ok

    def assert_ok(self) -> None:
        if not self.ok:
            raise AssertionError(self.text)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_against_reference(net: Net, x1, x2=None, get=('nngp', 'ntk'), rtol: float = 1e-12,
                            **compile_kwargs) -> Report:
    """The optimised plan equals the reference lowering (joint Gram matrix, FULL layouts, no
    folding or fusion) to round-off: max |opt - ref| / max |ref| <= rtol, per kernel.  Use
    float64 inputs with `jax_enable_x64` on."""
    x1 = np.asarray(x1)
    opt = compile_plan(net, x1.shape, get, **compile_kwargs)
    ref = compile_plan(net, x1.shape, get, reference=True)
    got, want = opt.raw(x1, x2), ref.raw(x1, x2)
    errs = {name: _rel(got[name], want[name]) for name in get}
    worst = max(errs, key=errs.get)
    ok = errs[worst] <= rtol and all(np.all(np.isfinite(got[n])) for n in get)
    text = (f'{"ok" if ok else "MISMATCH"}: optimised vs reference, worst {worst} rel err '
            f'{errs[worst]:.2e} (rtol {rtol:g})\nnet: {net!r}')
    return Report(ok, errs[worst], worst, text)
