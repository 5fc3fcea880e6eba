"""The `ntc` command line: plan, kernel, predict, demo, bench, schema.

Every argument error prints one line (no traceback) and exits with status 2; an `NtcError`,
an `OSError` or a `MemoryError` prints one line and exits with status 1.  Input files are
checked before anything is computed (numeric .npy arrays only, never unpickled; finite; the
spec's input_shape), and so are the output paths.  Kernels and predictions are written under
temporary names, checked finite, and only then renamed to `--out`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from . import bench, demo, spec
from .api import compile as compile_plan
from .errors import InputError, NtcError, NumericalError
from .frontends import recognise_flax
from .net import Net
from .runtime import distributed, predict
from .runtime.batching import batch, output_path
from .runtime.distributed import distributed_batch
from .spec import json_schema


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage plus traceback
        self.exit(2, f'{self.prog}: error: {message}\n')


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') \
            from None
    sizes = shape[1:] if shape[:1] == (-1,) else shape
    if not sizes or any(d <= 0 for d in sizes):
        raise argparse.ArgumentTypeError(f'expected positive sizes (a leading -1 for the batch '
                                         f'is allowed), got {text!r}')
    return shape


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(',') if v.strip())


def load_net(source: str):
    """(net, document) from a spec file (.yaml/.yml/.json), a Python file, or a module name
    that defines `net`."""
    path = Path(source)
    if path.suffix in ('.yaml', '.yml', '.json'):
        doc = spec.load_document(path)
        return doc['net'], doc
    if path.suffix == '.py':
        if not path.is_file():
            raise NtcError(f'{path} does not exist' if not path.exists() else
                           f'{path} is not a regular file')
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        _run_user_code(lambda: mod_spec.loader.exec_module(module), str(path))
    else:
        if not all(part.isidentifier() for part in source.split('.')):
            raise NtcError(f'{source!r} is not a spec file (.yaml/.yml/.json), a .py file or a '
                           'module name', hint='pass the path of a spec file or a module name')
        if _run_user_code(lambda: _find_module(source), source) is None:
            raise NtcError(f'cannot import {source!r}: no module named {source!r}',
                           hint='pass a spec file (.yaml/.json), a .py file or a module')
        module = _run_user_code(lambda: importlib.import_module(source), source)
    net = getattr(module, 'net', None)
    if not isinstance(net, Net):
        raise NtcError(f'{source} defines no `net` built with ntc.stax')
    shape = getattr(module, 'input_shape', None)
    if shape is not None:
        if not (isinstance(shape, (list, tuple)) and shape and all(
                d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape)):
            raise NtcError(f'{source}: input_shape must be a list of integers such as '
                           f'[-1, 32, 32, 3], got {repr(shape)[:60]}')
        shape = [-1 if d is None else d for d in shape]
    return net, {'net': net, 'input_shape': shape}


def load_flax(source: str, input_shape):
    """(net, document) of the flax.linen module `Model` (a class built without arguments, or
    an instance) in FILE.py for `FILE.py:Model`, traced on zeros of the input shape (from
    --input-shape or the file's `input_shape`); prints what was recognised."""
    path, _, name = source.rpartition(':')
    path = Path(path)
    if not name.isidentifier() or path.suffix != '.py':
        raise InputError(f'--flax {source!r}: expected FILE.py:Model')
    if not path.is_file():
        raise NtcError(f'{path} does not exist')
    mod_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    _run_user_code(lambda: mod_spec.loader.exec_module(module), str(path))
    model = getattr(module, name, None)
    if model is None:
        raise NtcError(f'{path} defines no {name}')
    if isinstance(model, type):
        model = _run_user_code(model, str(path))
    shape = input_shape or getattr(module, 'input_shape', None)
    if shape is None:
        raise NtcError('no input shape', hint='pass --input-shape, e.g. 32,32,3')
    shape = [d for d in shape if d not in (-1, None)]
    import numpy as np
    found = recognise_flax(model, np.zeros((2, *shape), np.float32))
    print(f'# {source}: recognised as\n# {found.net.code()}')
    for note in found.notes:
        print(f'# {note}')
    return found.net, {'net': found.net, 'input_shape': [-1, *shape]}


def _find_module(name: str):
    """The module's import spec, or None when there is no such module."""
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


def _run_user_code(run, where: str):
    """run(), turning an exception raised by the user's Python file or module into one line
    that names the file and the line (an NtcError passes through)."""
    import traceback
    try:
        return run()
    except NtcError:
        raise
    except SyntaxError as e:
        raise NtcError(f'{e.filename or where}, line {e.lineno}: SyntaxError: {e.msg}') from None
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if not f.filename.startswith('<frozen')]
        line = f', line {frames[-1].lineno}' if frames else ''
        file = frames[-1].filename if frames else where
        raise NtcError(f'{where} failed to run: {type(e).__name__}: {e} ({file}{line})',
                       hint='fix the Python file that defines `net`') from None


def _load_array(path: str, what: str):
    """The array in the .npy file `path`, memory-mapped; refuses, with one line naming the file,
    what is not a numeric .npy array: a missing file or a directory, a text file, a truncated
    file, a damaged header, and object arrays (never unpickled)."""
    import numpy as np
    fmt = np.lib.format
    p = Path(path)
    if not p.exists():
        raise InputError(f'{what} file {p} does not exist')
    if not p.is_file():
        raise InputError(f'{what} {p} is not a regular file', hint='pass a .npy file')
    try:
        with open(p, 'rb') as f:
            try:
                version = fmt.read_magic(f)
            except ValueError:
                raise InputError(f'{what} file {p} is not a .npy file (no NumPy header)',
                                 hint='write arrays with numpy.save') from None
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in readers:
                raise InputError(f'{what} file {p} has .npy format version {version}, which '
                                 'holds structured data', hint='save a plain numeric array')
            try:
                shape, _, dtype = readers[version](f)
            except ValueError as e:
                raise InputError(f'{what} file {p} has a damaged .npy header '
                                 f'({" ".join(str(e).split())[:80]})',
                                 hint='write it again with numpy.save') from None
            data_start = f.tell()
        if dtype.hasobject:
            raise InputError(f'{what} file {p} holds Python objects (a pickled array), which '
                             'ntc never loads', hint='save a numeric array, e.g. '
                             'numpy.save(path, x.astype(np.float64))')
        if 0 in shape or not shape:
            raise InputError(f'{what} file {p} holds an array of shape {shape}, which has no '
                             'inputs or no features', hint='pass an array of shape (N, ...) '
                             'with N ≥ 1 and features')
        if dtype.kind not in 'biuf':
            raise InputError(f'{what} file {p} holds {dtype} values', hint='ntc takes real '
                             'numbers: save a bool, integer or float array')
        expected = data_start + math.prod(shape) * dtype.itemsize
        size = p.stat().st_size
        if size < expected:
            raise InputError(f'{what} file {p} is truncated: its header announces shape '
                             f'{shape} ({expected} bytes in all) but the file has {size} bytes',
                             hint='write it again with numpy.save')
        arr = np.load(p, mmap_mode='r', allow_pickle=False)
        if dtype.kind == 'f':
            bad = _first_non_finite(arr)
            if bad is not None:
                raise InputError(f'{what} file {p} has a non-finite value ({arr[bad]}) at '
                                 f'{list(bad)}', hint='remove or impute NaN and infinite '
                                 'entries')
        return arr
    except OSError as e:
        raise InputError(f'cannot read {what} file {p}: {e.strerror or e}') from None


def _check_writable(path: Path, what: str) -> None:
    """Refuse, before anything is computed, an output file that cannot be written: a directory,
    a path under a missing directory or under a file, a read-only or virtual file system
    (/proc, /sys), an existing file that is not a regular, writable file."""
    if path.is_dir():
        raise InputError(f'{what} {path} is a directory', hint=f'name a file, e.g. '
                         f'{path / "kernel.npy"}')
    parent = path.absolute().parent
    if not parent.exists():
        raise InputError(f'cannot write {path}: the directory {parent} does not exist',
                         hint='create it first')
    if not parent.is_dir():
        raise InputError(f'cannot write {path}: {parent} is not a directory',
                         hint='choose a path in a directory')
    try:
        if path.exists():
            if not path.is_file():
                raise InputError(f'{what} {path} is not a regular file',
                                 hint='choose a path for a new file')
            with open(path, 'r+b'):
                pass
    except OSError as e:
        raise InputError(f'cannot write {what} {path}: {e.strerror or e}',
                         hint='choose a path on a writable file system') from None
    try:
        with tempfile.TemporaryFile(dir=parent, prefix='.ntc-probe-') as probe:
            probe.write(b'0')
            probe.flush()
    except OSError as e:
        raise InputError(f'cannot write {what} {path}: cannot create a file in {parent} '
                         f'({e.strerror or e})',
                         hint='choose a path on a writable file system') from None


def _check_store(store: Path) -> None:
    """The tile store directory must be a directory, or creatable."""
    if store.exists():
        if not store.is_dir():
            raise InputError(f'the tile store {store} is not a directory',
                             hint='pass --store DIR, a directory for the tiles')
        return
    _check_writable(store, 'tile store')


def _output_paths(out: Path, names) -> dict[str, Path]:
    """The file each kernel is written to, named as `ntc.batch` names them."""
    return {n: Path(output_path(out, n, names)) for n in names if n in ('nngp', 'ntk')}


def _first_non_finite(arr):
    """The index of the first non-finite entry of `arr` (an array, or the path of a .npy file,
    memory-mapped), or None; reads it in blocks of rows."""
    import numpy as np
    if isinstance(arr, Path):
        arr = np.load(arr, mmap_mode='r')
    rows = max(1, (64 * 2 ** 20) // max(1, arr[:1].nbytes))
    for r0 in range(0, len(arr), rows):
        bad = ~np.isfinite(arr[r0:r0 + rows])
        if bad.any():
            idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
            return (r0 + int(idx[0]),) + tuple(int(i) for i in idx[1:])
    return None


class _Outputs:
    """Kernel files computed under hidden names next to OUT (`.OUT`, which `ntc.batch` itself
    assembles as `.OUT.partial`), checked for non-finite values, then renamed into place: a
    failed or interrupted run leaves no file that looks complete."""

    def __init__(self, out: Path, names):
        self.final = _output_paths(out, names)
        self.tmp_out = out.with_name(f'.{out.name}')
        self.tmp = _output_paths(self.tmp_out, names)

    def discard(self) -> None:
        for p in self.tmp.values():
            p.unlink(missing_ok=True)

    def commit(self) -> None:
        for name, p in self.tmp.items():
            if not p.exists():
                raise NtcError(f'no {name} kernel was computed; nothing was written to '
                               f'{self.final[name]}')
            where = _first_non_finite(p)
            if where is not None:
                raise NumericalError(f'the {name} kernel has a non-finite value at '
                                     f'{list(where)}; nothing was written to '
                                     f'{self.final[name]}', hint='check the inputs and the '
                                     'layer parameters')
        for name, p in self.tmp.items():
            os.replace(p, self.final[name])


# ----------------------------------------------------------------------------- commands


def cmd_plan(args) -> int:
    if (args.spec is None) == (args.flax is None):
        raise InputError('pass either a SPEC or --flax FILE.py:Model')
    if args.flax:
        net, doc = load_flax(args.flax, args.input_shape)
    else:
        net, doc = load_net(args.spec)
    shape = args.input_shape or doc.get('input_shape')
    if shape is None:
        raise NtcError('no input shape', hint='pass --input-shape, e.g. 32,32,3')
    shape = tuple(shape) if len(shape) and shape[0] == -1 else (-1, *shape)
    plan = compile_plan(net, shape, args.get)
    if args.format == 'json':
        print(json.dumps(plan_json(plan), indent=1))
    elif args.format == 'dot':
        print(plan_dot(plan))
    else:
        print(plan.explain(args.n, args.n) if args.n else plan.explain())
    return 0


def plan_json(plan) -> dict:
    nodes = []
    for n in plan.graph.nodes():
        c = plan.costs[n.id]
        nodes.append(dict(id=n.id, op=n.op.kind, label=n.op.label(), path=n.path,
                          inputs=plan.graph.inputs(n.id), shape=n.ttype.describe(),
                          layout=n.cov.model_dump(mode='json'), materialize=n.materialize,
                          flops=str(c.flops), bytes=str(c.bytes)))
    return dict(get=list(plan.opts.get), input=plan.input_type.describe(), nodes=nodes,
                transposes=plan.transposes, fingerprint=plan.fingerprint())


def plan_dot(plan) -> str:
    lines = ['digraph plan {', '  rankdir=TB; node [shape=box, fontname="monospace"];']
    for n in plan.graph.nodes():
        label = f'{n.op.label()}\\n{n.ttype.describe()} {n.cov.describe()}'.replace('"', "'")
        style = ', style=filled, fillcolor="#ffe0b0"' if n.op.kind == 'Transpose' else ''
        lines.append(f'  n{n.id} [label="{label}"{style}];')
        for i in plan.graph.inputs(n.id):
            lines.append(f'  n{i} -> n{n.id};')
    lines.append('}')
    return '\n'.join(lines)


def cmd_kernel(args) -> int:

    # join the job (flags, JAX_* variables or a SLURM step) before JAX initialises its backend
    info = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                  connect_timeout=args.connect_timeout,
                                  heartbeat_timeout=args.heartbeat_timeout)
    try:
        return _kernel(args, info)
    except Exception as e:
        distributed.report_failure(f'{type(e).__name__}: {e}')  # the others stop waiting
        raise


def _kernel(args, info) -> int:
    import numpy as np

    multi = info.num_processes > 1
    net, doc = load_net(args.spec)
    x1 = np.asarray(_load_array(args.x1, '--x1'))
    x2 = None if args.x2 is None else np.asarray(_load_array(args.x2, '--x2'))
    _check_input_shape(x1, doc, '--x1')
    if x2 is not None:
        _check_input_shape(x2, doc, '--x2')
    out = Path(args.out)
    outputs = _Outputs(out, args.get)
    for path in outputs.final.values():
        _check_writable(path, '--out')
    store = args.store or f'{out}.tiles'
    _check_store(Path(store))
    get = args.get if len(args.get) > 1 else args.get[0]
    try:
        if multi:
            done = _kernel_multi(net, x1, x2, get, outputs, store, args, info)
        else:
            fn = batch(net.kernel_fn, args.tile, store_on_device=False, progress=args.progress,
                       store=store, resume=args.resume)
            fn(x1, x2, get, out=outputs.tmp_out)
            outputs.commit()
            s = fn.stats
            print(f'wrote {_written(outputs)} ({", ".join(args.get)}): {s.tiles_computed} '
                  f'tiles computed, {s.tiles_resumed} resumed, {s.tiles_skipped_symmetric} '
                  f'skipped by symmetry, tile {s.tile}', file=sys.stderr)
            done = 0
    except BaseException:
        if info.process_id == 0:
            outputs.discard()
        raise
    return done


def _written(outputs) -> str:
    return ' and '.join(str(p) for p in outputs.final.values())


def _kernel_multi(net, x1, x2, get, outputs, store, args, info) -> int:
    fn = distributed_batch(net.kernel_fn, args.tile, store=store, resume=args.resume,
                           progress=args.progress)
    fn(x1, x2, get, out=outputs.tmp_out)
    if info.process_id == 0:
        outputs.commit()
    s = fn.stats
    print(f'process {s.process_id} of {s.num_processes}: {s.tiles_computed} tiles computed '
          f'(share {s.share_sizes[s.process_id]} of shares {s.share_sizes}), '
          f'{s.tiles_resumed} resumed, tile {s.tile}, {s.seconds_compute:.2f} s computing, '
          f'{s.seconds_wait:.2f} s waiting', file=sys.stderr)
    if info.process_id == 0:
        print(f'wrote {_written(outputs)} ({", ".join(args.get)}): {sum(s.share_sizes)} tiles '
              f'computed by {s.num_processes} processes, {s.tiles_resumed} resumed',
              file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    """Predictions of the infinite ensemble (NNGP posterior, or NTK gradient descent at time
    `--t`, infinity by default) from kernels computed in tiles (ntc.batch)."""
    import numpy as np

    if args.x64:
        import jax
        jax.config.update('jax_enable_x64', True)
    net, doc = load_net(args.spec)
    x_train = np.asarray(_load_array(args.train[0], '--train X'))
    y_train = np.asarray(_load_array(args.train[1], '--train Y'))
    x_test = np.asarray(_load_array(args.test, '--test'))
    _check_input_shape(x_train, doc, '--train X')
    _check_input_shape(x_test, doc, '--test')
    if y_train.ndim == 1:
        y_train = y_train[:, None]
    if y_train.ndim != 2:
        raise InputError(f'--train Y has shape {y_train.shape}', hint='pass targets of shape '
                         '(N,) or (N, outputs)')
    if len(y_train) != len(x_train):
        raise InputError(f'--train: X has {len(x_train)} rows but Y has {len(y_train)}',
                         hint='pass one target row per training input')
    if x_test.shape[1:] != x_train.shape[1:]:
        raise InputError(f'--test has feature shape {x_test.shape[1:]} but --train X has '
                         f'{x_train.shape[1:]}', hint='test and train inputs must match')
    out = Path(args.out)
    cov_path = None
    if args.cov:
        cov_path = out.with_name(out.name[:-4] if out.name.endswith('.npy') else out.name)
        cov_path = cov_path.with_name(cov_path.name + '.cov.npy')
    targets = {'mean': out, 'covariance': cov_path} if args.cov else {'mean': out}
    for path in targets.values():
        _check_writable(path, '--out')
    kernel_fn = batch(net.kernel_fn, args.tile, store_on_device=False, progress=args.progress)
    predict_fn = predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, learning_rate=args.learning_rate, diag_reg=args.diag_reg)
    res = predict_fn(t=args.t, x_test=x_test, get=args.get, compute_cov=args.cov)
    values = {'mean': np.asarray(res.mean if args.cov else res)}
    if args.cov:
        values['covariance'] = np.asarray(res.covariance)
    for what, v in values.items():
        bad = np.argwhere(~np.isfinite(v))
        if len(bad):
            raise NumericalError(f'the predicted {what} has a non-finite value at '
                                 f'{bad[0].tolist()}; nothing was written to {targets[what]}',
                                 hint='check the inputs, the targets and --diag-reg; try --x64')
    _save_all({targets[w]: v for w, v in values.items()})
    mean = values['mean']
    when = 'infinite time' if args.t is None else f't = {args.t:g}'
    what = 'NNGP' if args.get == 'nngp' else 'NTK'
    print(f'wrote {" and ".join(map(str, targets.values()))}: {what} ensemble predictions at '
          f'{when} for {len(x_test)} test inputs, shape {mean.shape}', file=sys.stderr)
    return 0


def _save_all(arrays: dict) -> None:
    """np.save each array under a temporary name, then rename them all into place: a failed
    write leaves no file that looks complete."""
    import numpy as np
    tmps = {path: path.with_name(f'.{path.name}.partial') for path in arrays}
    try:
        for path, value in arrays.items():
            with open(tmps[path], 'wb') as f:
                np.save(f, value, allow_pickle=False)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except OSError as e:
        raise InputError(f'cannot write {e.filename or "the output"}: {e.strerror or e}',
                         hint='check the free space and the permissions of the directory') from None
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _check_input_shape(x, doc, what: str) -> None:
    """Refuse inputs whose shape differs from the spec's declared input_shape (-1 or null
    entries match any size)."""
    shape = doc.get('input_shape')
    if not shape:
        return
    shape = tuple(shape) if shape[0] == -1 else (-1, *shape)
    ok = x.ndim == len(shape) and all(
        d is None or d < 0 or d == n for d, n in zip(shape[1:], x.shape[1:]))
    if not ok:
        declared = '(N, ' + ', '.join(str(d) for d in shape[1:]) + ')'
        raise InputError(f'{what} has shape {x.shape} but the spec declares inputs of shape '
                         f'{declared}', hint='reshape the inputs or fix input_shape in the spec')


def cmd_demo(args) -> int:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f'cannot create the output folder --out {out}: {e.strerror or e}',
                         hint='choose a writable folder') from None
    demo.run(args.quick, out)
    return 0


def bench_main(argv) -> int:
    """`ntc bench ...`: the benchmark driver in ntc.bench."""
    return bench.main(list(argv)) or 0


def cmd_schema(args) -> int:
    print(json.dumps(json_schema(), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog='ntc', description='The neural tangents compiler: infinite-width NNGP and '
                'NTK kernels as compiled, inspectable JAX programs.')
    sub = p.add_subparsers(dest='command', required=True, parser_class=_Parser)

    q = sub.add_parser('plan', help='print the compiled plan (EXPLAIN table, JSON or Graphviz)')
    q.add_argument('spec', nargs='?', help='spec file (.yaml/.json), Python file or module '
                   'defining `net`')
    q.add_argument('--flax', metavar='FILE.py:Model', help='trace a flax.linen module instead '
                   '(ntc.from_flax) and print what was recognised')
    q.add_argument('--input-shape', type=_shape, help='input shape without the batch, e.g. '
                   '32,32,3 (default: the spec\'s input_shape)')
    q.add_argument('--get', type=_names, default=('nngp', 'ntk'), help='kernels, e.g. nngp,ntk')
    q.add_argument('--format', choices=('table', 'json', 'dot'), default='table')
    q.add_argument('--n', type=int, help='evaluate costs at N1 = N2 = n')
    q.set_defaults(fn=cmd_plan)

    k = sub.add_parser('kernel', help='compute a kernel in tiles, resumably, into a .npy file')
    k.add_argument('spec', help='spec file (.yaml/.json), Python file or module defining `net`')
    k.add_argument('--x1', required=True, help='inputs x1 (.npy)')
    k.add_argument('--x2', help='inputs x2 (.npy); default: x1 (symmetric)')
    k.add_argument('--out', required=True, help='output .npy (one file per kernel when several)')
    k.add_argument('--get', type=_names, default=('nngp',), help='kernels, e.g. nngp,ntk')
    k.add_argument('--tile', type=int, help='tile size (default: from the plan\'s memory model)')
    k.add_argument('--resume', action='store_true', help='continue a job from its tile store')
    k.add_argument('--store', help='tile store directory (default: OUT.tiles)')
    k.add_argument('--coordinator', metavar='HOST:PORT', help='join a multi-process job: '
                   'address of process 0 (default: $JAX_COORDINATOR_ADDRESS)')
    k.add_argument('--num-processes', type=int, metavar='N',
                   help='processes in the job (default: $JAX_NUM_PROCESSES)')
    k.add_argument('--process-id', type=int, metavar='I',
                   help='this process, 0..N-1 (default: $JAX_PROCESS_ID)')
    k.add_argument('--connect-timeout', type=float, default=60., metavar='S',
                   help='seconds to wait for the coordinator to answer (default 60)')
    k.add_argument('--heartbeat-timeout', type=int, default=100, metavar='S',
                   help='seconds after which a silent process counts as dead (default 100)')
    k.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='show a progress bar (default: when on a terminal)')
    k.set_defaults(fn=cmd_kernel)

    r = sub.add_parser('predict', help='predict test outputs with the infinite NNGP / NTK '
                       'ensemble and write them to a .npy file')
    r.add_argument('spec', help='spec file (.yaml/.json), Python file or module defining `net`')
    r.add_argument('--train', nargs=2, required=True, metavar=('X', 'Y'),
                   help='training inputs and targets (.npy)')
    r.add_argument('--test', required=True, metavar='X', help='test inputs (.npy)')
    r.add_argument('--get', choices=('nngp', 'ntk'), default='ntk',
                   help='nngp: Bayesian posterior (or readout-only training at --t); ntk: '
                   'gradient descent of the whole network (default)')
    r.add_argument('--t', type=float, help='training time in steps of --learning-rate '
                   '(default: infinite time)')
    r.add_argument('--learning-rate', type=float, default=1., help='default 1')
    r.add_argument('--diag-reg', type=float, default=0., help='diagonal regulariser, relative '
                   'to the mean of the train kernel\'s diagonal (default 0)')
    r.add_argument('--cov', action='store_true', help='also write the posterior covariance '
                   'over the test inputs to OUT.cov.npy')
    r.add_argument('--x64', action='store_true', help='compute kernels and solves in float64 '
                   '(inputs are used at their own precision otherwise)')
    r.add_argument('--out', required=True, help='output .npy for the predicted means')
    r.add_argument('--tile', type=int, help='kernel tile size (default: from the plan\'s '
                   'memory model)')
    r.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='show a progress bar (default: when on a terminal)')
    r.set_defaults(fn=cmd_predict)

    d = sub.add_parser('demo', help='the end-to-end demo on scikit-learn\'s digits (what `make '
                       'demo` runs)', description='Compile two conv nets from specs/, compute '
                       'their kernels on digits, compare with SGD and RBF baselines, reproduce '
                       'the NT paper\'s Figure 1; writes PNGs under --out.')
    d.add_argument('--quick', action='store_true', help='a reduced run, well under a minute')
    d.add_argument('--out', default='demo_out', help='output folder (default: demo_out)')
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser('bench', add_help=False, help='benchmarks against neural-tangents '
                       '(`ntc bench --help` for its options)')
    b.set_defaults(fn=None)

    s = sub.add_parser('schema', help='print the JSON Schema of spec files')
    s.set_defaults(fn=cmd_schema)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['bench']:   # everything after `bench` belongs to the benchmark driver
        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, positive in (('learning_rate', True), ('diag_reg', False),
                           ('connect_timeout', True), ('heartbeat_timeout', True)):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and (value > 0 if positive
                                                                else value >= 0)):
            flag = '--' + name.replace('_', '-')
            parser.error(f'{flag} must be a finite {"positive" if positive else "non-negative"}'
                         f' number, got {value}')
    if getattr(args, 'n', None) is not None and args.n <= 0:
        parser.error(f'--n must be a positive integer, got {args.n}')
    if getattr(args, 'tile', None) is not None and args.tile <= 0:
        parser.error(f'--tile must be a positive integer, got {args.tile}')
    if args.command == 'kernel':
        bad = [n for n in args.get if n not in ('nngp', 'ntk')] or ([] if args.get else [''])
        if bad:
            parser.error(f'--get: ntc kernel writes the nngp and ntk kernels, got {bad[0]!r}')
    try:
        return args.fn(args)
    except NtcError as e:
        print(f'ntc: error: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    except BrokenPipeError:   # `ntc plan ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:   # the world said no: a full disk, a vanished file, a permission
        where = f' ({e.filename})' if e.filename else ''
        print(f'ntc: error: {e.strerror or e}{where}', file=sys.stderr)
        return 1
    except MemoryError:
        print('ntc: error: out of memory (pass a smaller --tile)', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
