"""`ntc demo`: what ntc does, end to end, on real data, in a few minutes on a laptop CPU.

1. Compiles two conv nets from `specs/`, one with pooling (digits_myrtle.yaml) and one without
   (digits_flatten.yaml), and prints both plans: the pooling net must carry the covariance of
   every pair of positions (64×64 per pair of 8×8 images), the Flatten net only the diagonal.
2. Computes their NNGP and NTK kernels on scikit-learn's 8×8 digits (bundled, no download) with
   `ntc.batch` and a progress bar.  The Flatten net uses 1000 training digits and the whole
   remaining test split; the pooling net as many training digits as fit the time budget.
3. Runs exact NNGP inference (`predict.gp_inference`) and infinite-time NTK inference
   (`predict.gradient_descent_mse`, t=None), and prints the test accuracy next to a finite
   network of the same architecture trained by SGD (ntc's `init_fn`/`apply_fn`, plain JAX) and
   an RBF-kernel baseline.
4. Reproduces Figure 1 of the NT paper (Novak et al. 2020): an infinitely wide Erf network on
   five noisy samples of sin(x) (`predict.gradient_descent_mse_ensemble`) against an ensemble
   of finite networks trained by gradient descent.
5. Writes two PNGs (the sin regression, and digits accuracy against training-set size) and a
   results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ntc

from . import spec
from .bench import time_jitted
from .errors import AccuracyWarning
from .runtime import predict

SPECS = Path(__file__).resolve().parent.parent / 'specs'
# where the bench kit's setup_nt.sh builds neural-tangents' venv (NT is never a dependency)
NT_VENV = Path.home() / '.cache' / 'ntc-bench' / 'nt-venv'


@dataclass
class Config:
    """Sizes of one demo run (`full` or `quick`)."""

    n_train: int = 1000             # Flatten net training digits
    n_test: int | None = None       # None: the whole remaining test split
    flatten_tile: int = 250
    pool_tile: int = 50
    pool_min: int = 300             # pooling net: at least this many training digits...
    pool_max: int = 1000
    pool_budget_s: float = 100.0    # ...and as many more as fit in this many seconds
    total_budget_s: float = 270.0   # the whole demo
    sgd_steps: int = 800
    sgd_batch: int = 50
    ens_size: int = 32              # Figure 1: finite networks in the ensemble
    ens_width: int = 128
    ens_steps: int = 1000
    flatten_sizes: tuple = (100, 250, 500, 1000)
    sgd_sizes: tuple = (250, 1000)
    seed: int = 0
    extra: dict = field(default_factory=dict)


FULL = Config()
QUICK = Config(n_train=150, n_test=150, flatten_tile=75, pool_tile=30, pool_min=30, pool_max=30,
               pool_budget_s=0.0, total_budget_s=60.0, sgd_steps=40, ens_size=4, ens_width=64,
               ens_steps=50, flatten_sizes=(50, 150), sgd_sizes=(150,))


def _say(*args) -> None:
    print(*args, flush=True)


_T0 = [time.perf_counter()]


def _section(title: str) -> None:
    stamp = f' [{time.perf_counter() - _T0[0]:.0f} s, CPU {time.process_time():.0f} s]'
    _say(f'\n== {title} ' + '=' * max(3, 80 - len(title)) + stamp)


# ----------------------------------------------------------------------------- data


def load_digits_split(n_train: int, n_test: int | None, seed: int = 0):
    """scikit-learn's 8×8 digits as (N, 8, 8, 1) float32, standardised with the training
    statistics; a stratified split with `n_train` training digits and the rest (or `n_test`
    of them) for testing.  Labels are returned as integers."""
    from sklearn.datasets import load_digits  # optional dependency (the demo extra)
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = d.images[..., None].astype(np.float32) / 16.
    xtr, xte, ytr, yte = train_test_split(x, d.target, train_size=n_train, random_state=seed,
                                          stratify=d.target)
    if n_test is not None and n_test < len(xte):
        xte, yte = xte[:n_test], yte[:n_test]
    mu, sd = xtr.mean(), xtr.std()
    return (xtr - mu) / sd, ytr, (xte - mu) / sd, yte


def targets(y, classes: int = 10):
    """Centred one-hot regression targets (1 - 1/C for the class, -1/C elsewhere)."""
    return np.eye(classes, dtype=np.float32)[y] - 1. / classes


def accuracy(pred, labels) -> float:
    return float(np.mean(np.argmax(np.asarray(pred), -1) == labels))


# ----------------------------------------------------------------------------- kernels


def batched(kernel_fn, xtr, xte, tile: int):
    """`ntc.batch(kernel_fn)` with both of its tile programs (diagonal tiles, x2 = None, and
    off-diagonal ones) compiled on one tile each.  Returns (batched fn, seconds compiling)."""
    fn = ntc.batch(kernel_fn, tile, store_on_device=False, progress=False)
    t0 = time.perf_counter()
    fn(xtr[:tile], None, ('nngp', 'ntk'))
    fn(xte[:tile], xtr[:tile], ('nngp', 'ntk'))
    fn.progress = True
    return fn, time.perf_counter() - t0


def nt_python() -> str | None:
    """A Python that has neural_tangents: $NTC_NT_PYTHON, else the bench kit's NT venv
    (`NT_VENV`, built by its setup_nt.sh); None when neither is there."""
    env = os.environ.get('NTC_NT_PYTHON')
    if env:
        return env
    py = NT_VENV / 'bin' / 'python'
    return str(py) if py.exists() else None


# Runs in NT's venv: builds `net` (ntc's spec dump, whose layer names and arguments are NT's)
# with neural_tangents.stax and times its jitted kernel_fn on x1 × x2 as the bench kit does.
_NT_TIMER = r"""
import json, statistics, sys, time
import jax, numpy as np
import neural_tangents as nt
from neural_tangents import stax

def build(node):
    if isinstance(node, str):
        return getattr(stax, node)()
    (name, arg), = node.items()
    if name in ('serial', 'parallel'):
        return getattr(stax, name)(*[build(a) for a in arg])
    if not isinstance(arg, dict):
        return getattr(stax, name)(arg)
    return getattr(stax, name)(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in arg.items()})

net, x1, x2, rounds = json.loads(sys.argv[1]), np.load(sys.argv[2]), np.load(sys.argv[3]), \
    int(sys.argv[4])
kernel_fn = jax.jit(build(net)[2], static_argnames='get')
def call():
    t0 = time.perf_counter()
    jax.block_until_ready(kernel_fn(x1, x2, get=('nngp', 'ntk')))
    return time.perf_counter() - t0
compile_s = call()
print(json.dumps(dict(version=nt.__version__, compile_s=compile_s,
                      median_s=statistics.median(call() for _ in range(rounds)))))
"""


def time_ntc_tile(kernel_fn, x1, x2, rounds: int = 3) -> float:
    """Median seconds of ntc's jitted `kernel_fn` (NNGP and NTK) on x1 × x2, after one call to
    compile: the bench kit's protocol (`ntc.bench.time_jitted`), which `_NT_TIMER` follows."""
    return time_jitted(kernel_fn, x1, x2, rounds)[2]


def time_nt(net, x1, x2, rounds: int = 3, timeout: float = 300.) -> dict:
    """Time neural-tangents on `net`'s architecture, in NT's own venv (`nt_python`), on the
    tile x1 × x2: {'version', 'compile_s', 'median_s', 'us_per_entry'}; or {'skipped': why}
    when there is no NT venv or the run fails.  Nothing is assumed: only this run counts."""


    py = nt_python()
    if py is None:
        return {'skipped': f'no neural-tangents venv at {NT_VENV} (the bench kit\'s '
                           'setup_nt.sh builds one; or set NTC_NT_PYTHON)'}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f'x{i}.npy') for i in (1, 2)]
        for path, x in zip(paths, (x1, x2)):
            np.save(path, np.asarray(x, np.float32))
        cmd = [py, '-W', 'ignore', '-c', _NT_TIMER, json.dumps(spec.dump(net)), *paths,
               str(rounds)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {'skipped': f'timing NT in {py} took over {timeout:.0f} s'}
        except OSError as e:
            return {'skipped': f'cannot run {py}: {e}'}
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        last = (r.stderr.strip().splitlines() or ['no output'])[-1]
        return {'skipped': f'NT failed in {py}: {last[:200]}'}
    res = json.loads(lines[-1])
    res['us_per_entry'] = res['median_s'] / (len(x1) * len(x2)) * 1e6
    return res


def compare_with_nt(net, xtr, xte, tile: int, what: str) -> dict:
    """Times NT and ntc on the same test × train tile of `tile` digits, jitted, steady state,
    and says so; when NT is not available, says that it was not timed."""
    x1, x2 = xte[:tile], xtr[:tile]
    nt = time_nt(net, x1, x2)
    if 'skipped' in nt:
        _say(f'{what}: NT not timed in this run: {nt["skipped"]}')
        return nt
    ours = time_ntc_tile(net.kernel_fn, x1, x2) / (len(x1) * len(x2)) * 1e6
    _say(f'{what}, one {len(x1)}×{len(x2)} tile, jitted, median of 3 calls in this run: ntc '
         f'{ours:.1f} µs per entry, NT {nt["version"]} {nt["us_per_entry"]:.1f} µs per entry')
    return dict(nt, ntc_us_per_entry=ours, tile=[len(x1), len(x2)])


def kernel_pair(fn, xtr, xte, what: str):
    """NNGP and NTK train-train (upper-triangle tiles) and test-train with the batched `fn`,
    with a progress bar.  Returns (k_train_train, k_test_train, seconds, µs per entry)."""
    t0 = time.perf_counter()
    _say(f'{what}: train × train ({len(xtr)} × {len(xtr)}, upper-triangle tiles of '
         f'{fn.batch_size})')
    k_dd = fn(xtr, None, ('nngp', 'ntk'))
    _say(f'{what}: test × train ({len(xte)} × {len(xtr)})')
    k_td = fn(xte, xtr, ('nngp', 'ntk'))
    dt = time.perf_counter() - t0
    entries = len(xtr) * (len(xtr) + 1) / 2 + len(xte) * len(xtr)
    return k_dd, k_td, dt, dt / entries * 1e6


def kernel_inference(k_dd, k_td, y_tr, y_te, sizes, diag_reg: float = 1e-4) -> dict:
    """Test accuracy of exact NNGP inference and of infinite-time NTK gradient descent, for the
    first n training digits, n in `sizes` (sub-blocks of the same kernels).  Accuracy warnings
    of the solves (float32 kernels of large condition number) are printed as part of the
    demo's output and listed under 'warnings'."""


    out = {'nngp': {}, 'ntk': {}, 'warnings': []}
    for n in sizes:
        y = targets(y_tr[:n])
        nngp_dd, ntk_dd = np.asarray(k_dd.nngp)[:n, :n], np.asarray(k_dd.ntk)[:n, :n]
        nngp_td, ntk_td = np.asarray(k_td.nngp)[:, :n], np.asarray(k_td.ntk)[:, :n]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', AccuracyWarning)
            mean = predict.gp_inference(nngp_dd, y, diag_reg=diag_reg)('nngp', nngp_td)
            out['nngp'][n] = accuracy(mean, y_te)
            gd = predict.gradient_descent_mse(ntk_dd, y, diag_reg=diag_reg)
            out['ntk'][n] = accuracy(gd(None, None, 0., ntk_td), y_te)   # t = None: t → ∞
        for w in caught:
            if not issubclass(w.category, AccuracyWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            note = f'n={n}: {str(w.message).split(" (pass diag_reg")[0]}'
            out['warnings'].append(note)
            _say(f'  ntc.AccuracyWarning, {note}')
    return out


def rbf_baseline(xtr, y_tr, xte, y_te, sizes, diag_reg: float = 1e-4) -> tuple[dict, float]:
    """Kernel regression with the RBF kernel exp(-γ‖x - x'‖²), γ = 1 / (d · Var x) (the usual
    'scale' heuristic), on the same centred one-hot targets."""

    a = xtr.reshape(len(xtr), -1).astype(np.float64)
    b = xte.reshape(len(xte), -1).astype(np.float64)
    gamma = 1. / (a.shape[1] * a.var())

    def k(u, v):
        d2 = (u * u).sum(1)[:, None] + (v * v).sum(1)[None] - 2 * u @ v.T
        return np.exp(-gamma * np.maximum(d2, 0.))

    out = {}
    for n in sizes:
        mean = predict.gp_inference(k(a[:n], a[:n]), targets(y_tr[:n]), diag_reg=diag_reg)(
            'nngp', k(b, a[:n]))
        out[n] = accuracy(mean, y_te)
    return out, gamma


def train_finite(net, xtr, y_tr, xte, y_te, steps: int, batch: int, lr: float, seed: int):
    """A finite network of `net`'s architecture (the widths in its spec), initialised by ntc's
    `init_fn`, trained by minibatch SGD on the MSE loss with plain JAX; returns test accuracy."""
    init_fn, apply_fn, _ = net
    _, params = init_fn(jax.random.PRNGKey(seed), (-1,) + xtr.shape[1:])
    y = targets(y_tr)

    def loss(p, x, t):
        return 0.5 * jnp.mean(jnp.sum((apply_fn(p, x) - t) ** 2, -1))

    @jax.jit
    def step(p, x, t):
        g = jax.grad(loss)(p, x, t)
        return jax.tree.map(lambda w, dw: w - lr * dw, p, g)

    rng = np.random.default_rng(seed)
    batch = min(batch, len(xtr))
    order = np.array([], dtype=int)
    for _ in range(steps):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(xtr))])
        idx, order = order[:batch], order[batch:]
        params = step(params, xtr[idx], y[idx])
    return accuracy(jax.jit(apply_fn)(params, xte), y_te)


# ----------------------------------------------------------------------------- Figure 1


def figure1(cfg: Config, out_dir: Path) -> dict:
    """NT paper Figure 1: an infinitely wide Erf network (specs/fc_erf.yaml) trained by gradient
    descent on 5 noisy samples of sin(x), against an ensemble of finite networks of the same
    architecture.  Writes figure1_sin_regression.png; returns summary numbers."""

    key = jax.random.PRNGKey(10)
    k_x, k_noise, k_init = jax.random.split(key, 3)
    n_train, n_test, noise = 5, 50, 0.1
    x_train = jax.random.uniform(k_x, (n_train, 1), minval=-np.pi, maxval=np.pi)
    y_train = jnp.sin(x_train) + noise * jax.random.normal(k_noise, (n_train, 1))
    x_test = jnp.linspace(-np.pi, np.pi, n_test).reshape(-1, 1)
    y_test = jnp.sin(x_test)

    infinite = spec.load(SPECS / 'fc_erf.yaml')
    data = spec.dump(infinite)      # the same spec, with hidden layers cut to ens_width
    for lay in data['serial']:
        if isinstance(lay, dict) and 'Dense' in lay and lay['Dense']['out_dim'] > 1:
            lay['Dense']['out_dim'] = cfg.ens_width
    finite = spec.load(data)

    t0 = time.perf_counter()
    # half the largest stable step 2n / λ_max(Θ): discrete GD then tracks gradient flow
    lr = 0.5 * float(predict.max_learning_rate(infinite.kernel_fn(x_train, None, 'ntk'),
                                               y_train.size))
    every = max(1, cfg.ens_steps // 100)
    ts = jnp.arange(0, cfg.ens_steps + 1, every, dtype=jnp.float32)

    def expected_loss(g, y):        # E 0.5 mean (f - y)² under f ~ N(mean, cov)
        var = jnp.diagonal(g.covariance, axis1=-2, axis2=-1)[..., None]
        return 0.5 * jnp.mean((g.mean - y[None]) ** 2 + var, axis=(-2, -1))   # (times,)

    @jax.jit                        # one XLA program for kernels, eigensolves and all times
    def infinite_curves(x_train, y_train, x_test, ts):
        predict_fn = predict.gradient_descent_mse_ensemble(
            infinite.kernel_fn, x_train, y_train, learning_rate=lr, diag_reg=1e-4)
        g_train = predict_fn(ts, None, 'ntk', compute_cov=True)
        g_test = predict_fn(ts, x_test, 'ntk', compute_cov=True)
        return expected_loss(g_train, y_train), expected_loss(g_test, y_test), g_test

    inf_train, inf_test, g_test = infinite_curves(x_train, y_train, x_test, ts)
    inf_mean = np.asarray(g_test.mean[-1, :, 0])
    inf_std = np.sqrt(np.maximum(np.diag(np.asarray(g_test.covariance[-1])), 0.))
    t_inf = time.perf_counter() - t0

    init_fn, apply_fn, _ = finite
    params = jax.vmap(lambda k: init_fn(k, (-1, 1))[1])(jax.random.split(k_init, cfg.ens_size))

    def loss(p, x, y):
        return 0.5 * jnp.mean((apply_fn(p, x) - y) ** 2)

    def train_one(p):
        def gd(p, _):
            g = jax.grad(loss)(p, x_train, y_train)
            return jax.tree.map(lambda w, dw: w - lr * dw, p, g), None

        def chunk(p, _):
            record = (loss(p, x_train, y_train), loss(p, x_test, y_test))
            return jax.lax.scan(gd, p, None, length=every)[0], record

        p, rec = jax.lax.scan(chunk, p, None, length=len(ts) - 1)
        return p, (jnp.append(rec[0], loss(p, x_train, y_train)),
                   jnp.append(rec[1], loss(p, x_test, y_test)))

    t0 = time.perf_counter()
    trained, (fin_train, fin_test) = jax.jit(jax.vmap(train_one))(params)
    fx = np.asarray(jax.vmap(apply_fn, (0, None))(trained, x_test))[..., 0]
    t_fin = time.perf_counter() - t0

    import matplotlib.pyplot as plt  # optional dependency (the demo extra)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = np.asarray(ts)
    ax1.loglog(steps[1:], np.asarray(inf_train)[1:], 'C0-', lw=2, label='infinite NTK, train')
    ax1.loglog(steps[1:], np.asarray(inf_test)[1:], 'C1-', lw=2, label='infinite NTK, test')
    ax1.loglog(steps[1:], np.asarray(fin_train).mean(0)[1:], 'C0--',
               label=f'{cfg.ens_size} finite nets (width {cfg.ens_width}), train')
    ax1.loglog(steps[1:], np.asarray(fin_test).mean(0)[1:], 'C1--', label='finite nets, test')
    ax1.set_xlabel(f'gradient descent step (learning rate {lr:.2g})')
    ax1.set_ylabel('mean loss ½(f - y)²')
    ax1.set_title('Loss during training')
    ax1.legend(fontsize=8)
    xs = np.asarray(x_test[:, 0])
    ax2.plot(xs, np.asarray(y_test[:, 0]), 'k:', lw=1, label='sin(x)')
    ax2.plot(xs, inf_mean, 'C0-', lw=2, label='infinite NTK ensemble mean')
    ax2.fill_between(xs, inf_mean - 2 * inf_std, inf_mean + 2 * inf_std, color='C0', alpha=.2,
                     label='± 2σ (infinite)')
    fin_mean, fin_std = fx.mean(0), fx.std(0)
    ax2.plot(xs, fin_mean, 'C3--', label='finite ensemble mean')
    ax2.fill_between(xs, fin_mean - 2 * fin_std, fin_mean + 2 * fin_std, color='C3', alpha=.12,
                     label='± 2σ (finite)')
    ax2.plot(np.asarray(x_train[:, 0]), np.asarray(y_train[:, 0]), 'ko', label='train')
    ax2.set_title(f'Predictions after {cfg.ens_steps} steps')
    ax2.set_xlabel('x')
    ax2.legend(fontsize=8, loc='lower right')
    fig.suptitle('Erf network, W_std = 1.5, b_std = 0.05 (NT paper, Figure 1)')
    fig.tight_layout()
    path = out_dir / 'figure1_sin_regression.png'
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return dict(png=str(path), learning_rate=lr, seconds_infinite=t_inf, seconds_finite=t_fin,
                final_test_loss_infinite=float(inf_test[-1]),
                final_test_loss_finite=float(np.mean(np.asarray(fin_test)[:, -1])),
                mean_abs_gap=float(np.mean(np.abs(fin_mean - inf_mean))),
                std_infinite=float(inf_std.mean()), std_finite=float(fin_std.mean()))


# ----------------------------------------------------------------------------- the run


def choose_pool_size(rate_s_per_tile: float, tile: int, n_test: int, budget_s: float,
                     lo: int, hi: int) -> int:
    """The largest multiple of `tile` in [lo, hi] whose train-train (upper triangle) and
    test-train tiles take at most `budget_s` at `rate_s_per_tile` (never below `lo`)."""
    best = lo
    for n in range(tile, hi + 1, tile):
        t = math.ceil(n / tile)
        tiles = t * (t + 1) // 2 + math.ceil(n_test / tile) * t
        if tiles * rate_s_per_tile <= budget_s and n >= lo:
            best = n
    return best


def run(quick: bool = False, out: str | os.PathLike = 'demo_out') -> dict:
    """Run the demo and return its results (also written to OUT/results.json)."""
    import matplotlib  # optional dependency (the demo extra)
    matplotlib.use('Agg')


    cfg = QUICK if quick else FULL
    t_start = _T0[0] = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {'mode': 'quick' if quick else 'full', 'device': str(jax.devices()[0])}
    _say(f'ntc {ntc.__version__} demo ({res["mode"]}) on {len(jax.devices())} '
         f'{jax.devices()[0].platform.upper()} device(s); outputs go to {out_dir.resolve()}')
    if hasattr(os, 'getloadavg'):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        res['load_average'] = load
        _say(f'load average {load:.1f} on {cores} cores' + (
            ': the machine is busy, timings will be slower than on an idle one'
            if load > cores else ''))

    # -- 1. two conv nets from specs/ and their plans ---------------------------------------
    _section('1. Two conv nets compiled from specs/ (8×8×1 digits)')
    docs = {k: spec.load_document(SPECS / f'digits_{k}.yaml') for k in ('flatten', 'myrtle')}
    shape = (-1, 8, 8, 1)
    plans = {k: ntc.compile(d['net'], shape) for k, d in docs.items()}
    per_entry = {}
    for k, title in (('myrtle', 'WITH pooling'), ('flatten', 'WITHOUT pooling')):
        _say(f'\n-- specs/digits_{k}.yaml ({title}): {docs[k]["name"]}')
        _say(plans[k].explain())
        per_entry[k] = plans[k].total('flops', 1000, 1000) / 1e6
    ratio = per_entry['myrtle'] / per_entry['flatten']
    _say(f'\nFLOPs per kernel entry: pooling net {per_entry["myrtle"]:.3g}, Flatten net '
         f'{per_entry["flatten"]:.3g} ({ratio:.0f}x).  Pooling mixes positions, so every layer '
         'before it keeps the covariance of every pair of positions (layout sp=FULL, 64×64 '
         'per pair of images); without pooling the diagonal suffices (sp=DIAG, 64 per pair).')
    res['flops_per_entry'] = per_entry

    # -- 2. data and the Flatten net's kernels ------------------------------------------------
    xtr, ytr, xte, yte = load_digits_split(cfg.n_train, cfg.n_test, cfg.seed)
    _section(f'2. NNGP and NTK kernels on digits: {len(xtr)} train, {len(xte)} test '
             '(scikit-learn, bundled)')
    fn, compile_s = batched(docs['flatten']['net'].kernel_fn, xtr, xte, cfg.flatten_tile)
    k_dd, k_td, dt, us = kernel_pair(fn, xtr, xte, 'Flatten net')
    _say(f'Flatten net: {dt:.1f} s after {compile_s:.1f} s compiling: {us:.1f} µs per kernel '
         'entry')
    res['nt'] = {'flatten': compare_with_nt(docs['flatten']['net'], xtr, xte, cfg.flatten_tile,
                                            'Flatten net')}
    sizes = [n for n in cfg.flatten_sizes if n <= len(xtr)]
    flat = kernel_inference(k_dd, k_td, ytr, yte, sizes)
    res['flatten'] = dict(n_train=len(xtr), n_test=len(xte), seconds=dt, us_per_entry=us,
                          **flat)

    # -- 3. baselines ------------------------------------------------------------------------
    _section('3. Baselines: RBF kernel, finite nets of the same architectures trained by SGD')
    rbf, gamma = rbf_baseline(xtr, ytr, xte, yte, sizes)
    _say(f'RBF kernel exp(-γ‖x - x\'‖²), γ = {gamma:.4f}: ' + ', '.join(
        f'n={n}: {a:.1%}' for n, a in rbf.items()))
    res['rbf'] = rbf
    sgd_flat = {}
    t0 = time.perf_counter()
    for n in (s for s in cfg.sgd_sizes if s <= len(xtr)):
        sgd_flat[n] = train_finite(docs['flatten']['net'], xtr[:n], ytr[:n], xte, yte,
                                   cfg.sgd_steps, cfg.sgd_batch, lr=4.0, seed=cfg.seed)
        _say(f'finite Flatten net (widths of the spec), {cfg.sgd_steps} SGD steps of '
             f'{cfg.sgd_batch}, n={n}: {sgd_flat[n]:.1%}')
    res['sgd_flatten'] = sgd_flat
    res['sgd_seconds'] = time.perf_counter() - t0

    # -- 4. Figure 1 -------------------------------------------------------------------------
    _section('4. NT paper Figure 1: infinite Erf network vs a finite ensemble on sin(x)')
    fig1 = figure1(cfg, out_dir)
    _say(f'learning rate {fig1["learning_rate"]:.3g} (half the largest stable one).  '
         f'Infinite width ({fig1["seconds_infinite"]:.1f} s): final test loss '
         f'{fig1["final_test_loss_infinite"]:.4f};  {cfg.ens_size} finite nets of width '
         f'{cfg.ens_width}, {cfg.ens_steps} steps ({fig1["seconds_finite"]:.1f} s): '
         f'{fig1["final_test_loss_finite"]:.4f}')
    _say(f'mean |finite - infinite| of the predictive mean {fig1["mean_abs_gap"]:.3f}; '
         f'mean σ: infinite {fig1["std_infinite"]:.3f}, finite {fig1["std_finite"]:.3f}')
    res['figure1'] = fig1

    # -- 5. the pooling net, as many training digits as the budget allows --------------------
    net = docs['myrtle']['net']
    tile = cfg.pool_tile
    fn, compile_s = batched(net.kernel_fn, xtr, xte, tile)
    if cfg.pool_budget_s > 0:
        t0 = time.perf_counter()
        fn.progress = False
        fn(xte[tile:2 * tile], xtr[:tile], ('nngp', 'ntk'))           # one timed tile
        fn.progress = True
        rate = time.perf_counter() - t0
        left = cfg.total_budget_s - (time.perf_counter() - t_start) - 25.  # SGD, plots
        budget = max(0., min(cfg.pool_budget_s, left))
        n_pool = choose_pool_size(rate, tile, len(xte), budget, cfg.pool_min,
                                  min(cfg.pool_max, len(xtr)))
        _say(f'\npooling net: compiled in {compile_s:.1f} s; {rate:.2f} s per {tile}×{tile} '
             f'tile ({rate / tile ** 2 * 1e6:.0f} µs per entry); budget {budget:.0f} s -> '
             f'{n_pool} training digits')
    else:
        n_pool = cfg.pool_min
    _section(f'5. Pooling net kernels: {n_pool} train, {len(xte)} test')
    pk_dd, pk_td, pdt, pus = kernel_pair(fn, xtr[:n_pool], xte, 'pooling net')
    _say(f'pooling net: {pdt:.1f} s, {pus:.0f} µs per kernel entry')
    res['nt']['pool'] = compare_with_nt(net, xtr, xte, tile, 'pooling net')
    psizes = sorted({n for n in (n_pool // 4, n_pool // 2, n_pool) if n >= 10})
    pool = kernel_inference(pk_dd, pk_td, ytr, yte, psizes)
    pool_rbf, _ = rbf_baseline(xtr, ytr, xte, yte, psizes)
    sgd_pool = {n_pool: train_finite(net, xtr[:n_pool], ytr[:n_pool], xte, yte, cfg.sgd_steps,
                                     cfg.sgd_batch, lr=10.0, seed=cfg.seed)}
    res['pool'] = dict(n_train=n_pool, n_test=len(xte), seconds=pdt, us_per_entry=pus, **pool)
    res['sgd_pool'] = sgd_pool
    res['rbf'].update(pool_rbf)

    # -- results -------------------------------------------------------------------------------
    _section('Digits test accuracy')
    n, m = len(xtr), n_pool
    rows = [
        ('Flatten conv net, exact NNGP inference', n, flat['nngp'][n]),
        ('Flatten conv net, NTK gradient descent, t = ∞', n, flat['ntk'][n]),
        ('Flatten conv net, finite (widths of the spec), SGD', n, sgd_flat.get(n)),
        ('Pooling conv net, exact NNGP inference', m, pool['nngp'][m]),
        ('Pooling conv net, NTK gradient descent, t = ∞', m, pool['ntk'][m]),
        ('Pooling conv net, finite (widths of the spec), SGD', m, sgd_pool[m]),
        ('RBF kernel regression', n, rbf[n]),
        ('RBF kernel regression', m, res['rbf'][m]),
    ]
    _say(f'{"method":<52} {"train":>6} {"test":>6}  accuracy')
    for name, k, acc in rows:
        if acc is not None:
            _say(f'{name:<52} {k:>6} {len(xte):>6}  {acc:6.1%}')
    res['accuracy_png'] = str(accuracy_plot(res, out_dir))
    res['seconds'] = time.perf_counter() - t_start
    (out_dir / 'results.json').write_text(json.dumps(res, indent=1, default=str))
    _say(f'\nDone in {res["seconds"]:.0f} s (CPU time {time.process_time():.0f} s).  Outputs in '
         f'{out_dir.resolve()}:')
    for p in (fig1['png'], res['accuracy_png'], out_dir / 'results.json'):
        _say(f'  {p}')
    return res


def accuracy_plot(res: dict, out_dir: Path) -> Path:
    """Digits test accuracy against training-set size for every method."""
    import matplotlib.pyplot as plt  # optional dependency (the demo extra)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = [('Flatten net NNGP', res['flatten']['nngp'], 'C0-o'),
             ('Flatten net NTK (t=∞)', res['flatten']['ntk'], 'C0--s'),
             ('Pooling net NNGP', res['pool']['nngp'], 'C1-o'),
             ('Pooling net NTK (t=∞)', res['pool']['ntk'], 'C1--s'),
             ('RBF kernel', res['rbf'], 'C2-^'),
             ('Flatten net, finite, SGD', res['sgd_flatten'], 'C0:x'),
             ('Pooling net, finite, SGD', res['sgd_pool'], 'C1:x')]
    for label, acc, style in lines:
        if acc:
            ns = sorted(acc)
            ax.plot(ns, [100 * acc[n] for n in ns], style, label=label, ms=5)
    ax.set_xscale('log')
    ax.set_xlabel('training digits')
    ax.set_ylabel(f'test accuracy (%) on {res["flatten"]["n_test"]} digits')
    ax.set_title('scikit-learn 8×8 digits: infinite-width kernels vs baselines')
    ax.grid(alpha=.3, which='both')
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / 'digits_accuracy.png'
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `ntc demo` arguments (added to `parser` when given)."""
    p = parser or argparse.ArgumentParser(prog='ntc demo', description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='a reduced run (small sizes) that finishes well under a minute')
    p.add_argument('--out', default='demo_out', help='output folder (default: demo_out)')
    return p


def main(argv=None) -> int:
    """Entry point of `ntc demo` (also `python -m ntc.demo`)."""
    args = build_parser().parse_args(argv)
    run(args.quick, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
