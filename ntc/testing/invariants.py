"""Invariants every correct kernel has, each a function users can call on their own nets:
symmetry, positive semi-definiteness, batching invariance, layout invariance and spec
round-trip.  Each returns a `Report` whose text ends with the `ntc.stax` code of the net."""

from __future__ import annotations

import numpy as np
import yaml

from .. import spec
from ..api import compile as compile_plan
from ..errors import NtcError
from ..net import Net
from ..runtime.batching import batch
from .properties import Report, _rel


def _kernels(net: Net, x1, x2, get) -> dict:
    res = net.kernel_fn(x1, x2, tuple(get))
    return {g: np.asarray(a) for g, a in zip(get, res)}


def _swap(a: np.ndarray) -> np.ndarray:
    """K(x2, x1) from K(x1, x2): swap (n1, n2) and every spatial pair (h, h')."""
    perm = list(range(a.ndim))
    for i in range(0, a.ndim - 1, 2):
        perm[i], perm[i + 1] = perm[i + 1], perm[i]
    return np.transpose(a, perm)


def _done(name: str, errs: dict, tol: float, net: Net, extra: str = '') -> Report:
    worst = max(errs, key=errs.get) if errs else ''
    value = errs.get(worst, 0.0)
    ok = bool(np.isfinite(value)) and value <= tol
    text = (f'{"ok" if ok else "FAILED"}: {name}, worst {worst or "-"} {value:.2e} (tol {tol:g})'
            f'{extra}\nreproduce with:\n  net = {net.code()}')
    return Report(ok, float(value), worst, text)


def check_symmetry(net: Net, x1, x2, get=('nngp', 'ntk'), rtol: float = 1e-10) -> Report:
    """K(x1, x2) = K(x2, x1)ᵀ (kernels are covariances of exchangeable pairs)."""
    a, b = _kernels(net, x1, x2, get), _kernels(net, x2, x1, get)
    return _done('symmetry K(x1, x2) = K(x2, x1)^T',
                 {g: _rel(a[g], _swap(b[g])) for g in get}, rtol, net)


def check_psd(net: Net, x, get=('nngp', 'ntk'), eps: float = 1e-8) -> Report:
    """K(x, x), as a matrix over (example, position) pairs, has min eigenvalue >= -eps·max|K|
    (a covariance, or a sum of Jacobian Gram matrices, is positive semi-definite)."""
    k = _kernels(net, x, None, get)
    errs = {}
    for g, a in k.items():
        n = a.ndim // 2
        rows = [2 * i for i in range(n)]
        mat = np.transpose(a, rows + [r + 1 for r in rows])
        side = int(np.prod(mat.shape[:n]))
        mat = mat.reshape(side, side)
        mat = (mat + mat.T) / 2
        scale = max(float(np.max(np.abs(mat))), 1e-300)
        errs[g] = max(0.0, -float(np.linalg.eigvalsh(mat).min()) / scale)
    return _done('positive semi-definite K(x, x)', errs, eps, net)


def check_batching(net: Net, x1, x2=None, get=('nngp', 'ntk'), batch_size: int = 1,
                   rtol: float = 1e-10) -> Report:
    """`ntc.batch(kernel_fn, batch_size)` gives the same kernels as one unbatched call."""
    want = _kernels(net, x1, x2, get)
    res = batch(net.kernel_fn, batch_size=batch_size, progress=False)(x1, x2, tuple(get))
    got = {g: np.asarray(a) for g, a in zip(get, res)}
    return _done(f'batching invariance (batch_size={batch_size})',
                 {g: _rel(got[g], want[g]) for g in get}, rtol, net)


def check_layouts(net: Net, x1, x2=None, get=('nngp', 'ntk'), rtol: float = 1e-10) -> Report:
    """Forcing FULL spatial layouts everywhere changes no kernel (layout choice is only an
    optimisation)."""
    x1 = np.asarray(x1)
    a = compile_plan(net, x1.shape, get).raw(x1, x2)
    b = compile_plan(net, x1.shape, get, force_full=True).raw(x1, x2)
    return _done('layout invariance (force_full=True)',
                 {g: _rel(a[g], b[g]) for g in get}, rtol, net)


def check_spec_roundtrip(net: Net, x1=None, get=('nngp', 'ntk'), rtol: float = 0.0) -> Report:
    """`spec.parse(spec.dump(net)) == net` (exactly), and through YAML text too; with `x1`,
    the reloaded net's kernels equal the original's.  Nets holding Python functions cannot be
    written to a spec: the report says so and passes."""
    try:
        data = spec.dump(net)
    except NtcError as e:
        if any(not n.op.serializable() for n in net.graph().nodes()):
            return Report(True, 0.0, '', f'ok: not serialisable ({e})')
        raise
    back = spec.parse(data)
    text_back = spec.parse(yaml.safe_load(spec.dumps(net)))
    errs = {'dump/parse': 0.0 if back == net else np.inf,
            'yaml text': 0.0 if text_back == net else np.inf}
    if x1 is not None:
        a, b = _kernels(net, x1, None, get), _kernels(back, x1, None, get)
        errs.update({g: _rel(b[g], a[g]) for g in get})
    return _done('spec round-trip', errs, rtol, net)


__all__ = ['check_symmetry', 'check_psd', 'check_batching', 'check_layouts',
           'check_spec_roundtrip']
