"""diagonal_spatial=True on NT's DiagonalTest networks and a few more, for
../shared/bench/side_by_side.sh (run with PYTHONPATH=. from the project root): the kernels, or
a `raises` marker where kernel_fn raises ValueError (the tool counts an exception as a failure).

Observed 2026-12-01: both raise on Id-GAP, conv11-GAP, dense-GAP, conv-valid-GAP and
conv-avgpool-flatten; equal kernels elsewhere, except GAP-* (global pooling of the input: NT
returns a kernel with the input's off-diagonal spatial covariances taken as zero, ntc raises)
and conv-avgpool (output with spatial axes: NT raises, ntc returns the diagonal asked for).
"""
import numpy as np


def main(nt, stax):
    rs = np.random.RandomState(0)
    x1 = rs.randn(2, 5, 6, 3)
    x2s = {'same': None, 'diff': rs.randn(3, 5, 6, 3)}
    ends = {'Flatten': stax.Flatten, 'GAP': stax.GlobalAvgPool, 'Id': stax.Identity}
    nets = {}
    for rin, fin in ends.items():
        for rout, fout in ends.items():
            fs = (2, 3) if rin == 'Id' else ()
            nets[f'{rin}-{rout}'] = stax.serial(fin(), stax.Conv(1, fs, padding='SAME'),
                                                stax.Relu(), stax.Conv(1, fs, padding='SAME'),
                                                stax.Erf(), fout())
    nets['conv11-GAP'] = stax.serial(stax.Conv(2, (1, 1)), stax.Relu(), stax.GlobalAvgPool())
    nets['dense-GAP'] = stax.serial(stax.Dense(2), stax.Relu(), stax.GlobalAvgPool(),
                                    stax.Dense(1))
    nets['conv-avgpool-flatten'] = stax.serial(stax.Conv(2, (2, 2)), stax.Relu(),
                                               stax.AvgPool((2, 2)), stax.Flatten())
    nets['conv-avgpool'] = stax.serial(stax.Conv(2, (2, 2)), stax.Relu(),
                                       stax.AvgPool((2, 2)))
    nets['conv-valid-GAP'] = stax.serial(stax.Conv(2, (2, 2)), stax.Erf(),
                                         stax.GlobalAvgPool(), stax.Dense(1))
    nets['GAP-dense'] = stax.serial(stax.GlobalAvgPool(), stax.Dense(2), stax.Relu())
    nets['flatten-dense'] = stax.serial(stax.Flatten(), stax.Dense(2), stax.Relu())
    nets['conv-flatten-dense'] = stax.serial(stax.Conv(2, (2, 2)), stax.Relu(),
                                             stax.Flatten(), stax.Dense(2))
    out = {}
    for name, (_, _, kernel_fn) in nets.items():
        for xn, x2 in x2s.items():
            try:
                k = kernel_fn(x1, x2, diagonal_spatial=True)
                out[f'{name}/{xn}'] = {'nngp': k.nngp, 'ntk': k.ntk}
            except ValueError:
                out[f'{name}/{xn}/raises'] = np.ones(1)
    return out
