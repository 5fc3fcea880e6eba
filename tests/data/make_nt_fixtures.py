"""Regenerate the float64 neural-tangents reference kernels in ``tests/data/nt/``.

Run from the project root with neural-tangents 0.6.5's own interpreter (not ntc's venv):

    TF_CPP_MIN_LOG_LEVEL=3 ~/.cache/ntc-bench/nt-venv/bin/python -W ignore \
        tests/data/make_nt_fixtures.py [NAME_PREFIX ...]

With prefixes only the matching cases are recomputed (``quirks.json`` / ``index.json`` are
updated in place); without, everything is rebuilt from scratch.

Seed scheme: every case draws from its own ``np.random.RandomState(zlib.crc32(name) % 2**31)``
(name encoded as UTF-8), in this order: ``x1 = randn(*x1_shape)``, ``x2 = randn(*x2_shape)``
(if the case has x2), then for ``Aggregate`` cases ``pattern1`` / ``pattern2`` (see
``_draw_pattern``), then for masked cases the masks of x1 and x2 (see ``_apply_mask``).  So a
case's inputs depend only on its name and shapes, never on which other cases exist.

Per case, with ``jax_enable_x64``:
  * ``nngp_12, ntk_12 = kernel_fn(x1, x2, ('nngp', 'ntk'), **kwargs)`` (x2 := x1 if absent);
  * ``nngp_11, ntk_11 = kernel_fn(x1, None, ('nngp', 'ntk'), **kwargs)``.
If the joint call raises, ``get='nngp'`` alone is tried.  Arrays that NT cannot produce
(raise, NaN or inf) are left out of the npz and explained in ``quirks.json``; a case with no
finite array at all gets no npz.
"""

import json
import os
import re
import signal
import sys
import time
import traceback
import zlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402

jax.config.update('jax_enable_x64', True)

import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, 'nt')
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import nt_zoo  # noqa: E402

CASE_TIMEOUT_S = 60


def seed_of(name):
    return zlib.crc32(name.encode('utf-8')) % 2**31


def _draw_pattern(rng, n, spec):
    """Dense (n, *V, *V) float64 adjacency: Bernoulli(0.5) 0/1 or uniform [0, 1) weights."""
    shape = (n,) + tuple(spec.vertex_shape) * 2
    if spec.kind == 'binary':
        return (rng.rand(*shape) < 0.5).astype(np.float64)
    return rng.rand(*shape)


def _apply_mask(rng, x, frac, const):
    """Overwrite whole positions (all channels, channel axis last) with ``const``.

    Positions are masked independently with probability ``frac``; the first position of
    every sample is always kept, so no sample is entirely masked.
    """
    m = rng.rand(*x.shape[:-1]) < frac
    m.reshape(x.shape[0], -1)[:, 0] = False
    x = x.copy()
    x[m] = const
    return x


def make_inputs(name, x1_shape, x2_shape, kwargs):
    rng = np.random.RandomState(seed_of(name))
    x1 = rng.randn(*x1_shape)
    x2 = rng.randn(*x2_shape) if x2_shape is not None else None
    extra = {}
    kw = dict(kwargs)
    if isinstance(kw.get('pattern'), nt_zoo.Pattern):
        spec = kw['pattern']
        extra['pattern1'] = _draw_pattern(rng, x1.shape[0], spec)
        if x2 is not None:
            extra['pattern2'] = _draw_pattern(rng, x2.shape[0], spec)
    if name in nt_zoo.MASKED:
        frac, c = nt_zoo.MASKED[name], kw['mask_constant']
        x1 = _apply_mask(rng, x1, frac, c)
        if x2 is not None:
            x2 = _apply_mask(rng, x2, frac, c)
    return x1, x2, extra


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f'took longer than {CASE_TIMEOUT_S}s')


def _finite(a):
    return np.all(np.isfinite(a))


def _describe_bad(a):
    a = np.asarray(a)
    n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    where = ''
    if a.ndim >= 2 and a.shape[0] == a.shape[1]:
        bad = ~np.isfinite(a)
        diag_bad = all(bad[i, i].any() for i in range(a.shape[0]))
        offd = bad.copy()
        for i in range(a.shape[0]):
            offd[i, i] = False
        where = (' (only on the batch diagonal)' if diag_bad and not offd.any() else '')
    return f'{n_nan} NaN / {n_inf} inf of {a.size}{where}'


def _err(e):
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else ''
    msg = re.sub(r' at 0x[0-9a-fA-F]+', '', msg)
    return f'{type(e).__name__}: {msg[:300]}'


def compute(kernel_fn, a, b, kw):
    """Returns ({'nngp': arr, 'ntk': arr}, {key: problem}) for one kernel_fn call."""
    out, problems = {}, {}
    try:
        k = kernel_fn(a, b, ('nngp', 'ntk'), **kw)
        out = {'nngp': np.asarray(k.nngp), 'ntk': np.asarray(k.ntk)}
    except _Timeout:
        raise
    except Exception as e:  # noqa: BLE001
        problems['ntk'] = 'raised ' + _err(e)
        try:
            out = {'nngp': np.asarray(kernel_fn(a, b, 'nngp', **kw))}
        except _Timeout:
            raise
        except Exception as e2:  # noqa: BLE001
            problems['nngp'] = 'raised ' + _err(e2)
            problems['ntk'] = problems['nngp']
    for key in list(out):
        if not _finite(out[key]):
            problems[key] = 'returned ' + _describe_bad(out[key])
            del out[key]
    return out, problems


def run_case(name, entry):
    builder, x1_shape, x2_shape, kwargs = entry
    x1, x2, extra = make_inputs(name, x1_shape, x2_shape, kwargs)
    kw12 = {k: v for k, v in kwargs.items() if k != 'pattern'}
    kw11 = dict(kw12)
    if 'pattern1' in extra:
        p1 = extra['pattern1']
        kw12['pattern'] = (p1, extra.get('pattern2', p1))
        kw11['pattern'] = (p1, p1)
    data = {'x1': x1, **extra}
    if x2 is not None:
        data['x2'] = x2
    quirks = {}
    meta = {'seed': seed_of(name), 'x1': list(x1.shape),
            'x2': list(x2.shape) if x2 is not None else None,
            'kwargs': sorted(kwargs)}
    try:
        _, _, kernel_fn = builder(stax)
    except Exception as e:  # noqa: BLE001
        return data, {'build': 'layer constructor raised ' + _err(e)}, meta, False
    for suffix, b, kw in [('12', x2 if x2 is not None else x1, kw12), ('11', None, kw11)]:
        out, probs = compute(kernel_fn, x1, b, kw)
        for key, arr in out.items():
            data[f'{key}_{suffix}'] = arr
        for key, p in probs.items():
            quirks[f'{key}_{suffix}'] = p
    try:
        k = kernel_fn(x1, x2 if x2 is not None else x1, **kw12)
        meta['is_reversed'] = bool(k.is_reversed)
        meta['nt_kernel_batch_axis'] = int(k.batch_axis)
        meta['nt_kernel_channel_axis'] = int(k.channel_axis)
        meta['nt_cov1_shape'] = list(np.shape(k.cov1))
        k11 = kernel_fn(x1, None, **kw11)
        meta['nt_cov1_shape_x2none'] = list(np.shape(k11.cov1))
        meta['nt_cov2_x2none'] = None if k11.cov2 is None else list(np.shape(k11.cov2))
    except _Timeout:
        raise
    except Exception:  # noqa: BLE001
        pass
    has = any(k.startswith(('nngp_', 'ntk_')) for k in data)
    return data, quirks, meta, has


# Extra explanations appended to the automatic quirk summaries (matched by name prefix).
NOTES = {
    'act_rectified_monomial_': (
        'NT computes the per-input variances after RectifiedMonomial as NaN (its correlation '
        'at x with itself rounds to slightly above 1), so any later nonlinearity or the '
        'x1-with-itself diagonal is NaN; see the *_1hidden cases for the finite 12 kernels.'),
    'img_faninconcat_channel': (
        'NT marks a channel-axis FanInConcat output as non-Gaussian, so a nonlinearity right '
        'after it raises even though both branches end in a Conv (the same net with a Conv '
        'after the concat, img_faninconcat_channel_conv, works).'),
    'img_faninconcat_axis1_spatial_out': (
        'Concatenating along a spatial axis needs every branch to be Gaussian (an Identity '
        'branch after a Relu is not).'),
    'img_layernorm_hw_spatial_out': 'LayerNorm axes must include the channel axis.',
    'attn_': 'linear_scaling=False has a kernel only for attention_mechanism="IDENTITY".',
    'dotgeneral_lhs_matrix_then_dense': (
        'With a constant lhs the batch axis of the output moves to position 1; Dense (and '
        'other layers) then refuse the kernel. Flatten(batch_axis=1) works '
        '(dotgeneral_lhs_matrix).'),
    'fc_repeat_shape_change': 'stax.repeat needs a shape-preserving layer.',
    'index_channel': 'Only trivial (":" / "...") indexing of the channel axis is supported.',
}


def _summarise(quirks, name=''):
    """One human-readable line from a {key: problem} dict."""
    if 'build' in quirks:
        return quirks['build']
    by_problem = {}
    for key, p in quirks.items():
        by_problem.setdefault(p, []).append(key)
    parts = []
    for p, keys in by_problem.items():
        if len(keys) == 4:
            parts.append(f'all kernels: {p}')
        else:
            parts.append(f"{', '.join(sorted(keys))}: {p}")
    note = next((v for k, v in NOTES.items() if name.startswith(k)), None)
    return '; '.join(parts) + (f' -- {note}' if note else '')


def _render_default(v):
    r = repr(v)
    return re.sub(r' at 0x[0-9a-fA-F]+', '', r)   # lambdas: drop the memory address


def write_signatures(path):
    """Parameter lists of every public function of nt.stax, nt (top level) and nt.predict."""
    import inspect

    import neural_tangents as nt

    kinds = {inspect.Parameter.POSITIONAL_ONLY: 'POSITIONAL_ONLY',
             inspect.Parameter.POSITIONAL_OR_KEYWORD: 'POSITIONAL_OR_KEYWORD',
             inspect.Parameter.VAR_POSITIONAL: 'VAR_POSITIONAL',
             inspect.Parameter.KEYWORD_ONLY: 'KEYWORD_ONLY',
             inspect.Parameter.VAR_KEYWORD: 'VAR_KEYWORD'}
    out = {'_about': (
        'inspect.signature of every public function (classes and enums skipped) of '
        f'neural_tangents {nt.__version__}: per parameter its name, kind, default (repr, '
        'lambda addresses dropped; null when the parameter has no default) and annotation.'),
        '_skipped': {}}
    for modname, mod in [('neural_tangents', nt), ('neural_tangents.stax', nt.stax),
                         ('neural_tangents.predict', nt.predict)]:
        funcs, skipped = {}, []
        for name in sorted(dir(mod)):
            if name.startswith('_'):
                continue
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or inspect.isclass(obj) or not callable(obj):
                skipped.append(f'{name} ({type(obj).__name__})')
                continue
            sig = inspect.signature(obj)
            params = []
            for p in sig.parameters.values():
                params.append({
                    'name': p.name, 'kind': kinds[p.kind],
                    'default': (None if p.default is inspect.Parameter.empty
                                else _render_default(p.default)),
                    'annotation': (None if p.annotation is inspect.Parameter.empty
                                   else re.sub(r'neural_tangents\._src\.[\w.]*\.', '',
                                               inspect.formatannotation(p.annotation)))})
            funcs[name] = {'params': params, 'defined_in': getattr(obj, '__module__', None)}
        out[modname] = funcs
        out['_skipped'][modname] = skipped
    out['_notes'] = {
        'neural_tangents.stax.Slice': (
            'Not a function: a helper object whose __getitem__ returns its key unchanged, '
            'so stax.Slice[1:10, :, ::-1] == (slice(1, 10, None), slice(None), '
            'slice(None, None, -1)) and stax.Slice[::2] == slice(None, None, 2); used as '
            'stax.Index(idx=stax.Slice[...]). It is not callable.'),
        'neural_tangents.stax.Sigmoid_like': (
            'Takes no arguments. Its kernels equal those of Erf(a=0.5, b=0.416309966533247, '
            'c=0.5) to float64 round-off (measured; see nt/README.md).'),
        'layers': (
            'Every stax layer returns (init_fn, apply_fn, kernel_fn). kernel_fn(x1, x2=None, '
            'get=None, **kwargs): get=None -> Kernel object; get=str -> one array; '
            'get=tuple -> namedtuple with the requested fields in the requested order.'),
    }
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)
        f.write('\n')


def main(prefixes):
    os.makedirs(OUT, exist_ok=True)
    names = [n for n in nt_zoo.ZOO if not prefixes or n.startswith(tuple(prefixes))]
    qpath, ipath = os.path.join(OUT, 'quirks.json'), os.path.join(OUT, 'index.json')
    quirks_all, index = {}, {}
    if prefixes:
        for path, d in [(qpath, quirks_all), (ipath, index)]:
            if os.path.exists(path):
                with open(path) as f:
                    d.update(json.load(f))
        for n in names:
            quirks_all.pop(n, None)
            index.pop(n, None)
    else:
        for f in os.listdir(OUT):
            if f.endswith('.npz'):
                os.remove(os.path.join(OUT, f))
    signal.signal(signal.SIGALRM, _alarm)
    t_all = time.time()
    for name in names:
        t0 = time.time()
        path = os.path.join(OUT, name + '.npz')
        signal.alarm(CASE_TIMEOUT_S)
        try:
            data, quirks, meta, has = run_case(name, nt_zoo.ZOO[name])
        except _Timeout as e:
            data, quirks, meta, has = {}, {'build': 'timeout: ' + str(e)}, {}, False
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            data, quirks, meta, has = {}, {'build': 'script error'}, {}, False
        finally:
            signal.alarm(0)
        if os.path.exists(path):
            os.remove(path)
        if has:
            np.savez_compressed(path, **data)
            meta['keys'] = sorted(data)
            meta['shapes'] = {k: list(v.shape) for k, v in sorted(data.items())}
            index[name] = meta
        if quirks:
            quirks_all[name] = _summarise(quirks, name)
        status = 'ok' if not quirks else ('partial' if has else 'FAILED')
        print(f'{name:45s} {status:8s} {time.time() - t0:6.2f}s  '
              f'{quirks_all.get(name, "")[:150]}', flush=True)
    with open(qpath, 'w') as f:
        json.dump(dict(sorted(quirks_all.items())), f, indent=1)
        f.write('\n')
    with open(ipath, 'w') as f:
        json.dump(dict(sorted(index.items())), f, indent=1)
        f.write('\n')
    # verify what was written
    total = 0
    for name in index:
        path = os.path.join(OUT, name + '.npz')
        total += os.path.getsize(path)
        with np.load(path) as z:
            for k in z.files:
                assert np.all(np.isfinite(z[k])), (name, k)
    if not prefixes:
        write_signatures(os.path.join(HERE, 'nt_signatures.json'))
    print(f'{len(index)} npz files, {total / 1e6:.2f} MB, {len(quirks_all)} quirks, '
          f'{time.time() - t_all:.0f}s')


if __name__ == '__main__':
    main(sys.argv[1:])
