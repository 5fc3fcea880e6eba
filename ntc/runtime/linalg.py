"""Linear algebra of the predict API on train kernels: kernels as matrices, regularisation,
Cholesky and eigendecompositions with accuracy checks (`Factor`), and preconditioned conjugate
gradients (`cg_solve`, `CGFactor`) on kernel operators held as one (possibly sharded) array
(`DenseOperator`) or as tiles of a `TileStore` streamed from disk (`TileOperator`), with
Jacobi or pivoted-Cholesky preconditioners and a Lanczos estimate of the condition number."""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ..checks import is_concrete
from ..errors import InputError, NumericalError
from .predict_checks import FIX_HINT, check_accuracy, check_finite
from .store import TileStore

# ---------------------------------------------------------------------------------------------
# kernels as matrices


def as_matrix(k):
    """A kernel with axes (a0, b0, a1, b1, ...) as the matrix (a0·a1·..., b0·b1·...)."""
    n = k.ndim // 2
    k = jnp.transpose(k, tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2)))
    return k.reshape(math.prod(k.shape[:n]), math.prod(k.shape[n:]))


def from_matrix(m, shape_a, shape_b, n_lead: int = 0):
    """Inverse of `as_matrix` on the last two axes of `m` (leading axes kept)."""
    lead = m.shape[:n_lead]
    m = m.reshape(lead + tuple(shape_a) + tuple(shape_b))
    n = len(shape_a)
    perm = list(range(n_lead)) + [n_lead + i + s * n for i in range(n) for s in (0, 1)]
    return jnp.transpose(m, perm)


# ---------------------------------------------------------------------------------------------
# dense factorisations


def _condition_lower_bound(low, a, steps: int = 8) -> float:
    """A cheap lower bound on the condition number of ``a = low lowᵀ`` (concrete): the larger of
    ``(max L_ii / min L_ii)²`` (the L_ii are the eigenvalues of the triangular factor) and the
    ratio of Rayleigh-quotient estimates of λ_max (power iteration) and λ_min (inverse iteration
    with the factor), which approach the extreme eigenvalues from inside.  O(steps·n²)."""
    d = jnp.abs(jnp.diagonal(low))
    if float(jnp.min(d)) == 0:
        return math.inf
    diag_bound = float(jnp.max(d) / jnp.min(d)) ** 2
    v0 = np.random.default_rng(0).standard_normal(a.shape[0])
    v = jnp.asarray(v0 / np.linalg.norm(v0), a.dtype)
    w = v
    for _ in range(steps):
        v = a @ v
        v = v / jnp.linalg.norm(v)
        w = jsl.cho_solve((low, True), w)
        w = w / jnp.linalg.norm(w)
    top = float(v @ (a @ v))
    inv = float(w @ jsl.cho_solve((low, True), w))   # ≤ 1 / λ_min
    if not (math.isfinite(top) and math.isfinite(inv)) or inv <= 0 or top <= 0:
        return math.inf
    return max(diag_bound, top * inv)


def regularize(a, diag_reg, absolute):
    """``a + s I`` with ``s = diag_reg``, or ``diag_reg`` times the mean diagonal of ``a`` unless
    `absolute` (NT's ``diag_reg_absolute_scale``)."""
    n = a.shape[0]
    scale = diag_reg if absolute else diag_reg * jnp.trace(a) / n
    return a + scale * jnp.eye(n, dtype=a.dtype)


def cholesky(a, what: str):
    """Lower Cholesky factor; a NaN factor (the matrix is not positive definite) raises."""
    check_finite(a, what)
    low = jnp.linalg.cholesky(a)
    if is_concrete(low) and not bool(jnp.all(jnp.isfinite(low))):
        lo = float(jnp.linalg.eigvalsh(a)[0])
        raise NumericalError(f'Cholesky factorisation of the {a.shape[0]}x{a.shape[0]} {what} '
                             f'failed: it is not positive definite (smallest eigenvalue {lo:.3g})',
                             hint=FIX_HINT)
    if is_concrete(low):
        check_accuracy(_condition_lower_bound(low, a), a.dtype, what)
    return low


def _eigh(a, what: str):
    """Eigendecomposition of a PSD matrix; eigenvalues clipped at 0, clearly negative ones raise."""
    check_finite(a, what)
    evals, evecs = jnp.linalg.eigh(a)
    if is_concrete(evals):
        if not bool(jnp.all(jnp.isfinite(evals))) or not bool(jnp.all(jnp.isfinite(evecs))):
            raise NumericalError(f'eigendecomposition of the {what} failed', hint=FIX_HINT)
        top = float(jnp.max(jnp.abs(evals)))
        tol = 10 * max(a.shape[0], 10) * float(jnp.finfo(a.dtype).eps) * top
        if float(evals[0]) < -tol:
            raise NumericalError(f'the {what} is not positive semi-definite: smallest eigenvalue '
                                 f'{float(evals[0]):.3g}, largest {float(evals[-1]):.3g}',
                                 hint=FIX_HINT)
    return jnp.maximum(evals, 0.), evecs


class Factor:
    """Lazily computed and cached Cholesky / eigendecomposition of a regularised train kernel."""

    def __init__(self, k, dtype, diag_reg, absolute, what):
        # built eagerly, so a concrete kernel stays concrete inside a `jax.jit` trace
        with jax.ensure_compile_time_eval():
            self.raw = as_matrix(jnp.asarray(k)).astype(dtype)
            self.mat = regularize(self.raw, diag_reg, absolute)
        self.dtype = self.mat.dtype
        self.what = what
        self._chol = None
        self._eig = None

    # The factorisations are computed eagerly even when first needed inside a `jax.jit` trace
    # of a predict_fn (the kernel is a constant there), so the cache never holds a tracer.

    def solve(self, b):
        if self._chol is None:
            with jax.ensure_compile_time_eval():
                self._chol = cholesky(self.mat, self.what)
        return jsl.cho_solve((self._chol, True), b)

    def eig(self):
        if self._eig is None:
            with jax.ensure_compile_time_eval():
                self._eig = _eigh(self.mat, self.what)
        return self._eig


# ---------------------------------------------------------------------------------------------
# conjugate gradients on kernels too big for one device's Cholesky


class CGInfo(NamedTuple):
    """How a conjugate-gradient solve went: iterations, the largest relative residual
    ``‖b - A x‖ / ‖b‖`` over the right-hand sides after each iteration (recursive) and at the
    end (recomputed), whether it converged, and a Lanczos estimate of the condition number of
    the preconditioned matrix."""

    iterations: int
    residuals: np.ndarray
    residual: float
    converged: bool
    condition_estimate: float
    preconditioner: str
    seconds: float


class DenseOperator:
    """A kernel matrix held as one (possibly row-block-sharded) `jax.Array`; products run as
    one jitted program, so a sharded matrix multiplies where its rows live and the vector is
    replicated on every device of the mesh (one process or several)."""

    def __init__(self, mat, n: int | None = None):
        self.mat = mat
        self.n = mat.shape[0] if n is None else n   # rows beyond n: an identity padding block
        self.pad = mat.shape[0] - self.n
        self.dtype = mat.dtype
        sharding = getattr(mat, 'sharding', None)
        mesh = getattr(sharding, 'mesh', None)
        if mesh is not None and hasattr(sharding, 'spec'):
            rep = NamedSharding(mesh, PartitionSpec())
            self.replicated = rep
            self._mv = jax.jit(lambda k, v: k @ v, out_shardings=rep)
            self._diag = jax.jit(jnp.diagonal, out_shardings=rep)
        else:
            self.replicated = None
            self._mv = jax.jit(lambda k, v: k @ v)
            self._diag = jax.jit(jnp.diagonal)
        self._row = None

    def put(self, v):
        v = jnp.asarray(v, self.dtype)
        if self.pad and v.ndim and v.shape[0] == self.n:
            v = jnp.concatenate([v, jnp.zeros((self.pad,) + v.shape[1:], v.dtype)])
        if self.replicated is not None and not self.replicated.is_fully_addressable:
            host = np.asarray(v)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda i: host[i])
        return v if self.replicated is None else jax.device_put(v, self.replicated)

    def diag(self):
        return self._diag(self.mat)

    def trace(self) -> float:
        return float(jnp.sum(self.diag())) - self.pad

    def host(self, v):
        """A replicated array as a local numpy array (on any process)."""
        if self.replicated is not None and not self.replicated.is_fully_addressable:
            return np.asarray(jax.jit(lambda a: a, out_shardings=self.replicated)(v)
                              .addressable_data(0))
        return np.asarray(v)

    def row(self, i: int):
        if self._row is None:
            self._row = jax.jit(lambda k, j: k[j], out_shardings=self.replicated)
        return self.host(self._row(self.mat, i))

    def matvec(self, v):
        return self._mv(self.mat, v)


class TileOperator:
    """A symmetric 2-D kernel kept as tiles in a `TileStore`: each product streams the
    upper-triangle tiles from disk once (tile (i, j) contributes to rows i and, mirrored, j)."""

    def __init__(self, store, name):
        self.store = store if isinstance(store, TileStore) else TileStore(store)
        job = self.store.job
        self.store.refresh()
        if not job.symmetric:
            raise InputError(f'the tile store {self.store.path} holds a kernel between two '
                             'different inputs; a solve needs the train-train kernel (x2=None)')
        if name not in job.get:
            raise InputError(f'the tile store {self.store.path} holds {job.get}, not {name!r}: '
                             f'compute it with get including {name!r}')
        self.name, self.n, self.tile = name, job.n1, job.tile
        self.dtype = jnp.dtype(job.dtype) if jnp.issubdtype(jnp.dtype(job.dtype),
                                                           jnp.floating) else jnp.float64
        self.t = math.ceil(self.n / self.tile)
        self.replicated = None

    def _tiles(self):
        for i in range(self.t):
            for j in range(i, self.t):
                arrays = self.store.load(i, j)
                if arrays is None:
                    raise InputError(f'tile ({i}, {j}) is missing from {self.store.path}',
                                     hint='finish the kernel job (resume=True) first')
                k = arrays[self.name]
                if k.ndim != 2:
                    raise InputError(f'the {self.name} kernel in {self.store.path} has spatial '
                                     f'axes {k.shape[2:]}; a solve needs a 2-D kernel')
                r0, c0 = i * self.tile, j * self.tile
                rows, cols = min(self.tile, self.n - r0), min(self.tile, self.n - c0)
                yield i, j, r0, c0, k[:rows, :cols]

    def put(self, v):
        return np.asarray(v, self.dtype)

    def trace(self) -> float:
        return float(np.sum(self.diag()))

    def host(self, v):
        return np.asarray(v)

    def row(self, i: int):
        r = i // self.tile
        out = np.empty(self.n, self.dtype)
        for j in range(self.t):
            a, b = (r, j) if j >= r else (j, r)
            arrays = self.store.load(a, b)
            if arrays is None:
                raise InputError(f'tile ({a}, {b}) is missing from {self.store.path}',
                                 hint='finish the kernel job (resume=True) first')
            k = arrays[self.name] if (a, b) == (r, j) else arrays[self.name].T
            c0 = j * self.tile
            cols = min(self.tile, self.n - c0)
            out[c0:c0 + cols] = k[i - r * self.tile, :cols]
        return out

    def diag(self):
        d = np.empty(self.n, self.dtype)
        for i, j, r0, _, k in self._tiles():
            if i == j:
                d[r0:r0 + k.shape[0]] = np.diagonal(k)
        return d

    def matvec(self, v):
        v = np.asarray(v)
        out = np.zeros(v.shape, np.result_type(v, self.dtype))
        for i, j, r0, c0, k in self._tiles():
            out[r0:r0 + k.shape[0]] += k @ v[c0:c0 + k.shape[1]]
            if i != j:
                out[c0:c0 + k.shape[1]] += k.T @ v[r0:r0 + k.shape[0]]
        return out


def _lanczos_condition(alphas, betas) -> float:
    """Condition number of the Lanczos tridiagonal matrix built from CG's step sizes α_k and
    β_k (Golub & Van Loan 2013, sec. 11.3.5): its extreme eigenvalues approach those of the
    preconditioned matrix from inside, so this is a lower bound that tightens with iterations."""
    m = len(alphas)
    if m == 0:
        return 1.0
    a = np.asarray(alphas, np.float64)
    b = np.asarray(betas[:m - 1], np.float64)
    diag = 1.0 / a
    diag[1:] += b / a[:-1]
    off = np.sqrt(np.maximum(b, 0.0)) / a[:-1]
    t = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
    ev = np.linalg.eigvalsh(t)
    if not np.all(np.isfinite(ev)) or ev[0] <= 0:
        return math.inf
    return float(ev[-1] / ev[0])


@jax.jit
def _precondition(pc, r):
    """z = P⁻¹ r for P⁻¹ = diag(inv_d) - U W Uᵀ (Jacobi: U empty; low rank: Woodbury)."""
    inv_d, u, w = pc
    return r * inv_d - u @ (w @ (u.T @ r))


def _cg_update(x, r, p, q, rz, pc, bnorm):
    """One CG update after the product q = A p: new x, r, search direction, rᵀz, and the
    scalars the host looks at (min pᵀAp, max relative residual, α and β of column 0)."""
    pq = jnp.sum(p * q, axis=0)
    alpha = jnp.where(pq > 0, rz / jnp.where(pq > 0, pq, 1.0), 0.0)
    x = x + alpha[None] * p                     # alpha, beta: one per column of (N, C)
    r = r - alpha[None] * q
    z = _precondition(pc, r)
    rz_new = jnp.sum(r * z, axis=0)
    beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
    rel = jnp.max(jnp.sqrt(jnp.sum(r * r, axis=0)) / bnorm)
    active = rz > 0  # columns not yet solved exactly (a zero column never is active)
    min_pq = jnp.min(jnp.where(active, pq, jnp.inf)) if pq.size else jnp.inf
    stats = jnp.stack([jnp.where(jnp.any(active), min_pq, 1.0), rel, alpha[0],
                       beta[0]]).astype(x.dtype)
    return x, r, z + beta[None] * p, rz_new, stats


@functools.partial(jax.jit, static_argnums=(6, 7))
def _cg_device_loop(mat, shift, b, pc, bnorm, tol, maxiter, stall):
    """The CG iterations of `cg_solve` as one `lax.while_loop` (no host round trip per
    iteration): stops at relative residual `tol`, at a non-finite residual, at non-positive
    curvature, or after `stall` iterations without halving the best residual."""
    def cond(c):
        it, _, _, _, _, _, _, _, best_at, min_pq, rel = c
        return ((it < maxiter) & (rel > tol) & jnp.isfinite(rel) & (min_pq > 0)
                & (it - best_at <= stall))

    def body(c):
        it, x, r, p, rz, hist, ab, best, best_at, _, _ = c
        q = mat @ p + shift * p
        x, r, p, rz, stats = _cg_update(x, r, p, q, rz, pc, bnorm)
        pq, rel = stats[0], stats[1]
        improved = rel < 0.5 * best
        return (it + 1, x, r, p, rz, hist.at[it].set(rel), ab.at[it].set(stats[2:]),
                jnp.where(improved, rel, best), jnp.where(improved, it + 1, best_at), pq, rel)

    dt = b.dtype
    p = _precondition(pc, b)
    init = (0, b * 0, b, p, jnp.sum(b * p, axis=0), jnp.zeros(maxiter, dt),
            jnp.zeros((maxiter, 2), dt), jnp.asarray(jnp.inf, dt), 0, jnp.asarray(1.0, dt),
            jnp.asarray(1.0, dt))
    it, x, _, _, _, hist, ab, _, _, min_pq, _ = jax.lax.while_loop(cond, body, init)
    return x, it, hist, ab, min_pq


def _pivoted_cholesky(op, shift: float, rank: int):
    """Preconditioner P = L Lᵀ + σ I from a rank-`rank` pivoted Cholesky factor L of the kernel
    (Harbrecht, Peters & Schneider 2012; as a CG preconditioner: Gardner et al. 2018), with σ the
    shift plus the mean diagonal the factor leaves unexplained; applied by the Woodbury identity
    P⁻¹ = (I - L (σ I + LᵀL)⁻¹ Lᵀ) / σ.  Reads `rank` rows of the kernel."""
    diag = np.asarray(op.host(op.diag()), np.float64)
    n = diag.shape[0]
    low = np.zeros((n, rank))
    resid = diag.copy()
    total = float(np.sum(diag))
    m = 0
    while m < rank:
        i = int(np.argmax(resid))
        if resid[i] <= 1e-12 * total:
            break
        row = np.asarray(op.row(i), np.float64)
        col = (row - low[:, :m] @ low[i, :m]) / math.sqrt(resid[i])
        low[:, m] = col
        resid = np.maximum(resid - col ** 2, 0.0)
        m += 1
    low = low[:, :m]
    sigma = shift + float(np.mean(resid))
    sigma = sigma if sigma > 0 else 1e-12 * total / n
    w = np.linalg.inv(sigma * np.eye(m) + low.T @ low) / sigma
    return (op.put(np.full((n, 1), 1.0 / sigma, op.dtype)), op.put(low.astype(op.dtype)),
            op.put(w.astype(op.dtype)))


def cg_default_tol(dtype) -> float:
    """The default relative-residual target of `cg_solve` in `dtype`: 1e-10, but never below
    100 machine epsilons (the true residual of a solve in float32 cannot reach 1e-10)."""
    eps = float(jnp.finfo(dtype).eps)
    return min(1e-2, max(1e-10, 100 * eps))


def cg_solve(op, b, shift: float = 0., tol: float | None = None, maxiter: int | None = None,
             preconditioner: str | None = 'jacobi', what: str = 'kernel') -> tuple[Any, CGInfo]:
    """Solve ``(K + shift I) X = B`` for all columns of ``B`` at once by preconditioned
    conjugate gradients (Hestenes & Stiefel 1952; Saad 2003, alg. 9.1), where ``K`` is an
    operator with ``matvec`` and ``diag``.  ``preconditioner='jacobi'`` divides by the diagonal
    of ``K + shift I``; ``'pivchol'`` (``'pivchol<rank>'``, default rank 100) uses a low-rank
    pivoted-Cholesky factor plus a shift (`_pivoted_cholesky`), which pays off on kernels with
    fast-decaying spectra; None uses none.  Stops when every column's relative residual is below
    `tol` (None: `cg_default_tol` of the operator's dtype); raises `NumericalError` when the
    matrix is not positive definite, when the residual stagnates or `maxiter` runs out, or when
    the Lanczos estimate κ of the condition number says float arithmetic cannot deliver the
    solution (κ·ε ≥ 1); warns (`AccuracyWarning`) when κ·ε > 0.01."""
    t0 = time.perf_counter()
    dtype = op.dtype
    tol = cg_default_tol(dtype) if tol is None else float(tol)
    n = op.n
    maxiter = maxiter or max(100, min(10 * n, 20000))
    b = op.put(b)
    d = op.diag() + shift
    if preconditioner not in (None, 'none') and float(jnp.min(d)) <= 0:
        raise NumericalError(f'the {what} has a non-positive diagonal entry '
                             f'({float(jnp.min(d)):.3g}): it is not positive definite',
                             hint=FIX_HINT)
    no_u = (op.put(np.zeros((d.shape[0], 0), dtype)), op.put(np.zeros((0, 0), dtype)))
    if preconditioner in (None, 'none'):
        pc, pname = (jnp.ones_like(d)[:, None],) + no_u, 'none'
    elif preconditioner == 'jacobi':
        pc, pname = ((1.0 / d)[:, None],) + no_u, 'jacobi'
    elif isinstance(preconditioner, str) and preconditioner.startswith('pivchol') and \
            preconditioner[7:].isdigit() or preconditioner == 'pivchol':
        rank = int(preconditioner[7:] or 100)
        pc, pname = _pivoted_cholesky(op, shift, min(rank, d.shape[0])), preconditioner
    else:
        raise InputError("preconditioner must be 'jacobi', 'pivchol' (or 'pivchol<rank>', e.g. "
                         f"'pivchol50') or None, got {preconditioner!r}")

    def apply(v):
        return op.matvec(v) + shift * v

    bnorm = jnp.sqrt(jnp.sum(b * b, axis=0))
    bnorm = jnp.where(bnorm > 0, bnorm, 1.0)
    x, r = b * 0, b
    p = _precondition(pc, r)
    rz = jnp.sum(r * p, axis=0)
    stall = max(100, int(4 * math.sqrt(n)))
    if isinstance(op, DenseOperator):  # the whole loop as one program on the mesh
        x, its, hist, ab, min_pq = _cg_device_loop(op.mat, shift, b, pc, bnorm, tol, maxiter,
                                                   stall)
        its = int(its)
        history = [float(v) for v in np.asarray(hist)[:its]]
        ab = np.asarray(ab)[:its]
        alphas, betas = list(ab[:, 0]), list(ab[:, 1])
        if float(min_pq) <= 0:
            raise NumericalError(
                f'conjugate gradients met a direction of non-positive curvature (pᵀAp = '
                f'{float(min_pq):.3g}) after {its} iterations: the {what} is not positive '
                'definite', hint=FIX_HINT)
        converged = bool(history) and history[-1] <= tol
        its = maxiter + 1  # skip the host loop below
    else:
        history, alphas, betas = [], [], []
        converged = False
        its = 1
    best, best_at = math.inf, 0
    for it in range(its, maxiter + 1):
        q = apply(p)
        x, r, p, rz_new, stats = _cg_update(x, r, p, q, rz, pc, bnorm)
        min_pq, rel, alpha0, beta0 = (float(v) for v in np.asarray(stats))
        if min_pq <= 0:
            raise NumericalError(
                f'conjugate gradients met a direction of non-positive curvature (pᵀAp = '
                f'{min_pq:.3g}) after {it} iterations: the {what} is not positive definite',
                hint=FIX_HINT)
        rz = rz_new
        history.append(rel)
        alphas.append(alpha0)
        betas.append(beta0)
        if not math.isfinite(rel):
            break
        if rel <= tol:
            converged = True
            break
        if rel < 0.5 * best:
            best, best_at = rel, it
        elif it - best_at > stall:
            break
    true = float(jnp.max(jnp.sqrt(jnp.sum((b - apply(x)) ** 2, axis=0)) / bnorm))
    cond = _lanczos_condition(alphas, betas)
    info = CGInfo(len(history), np.asarray(history), true, converged and true <= 10 * tol,
                  cond, pname, time.perf_counter() - t0)
    if not info.converged:
        raise NumericalError(
            f'conjugate gradients did not solve the {n}x{n} {what} system: relative residual '
            f'{true:.3g} after {info.iterations} iterations (target {tol:g}); estimated '
            f'condition number {cond:.3g}: the kernel is ill-conditioned',
            hint=FIX_HINT + ', or raise cg_maxiter / loosen cg_tol')
    check_accuracy(cond, dtype, f'{n}x{n} {what}')
    return x, info


class CGFactor:
    """The `Factor` interface (``solve``, ``dtype``) on top of conjugate gradients; every solve
    appends its `CGInfo` to ``infos``."""

    def __init__(self, op, diag_reg, absolute, what, tol, maxiter, preconditioner):
        self.op = op
        self.dtype = op.dtype
        self.what = what
        if absolute:
            self.shift = float(diag_reg)
        else:
            self.shift = float(diag_reg) * op.trace() / op.n if diag_reg else 0.
        self.tol, self.maxiter, self.preconditioner = tol, maxiter, preconditioner
        self.infos: list[CGInfo] = []

    def solve(self, b):
        x, info = cg_solve(self.op, b, self.shift, self.tol, self.maxiter, self.preconditioner,
                           self.what)
        self.infos.append(info)
        if self.op.replicated is not None and not self.op.replicated.is_fully_addressable:
            # gather the solution onto every device; each process takes its local copy
            x = np.asarray(jax.jit(lambda v: v, out_shardings=self.op.replicated)(x)
                           .addressable_data(0))
        return jnp.asarray(x[:self.op.n])
