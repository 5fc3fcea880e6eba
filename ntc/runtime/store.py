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

What keeps jobs apart:

- The job (`Job`) records everything that determines the numbers: the plan's fingerprint (user
  functions hashed by value, see `ntc.fingerprint.value_fingerprint`), the keyword inputs, hashes of
  x1 and x2, their dtype, the precision in effect (jax_enable_x64), the kernels asked for, and
  the tile grid.
- Every journal line carries the id of its job (a hash of the `Job`): a line of another job,
  left behind when `manifest.json` was deleted, never counts.  A store directory holding
  journals or tiles but no manifest is refused as a whole.
- One job at a time: `open` takes an exclusive `flock` on the file `lock`, which the OS releases
  when the process ends, so a crashed job never leaves the store locked.  The processes of one
  multi-process job `attach` without taking it.
- A write that fails (disk full, read-only file system, no permission) raises `StoreError` and
  leaves no tile recorded as done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StoreError

MANIFEST = 'manifest.json'
JOURNAL = 'manifest.log'
LOCK = 'lock'


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
    precision: str = ''  # 'x64' or 'x32' (jax_enable_x64), and any default matmul precision
    kwargs: str = 'none'  # fingerprint of the kernel function's keyword inputs

    @property
    def id(self) -> str:
        """A short hash of every field: what each journal line is tagged with."""
        body = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]


@dataclass
class Manifest:
    job: Job
    done: dict[str, set] = field(default_factory=dict)  # tile key -> sha256s of its file


def differences(a: Job, b: Job) -> list[str]:
    """The fields in which two jobs differ."""
    da, db = asdict(a), asdict(b)
    return [k for k in da if da[k] != db[k]]


def _describe(field_name: str, stored: Job, now: Job) -> str:
    """A mismatching field, with both values where they are short enough to read."""
    a, b = getattr(stored, field_name), getattr(now, field_name)
    if field_name in ('precision', 'dtype', 'tile', 'n1', 'n2', 'get', 'symmetric'):
        return f'{field_name}: {a} in the store, {b} now'
    return field_name


_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_WHY = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
        errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
        errno.EPERM: 'permission denied'}


def write_error(path, e: OSError) -> StoreError:
    """A one-line StoreError for a failed write of `path`."""
    why = _WHY.get(e.errno, e.strerror or str(e))
    return StoreError(f'cannot write {path}: {why}',
                      hint='free some space or choose a writable directory, then rerun with '
                           'resume=True (finished tiles are kept)')


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename); StoreError on failure,
    with no partial file left behind."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


class TileStore:
    """A resumable store of kernel tiles at `path` (a directory)."""

    def __init__(self, path: str | os.PathLike, writer: int | None = None):
        self.path = Path(path)
        self.writer = writer  # process id: each process appends to its own journal
        self.manifest: Manifest | None = None
        self._lock_fd: int | None = None

    @property
    def journal(self) -> Path:
        """The journal this store object appends to."""
        return self.path / (JOURNAL if self.writer is None else f'manifest.p{self.writer}.log')

    # -- opening -------------------------------------------------------------------------------

    def open(self, job: Job, resume: bool) -> None:
        """Start (or, with `resume`, continue) `job` in this store, holding its lock until
        `close`."""
        if not self.path.parent.exists():
            raise StoreError(f'the directory {self.path.parent} does not exist',
                             hint='create it first or choose another store path')
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise write_error(self.path, e) from None
        self.lock()
        try:
            self._open_locked(job, resume)
        except BaseException:
            self.close()
            raise

    def _open_locked(self, job: Job, resume: bool) -> None:
        existing = self._read_manifest()
        if existing is None:
            orphans = self._orphans()
            if orphans:
                raise StoreError(f'{self.path} holds {len(orphans)} tile or journal files (e.g. '
                                 f'{orphans[0]}) but no {MANIFEST}: they belong to an unknown job',
                                 hint='delete the directory (or use a new store path) to start '
                                      'a new job')
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
                             f'{", ".join(_describe(f, existing.job, job) for f in mismatch)})',
                             hint='use a new store path for this job')
        self.manifest = existing

    def _orphans(self) -> list[str]:
        """Tile and journal files in the directory (there should be none without a manifest)."""
        return sorted(f.name for f in self.path.iterdir()
                      if f.name.startswith(('tile_', 'manifest')) and f.name != MANIFEST)

    def lock(self) -> None:
        """Take the store's exclusive lock (StoreError when another job holds it)."""
        if self._lock_fd is not None:
            return
        f = self.path / LOCK
        try:
            fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            try:  # a finished store on read-only media can still be read
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                raise write_error(f, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _NO_LOCKS:  # e.g. Lustre mounted without -o flock
                warnings.warn(f'{self.path}: the file system does not support locks, so '
                              'nothing stops two jobs from sharing this store', stacklevel=3)
                self._lock_fd = fd
                return
            holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'another process'
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f'{self.path} is in use by another job ({holder})',
                                 hint='wait for it to finish, or use another store path') \
                    from None
            raise write_error(f, e) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f'pid {os.getpid()} on {os.uname().nodename}\n'.encode(), 0)
        except OSError:
            pass  # the note is for humans; the lock is what counts
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the OS does it too when the process ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter shutdown
            self.close()

    def recorded_job(self) -> Job | None:
        """The job recorded in the store's manifest, or None when there is none (yet)."""
        if not self.path.is_dir():
            return None
        existing = self._read_manifest()
        return None if existing is None else existing.job

    def discard_empty_job(self) -> bool:
        """Remove the manifest of a job that has no finished tile (so that it can be started
        again with another tile); False, and nothing removed, when some tile is recorded."""
        self.lock()
        try:
            existing = self._read_manifest()
            if existing is None or existing.done:
                return existing is None
            (self.path / MANIFEST).unlink()
            return True
        finally:
            self.close()

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
            stored = Job(**json.loads(f.read_text())['job'])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f'{f} is not a valid manifest: {e}',
                             hint='move the store aside and start a new one') from e
        return Manifest(stored, self._read_journal(stored.id))

    def _read_journal(self, job_id: str) -> dict[str, set]:
        """Tile key -> sha256s recorded by the journal lines of job `job_id` (lines of any
        other job, torn lines and lines of older formats are ignored)."""
        done: dict[str, set] = {}
        for f in sorted(self.path.glob('manifest*.log')):
            for line in f.read_text(errors='replace').splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[2] == job_id and len(parts[1]) == 64:
                    done.setdefault(parts[0], set()).add(parts[1])
        return done

    def refresh(self) -> None:
        """Re-read the journals (tiles other processes finished meanwhile)."""
        for key, digests in self._read_journal(self.manifest.job.id).items():
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
        line = f'{key} {digest} {self.manifest.job.id}\n'.encode()
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, 'short write')
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise write_error(self.journal, e) from None
        self.manifest.done.setdefault(key, set()).add(digest)
