"""`TileStore`: a directory of finished kernel tiles that survives a crash.

The manifest has two parts: `manifest.json`, written once and atomically, records what the
tiles belong to (the plan's fingerprint, hashes of the inputs, the dtype, the kernels asked for
and the tile grid); `manifest.log` is an append-only journal with one line per finished tile,
its key and the sha256 of its file.  Each tile file is written atomically (temporary file,
fsync, rename) before its journal line is appended (one O_APPEND write, fsynced), so several
processes can share a store.  Opening a store for a different job raises `StoreError`; a tile
whose file is missing, truncated or corrupted, or whose journal line is torn, is recomputed,
never used.

Several processes (`ntc.runtime.distributed`) share one store: one of them writes the manifest,
the others `attach` to it, which checks that they run the same job, and each appends to its own
journal `manifest.p<I>.log` (no two writers ever share a file, so the journal stays intact on
file systems without atomic appends, such as NFS).  Readers take the union of all journals.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StoreError

MANIFEST = 'manifest.json'
JOURNAL = 'manifest.log'


def array_hash(x) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    if x is None:
        return 'none'
    x = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f'{x.dtype}{x.shape}'.encode())
    h.update(x.tobytes())
    return h.hexdigest()


@dataclass
class Job:
    """What a store's tiles belong to; two jobs match only if every field agrees."""

    plan: str
    x1: str
    x2: str
    dtype: str
    get: list[str]
    n1: int
    n2: int
    tile: int
    symmetric: bool


@dataclass
class Manifest:
    job: Job
    done: dict[str, set] = field(default_factory=dict)  # tile key -> sha256s of its file


def differences(a: Job, b: Job) -> list[str]:
    """The fields in which two jobs differ."""
    da, db = asdict(a), asdict(b)
    return [k for k in da if da[k] != db[k]]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class TileStore:
    """A resumable store of kernel tiles at `path` (a directory)."""

    def __init__(self, path: str | os.PathLike, writer: int | None = None):
        self.path = Path(path)
        self.writer = writer  # process id: each process appends to its own journal
        self.manifest: Manifest | None = None

    @property
    def journal(self) -> Path:
        """The journal this store object appends to."""
        return self.path / (JOURNAL if self.writer is None else f'manifest.p{self.writer}.log')

    # -- opening -------------------------------------------------------------------------------

    def open(self, job: Job, resume: bool) -> None:
        """Start (or, with `resume`, continue) `job` in this store."""
        if not self.path.parent.exists():
            raise StoreError(f'the directory {self.path.parent} does not exist',
                             hint='create it first or choose another store path')
        self.path.mkdir(exist_ok=True)
        existing = self._read_manifest()
        if existing is None:
            self.manifest = Manifest(job)
            body = json.dumps({'job': asdict(job)}, indent=1, sort_keys=True).encode()
            _atomic_write(self.path / MANIFEST, body)
            return
        if not resume:
            raise StoreError(f'{self.path} already holds tiles of a job',
                             hint='pass resume=True to continue it, or use a new path')
        mismatch = differences(existing.job, job)
        if mismatch:
            raise StoreError(f'{self.path} holds tiles of another job (different '
                             f'{", ".join(mismatch)})', hint='use a new store path for this job')
        self.manifest = existing

    def attach(self, job: Job) -> list[str]:
        """Join the job whose manifest another process wrote; returns the fields of `job` that
        disagree with the manifest (empty when this process runs the same job)."""
        existing = self._read_manifest()
        if existing is None:
            raise StoreError(f'{self.path} has no manifest to attach to',
                             hint='the process that opens the store (process 0) must run first')
        self.manifest = existing
        return differences(existing.job, job)

    @property
    def job(self) -> Job:
        """The job the store's tiles belong to."""
        if self.manifest is None:
            existing = self._read_manifest()
            if existing is None:
                raise StoreError(f'{self.path} holds no tile store (no {MANIFEST})',
                                 hint='compute the kernel into it with ntc.batch(store=...)')
            self.manifest = existing
        return self.manifest.job

    def _read_manifest(self) -> Manifest | None:
        f = self.path / MANIFEST
        if not f.exists():
            return None
        try:
            job = Job(**json.loads(f.read_text())['job'])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f'{f} is not a valid manifest: {e}',
                             hint='move the store aside and start a new one') from e
        return Manifest(job, self._read_journal())

    def _read_journal(self) -> dict[str, set]:
        done: dict[str, set] = {}
        for f in sorted(self.path.glob('manifest*.log')):
            for line in f.read_text(errors='replace').splitlines():
                parts = line.split()
                if len(parts) == 2 and len(parts[1]) == 64:  # a torn last line is skipped
                    done.setdefault(parts[0], set()).add(parts[1])
        return done

    def refresh(self) -> None:
        """Re-read the journals (tiles other processes finished meanwhile)."""
        for key, digests in self._read_journal().items():
            self.manifest.done.setdefault(key, set()).update(digests)

    def recorded(self) -> int:
        """Number of distinct tiles recorded in the journals (not yet verified)."""
        return len(self.manifest.done)

    # -- tiles ---------------------------------------------------------------------------------

    @staticmethod
    def key(i: int, j: int) -> str:
        return f'{i}_{j}'

    def _file(self, key: str) -> Path:
        return self.path / f'tile_{key}.npz'

    def has(self, i: int, j: int) -> bool:
        """True when tile (i, j) is recorded and its file is intact."""
        return self.load(i, j) is not None

    def load(self, i: int, j: int) -> dict | None:
        """The arrays of tile (i, j), or None if it is missing or damaged."""
        key = self.key(i, j)
        want = self.manifest.done.get(key)
        f = self._file(key)
        if want is None or not f.exists():
            return None
        data = f.read_bytes()
        if hashlib.sha256(data).hexdigest() not in want:
            return None
        try:
            with np.load(io.BytesIO(data)) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError):
            return None

    def save(self, i: int, j: int, arrays: dict) -> None:
        """Write tile (i, j) atomically and record it in the manifest."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        data = buf.getvalue()
        key = self.key(i, j)
        _atomic_write(self._file(key), data)
        digest = hashlib.sha256(data).hexdigest()
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f'{key} {digest}\n'.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.manifest.done.setdefault(key, set()).add(digest)
