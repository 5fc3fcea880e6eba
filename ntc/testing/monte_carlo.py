"""`check_against_monte_carlo`: the analytic NNGP/NTK of a net against Monte-Carlo estimates from
finite networks built from the same IR (the independent, physical check of every kernel rule).

The infinite-width kernels are expectations of the empirical kernels over random initialisations
(Neal 1996; Lee et al. 2018; Jacot et al. 2018), so for `n` independent networks the per-entry
statistic ``z = (analytic - mean) / stderr`` is approximately Student-t with ``n - 1`` degrees of
freedom when the rule is right and the width is large enough that the finite-width bias
(O(1/width)) is small next to the sampling error.  The tolerance is therefore not a magic
constant: it is ``k`` standard errors, with ``k`` the Bonferroni-corrected two-sided t quantile
for the number of entries compared, so the family-wise false-failure rate is at most `alpha`.
The default alpha = 1e-4 leaves a margin of 100x below the 1% target for the skewness of
products of Gaussians, whose sample means have heavier tails than Student's t at 128 samples
(measured: 1% failures at nominal 1e-3 on some inputs, see benchmarks/bench_calibration.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import numpy as np

from ..layers.conv import _ConvBase
from ..layers.dense import Dense
from ..net import Net, _label
from ..runtime.monte_carlo import monte_carlo_kernel_stats
from .properties import Report

DEFAULT_ALPHA = 1e-4
DEFAULT_WIDTH = 512


def z_threshold(n_entries: int, n_samples: int, alpha: float = DEFAULT_ALPHA) -> float:
    """k such that P(max_i |z_i| > k) <= alpha over `n_entries` Student-t(n_samples - 1)
    statistics (Bonferroni: each two-sided test at level alpha / n_entries)."""
    from scipy import stats
    p = alpha / (2 * max(int(n_entries), 1))
    return float(stats.t.isf(p, df=max(n_samples - 1, 1)))


# ----------------------------------------------------------------------------- widening


def _paths(net: Net, prefix: str = '') -> list[tuple[str, Net]]:
    """(graph path, layer) for every layer of the tree, named as `build_graph` names nodes."""
    if net.kind == 'layer':
        return [(_label(net, prefix), net)]
    base = f'{prefix}.{net.kind}' if prefix else net.kind
    if net.kind == 'repeat':  # every iteration: the last one's paths win in `widen`'s lookup
        return [p for i in range(net.n) for p in _paths(net.children[0], f'{base}[{i}]')]
    out = []
    for i, child in enumerate(net.children):
        out += _paths(child, f'{base}[{i}]')
    return out


def readout_paths(net: Net) -> set[str]:
    """Paths of the affine layers whose output reaches the network's output without passing
    another affine layer (their width does not enter any downstream kernel)."""
    g = net.graph()
    readouts = set()
    for node in g.nodes():
        if not node.op.creates_fresh:
            continue
        todo, seen, hit = [node.id], set(), False
        while todo and not hit:
            v = todo.pop()
            if v in g.outputs:
                hit = True
            for w, _slot in g.consumers(v):
                if w not in seen and not g.node(w).op.creates_fresh:
                    seen.add(w)
                    todo.append(w)
        if hit:
            readouts.add(node.path)
    return readouts


def widen(net: Net, width: int, keep_readout: bool = True) -> Net:
    """The same architecture with every hidden Dense `out_dim` and Conv `out_chan` set to
    `width` (readout layers keep theirs when `keep_readout`).  The infinite-width kernels depend
    on widths only through ratios (concatenated channels) and the standard parameterization's
    fan-ins, which the analytic kernel reads from the widened net, so both sides agree."""
    keep = readout_paths(net) if keep_readout else set()
    paths = {id(layer): p for p, layer in _paths(net)}

    def rebuild(n: Net) -> Net:
        if n.kind != 'layer':
            return replace(n, children=tuple(rebuild(c) for c in n.children))
        if paths.get(id(n)) in keep:
            return n
        if isinstance(n.op, Dense):
            return Net('layer', n.op.model_copy(update=dict(out_dim=width)))
        if isinstance(n.op, _ConvBase):
            return Net('layer', n.op.model_copy(update=dict(out_chan=width)))
        return n

    return rebuild(net)


# ----------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class MonteCarloReport(Report):
    """A `Report` with the per-kernel z-scores, the threshold `k` and the Monte-Carlo setup."""

    z: dict = field(default_factory=dict)
    k: float = 0.0
    n_samples: int = 0
    width: int | None = None
    analytic: dict = field(default_factory=dict, repr=False)
    mean: dict = field(default_factory=dict, repr=False)
    stderr: dict = field(default_factory=dict, repr=False)


def _fns(net: Net):
    """init_fn / apply_fn of `net`, cached on it so repeated checks reuse the compiled chunks."""
    if 'mc_fns' not in net._cache:
        init_fn, apply_fn, _ = net
        net._cache['mc_fns'] = (init_fn, apply_fn)
    return net._cache['mc_fns']


def _widened(net: Net, width: int | None) -> Net:
    if width is None:
        return net
    cache = net._cache.setdefault('widened', {})
    if width not in cache:
        cache[width] = widen(net, width)
    return cache[width]


def _analytic(net: Net, x1, x2, names) -> dict:
    """The analytic kernels of `net`, each reduced to (N1, N2) by averaging the diagonal of
    every (spatial, spatial') pair of a spatial output (what tracing a flattened output
    estimates)."""
    kernel_fn = net._cache.setdefault('mc_kernel_fn', net.kernel_fn)
    res = kernel_fn(x1, x2, names)
    out = {}
    for g, a in zip(names, res if len(names) > 1 else (res,)):
        a = np.asarray(a)
        while a.ndim > 2:   # (N1, N2, h, h', ...) -> mean over h = h'
            a = np.diagonal(a, axis1=2, axis2=3).mean(-1)
        out[g] = a
    return out


def _bundle(nets: list[Net]):
    """init_fn / apply_fn of the nets side by side with independent parameters; the output is
    (N, len(nets), d_max): net b's flattened output zero-padded to d_max.  Traced over the last
    axis, its kernel's (b, b) block is net b's traced kernel times d_b / d_max."""
    key_ = tuple(id(n) for n in nets)
    cache = nets[0]._cache.setdefault('mc_bundles', {})
    if key_ in cache:
        return cache[key_]
    fns = [_fns(n) for n in nets]

    def init_fn(key, input_shape):
        keys = jax.random.split(key, len(fns))
        return None, tuple(f[0](k, input_shape)[1] for f, k in zip(fns, keys))

    def apply_fn(params, x, rng=None, **kwargs):
        rngs = [None] * len(fns) if rng is None else list(jax.random.split(rng, len(fns)))
        outs = [f[1](p, x, rng=r, **kwargs) for f, p, r in zip(fns, params, rngs)]
        outs = [o.reshape(o.shape[0], -1) for o in outs]  # a layer may change the batch size
        d = max(o.shape[1] for o in outs)
        return jax.numpy.stack([jax.numpy.pad(o, ((0, 0), (0, d - o.shape[1]))) for o in outs],
                               axis=1)

    cache[key_] = (init_fn, apply_fn)
    return init_fn, apply_fn


def check_against_monte_carlo(net: Net, x1, x2=None, width: int | None = DEFAULT_WIDTH,
                              n_samples: int = 256, *, key=0, get=('nngp', 'ntk'),
                              alpha: float = DEFAULT_ALPHA, finite: Net | None = None,
                              chunk_size: int | None = None, **apply_kwargs
                              ) -> MonteCarloReport:
    """Compare the analytic kernels of `net` with the mean of `n_samples` empirical kernels of
    its finite network (hidden layers widened to `width`; None keeps the net's own widths).

    Passes when every entry is within ``k`` standard errors, ``k = z_threshold(m, n_samples,
    alpha)`` for the ``m`` entries compared, i.e. a family-wise false-failure rate of at most
    `alpha` on correct rules (up to the finite-width bias, O(1/width)).  `finite` is an
    optional surrogate net whose finite network has the same kernels (for ops with no
    finite-network form, e.g. ExpNormalized).  `key` is an int seed or a PRNG key; extra
    keyword arguments go to the apply function.  Use float64 (`jax_enable_x64`).  Spatial
    outputs are compared through their flattened (position-averaged) kernel."""
    return check_many_against_monte_carlo([net], x1, x2, width, n_samples, key=key, get=get,
                                          alpha=alpha, finites=[finite], chunk_size=chunk_size,
                                          **apply_kwargs)[0]


def check_many_against_monte_carlo(nets, x1, x2=None, width: int | None = DEFAULT_WIDTH,
                                   n_samples: int = 256, *, key=0, get=('nngp', 'ntk'),
                                   alpha: float = DEFAULT_ALPHA, finites=None,
                                   chunk_size: int | None = None, **apply_kwargs
                                   ) -> list[MonteCarloReport]:
    """`check_against_monte_carlo` for several nets on the same inputs, sampled side by side
    with independent parameters in one compiled program (one compilation instead of one per
    net).  The threshold accounts for all entries of all nets (family-wise over the call)."""
    names = (get,) if isinstance(get, str) else tuple(get)
    finites = list(finites or [None] * len(nets))
    wide = [_widened(n, width) for n in nets]
    samplers = [w if f is None else _widened(f, width) for w, f in zip(wide, finites)]
    x1 = np.asarray(x1)
    x2 = None if x2 is None else np.asarray(x2)
    analytic = [_analytic(w, x1, x2, names) for w in wide]
    if isinstance(key, (int, np.integer)):
        key = jax.random.PRNGKey(int(key))
    init_fn, apply_fn = _bundle(samplers)
    stats = monte_carlo_kernel_stats(init_fn, apply_fn, key, x1, x2, n_samples, get=names,
                                     chunk_size=chunk_size, **apply_kwargs)
    out_dims = _out_dims(samplers, x1)
    d_max = max(out_dims)
    m = sum(a.size for an in analytic for a in an.values())
    k = z_threshold(m, n_samples, alpha)
    reports = []
    for b, net in enumerate(nets):
        scale = out_dims[b] / d_max
        mean, err, want, z = {}, {}, {}, {}
        for g in names:
            mu, se = np.asarray(stats.mean[g]), np.asarray(stats.stderr[g])
            # this net's block only: the (b, c) blocks are E[f_b]·E[f_c], not zero, when an
            # output (e.g. a ReLU's) has a non-zero mean
            mean[g] = mu[:, :, b, b].ravel() / scale
            err[g] = se[:, :, b, b].ravel() / scale
            want[g] = analytic[b][g].ravel()
            floor = 1e-9 * max(float(np.max(np.abs(want[g]), initial=0)), 1e-300)
            z[g] = (want[g] - mean[g]) / np.maximum(err[g], floor)
        reports.append(_report(net, finites[b], names, want, mean, err, z, k, m, n_samples,
                               width, analytic[b], alpha))
    return reports


def _out_dims(nets: list[Net], x1) -> list[int]:
    dims = []
    for n in nets:
        shape = _fns(n)[0](jax.random.PRNGKey(0), x1.shape)[0]
        dims.append(int(np.prod([d for i, d in enumerate(shape) if i != 0])))
    return dims


def _report(net, finite, names, want, mean, err, z, k, m, n_samples, width, analytic,
            alpha) -> MonteCarloReport:
    finite_ok = all(np.all(np.isfinite(want[g])) and np.all(np.isfinite(mean[g]))
                    for g in names)
    worst_name = max(names, key=lambda g: float(np.max(np.abs(z[g]), initial=0)))
    worst = float(np.max(np.abs(z[worst_name]), initial=0))
    ok = finite_ok and worst <= k
    n_own = analytic[worst_name].size
    i = int(np.argmax(np.abs(z[worst_name]))) if z[worst_name].size else 0
    if i < n_own:
        where = f'{worst_name}{list(map(int, np.unravel_index(i, analytic[worst_name].shape)))}'
    else:
        where = f'{worst_name} cross-covariance with another independent net (entry {i})'
    lines = [f'{"ok" if ok else "MISMATCH"}: analytic vs Monte-Carlo ({n_samples} samples, '
             f'width {width}), max |z| = {worst:.2f} at {where}, threshold k = {k:.2f} '
             f'(family-wise alpha {alpha:g} over {m} entries)']
    if not finite_ok:
        lines.append('non-finite values in the analytic kernel or the estimate')
    for g in names:
        a, mu, zz = want[g][:n_own], mean[g][:n_own], z[g][:n_own]
        lines.append(f'  {g}: max |z| {np.max(np.abs(z[g]), initial=0):.2f}; rel. error '
                     f'{np.max(np.abs(a - mu), initial=0) / max(np.max(np.abs(a)), 1e-300):.2e}')
        for j in np.argsort(-np.abs(zz))[:3]:
            lines.append(f'    entry {j}: analytic {a[j]: .6g}  MC {mu[j]: .6g} ± '
                         f'{err[g][j]:.2g}  z {zz[j]: .2f}')
    lines.append('reproduce with:\n  net = ' + net.code())
    if finite is not None:
        lines.append('  finite surrogate = ' + finite.code())
    return MonteCarloReport(ok, worst, where, '\n'.join(lines), z=z, k=k, n_samples=n_samples,
                            width=width, analytic=analytic,
                            mean={g: mean[g][:n_own].reshape(analytic[g].shape) for g in names},
                            stderr={g: err[g][:n_own].reshape(analytic[g].shape)
                                    for g in names})


def relative_error(report: MonteCarloReport, get=None) -> float:
    """max |analytic - MC mean| / max |analytic| over the kernels `get` (default: all) of a
    report."""
    names = report.analytic if get is None else ((get,) if isinstance(get, str) else get)
    return max(float(np.max(np.abs(report.analytic[g] - report.mean[g])))
               / max(float(np.max(np.abs(report.analytic[g]))), 1e-300) for g in names)


__all__ = ['check_against_monte_carlo', 'check_many_against_monte_carlo', 'widen',
           'readout_paths', 'z_threshold', 'MonteCarloReport', 'relative_error',
           'DEFAULT_ALPHA', 'DEFAULT_WIDTH']

