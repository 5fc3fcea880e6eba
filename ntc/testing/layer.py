"""`check_layer`: every property of the harness, for one new layer, in one call; and
`check_cases`, which runs the `CASES` table with the Monte-Carlo samples of many cases drawn in
one compiled program."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..layers.conv import _ConvBase
from ..layers.dense import Dense
from ..net import Net
from .cases import Case, harness_net
from .invariants import (
    check_batching,
    check_layouts,
    check_psd,
    check_spec_roundtrip,
    check_symmetry,
)
from .monte_carlo import DEFAULT_ALPHA, DEFAULT_WIDTH, check_many_against_monte_carlo
from .properties import Report, check_against_reference

PARAMETERIZATIONS = ('ntk', 'standard')


@dataclass
class LayerReport:
    """Named `Report`s of every check run on a layer; truthy when all passed."""

    reports: dict[str, Report] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports.values())

    def __bool__(self) -> bool:
        return self.ok

    @property
    def text(self) -> str:
        return '\n'.join(f'[{name}] {r.text}' for name, r in self.reports.items())

    def failures(self) -> dict[str, Report]:
        return {k: r for k, r in self.reports.items() if not r.ok}

    def assert_ok(self) -> None:
        if not self.ok:
            raise AssertionError('\n'.join(f'[{k}] {r.text}' for k, r in
                                           self.failures().items()))


def with_parameterization(net: Net, parameterization: str) -> Net:
    """The same net with every Dense / Conv layer in `parameterization` ('ntk'/'standard')."""
    if net.kind != 'layer':
        return replace(net, children=tuple(with_parameterization(c, parameterization)
                                           for c in net.children))
    if isinstance(net.op, (Dense, _ConvBase)):
        return Net('layer', net.op.model_copy(update=dict(parameterization=parameterization)))
    return net


def example_inputs(input_shape, n1: int = 3, n2: int = 2, seed: int = 0):
    """float64 inputs for `input_shape` (batch entry ignored), every example scaled to the same
    norm (sqrt of its size), as NT's tests do."""
    rng = np.random.RandomState(seed)
    feat = tuple(int(d) for d in input_shape[1:])

    def draw(n):
        x = rng.randn(n, *feat)
        norm = np.sqrt(np.sum(x.reshape(n, -1) ** 2, axis=1) / np.prod(feat))
        return x / norm.reshape((n,) + (1,) * len(feat))

    return draw(n1), draw(n2)


def _as_net(builder) -> Net:
    return builder if isinstance(builder, Net) else builder()


def invariant_reports(net: Net, x1, x2, x2_ok: bool = True) -> dict[str, Report]:
    """Reference lowering, symmetry, PSD, batching, layout and spec round-trip on `net`."""
    second = x2 if x2_ok else None
    out = {'reference': check_against_reference(net, x1, second)}
    if x2_ok:
        out['symmetry'] = check_symmetry(net, x1, x2)
    out['psd'] = check_psd(net, x1)
    out['batching'] = check_batching(net, x1, second)
    out['layouts'] = check_layouts(net, x1, second)
    out['spec'] = check_spec_roundtrip(net, x1)
    return out


def check_layer(builder: Net | Callable[[], Net], input_shape: Sequence[int] = (-1, 4), *,
                wrap: bool = True, finite: Net | None = None, x2: bool = True,
                mc: bool = True, get=('nngp', 'ntk'), width: int = DEFAULT_WIDTH,
                n_samples: int = 256,
                key: int = 0, alpha: float = DEFAULT_ALPHA,
                parameterizations: Sequence[str] = PARAMETERIZATIONS,
                invariants: bool = True) -> LayerReport:
    """Every check of `ntc.testing` for one layer: wrapped as affine -> layer -> readout (see
    `ntc.testing.cases.around`; `wrap=False` takes `builder` as the whole test net), it is
    compared with Monte-Carlo estimates of its finite network at `width` in each of
    `parameterizations`, with the reference lowering, and checked for symmetry, PSD, batching,
    layout invariance and spec round-trip.  Returns a `LayerReport` (`.assert_ok()`)."""
    case = Case(_as_net(builder), tuple(input_shape), wrap=wrap, finite=finite, x2=x2, mc=mc,
                get=tuple(get))
    return check_cases([case], width=width, n_samples=n_samples, key=key, alpha=alpha,
                       parameterizations=parameterizations, invariants=invariants)[0]


def check_cases(cases: Sequence[Case], *, width: int = DEFAULT_WIDTH, n_samples: int = 256,
                key: int = 0, alpha: float = DEFAULT_ALPHA,
                parameterizations: Sequence[str] = PARAMETERIZATIONS, invariants: bool = True,
                bundle: int = 2, max_width: int | None = None) -> list[LayerReport]:
    """`check_layer` for each case.  Cases with the same input shape are Monte-Carlo sampled
    `bundle` networks at a time (one compilation per bundle; the empirical NTK's Jacobian grows
    with the bundle, so 2, both parameterizations of a case, is the sweet spot); each bundle's
    threshold is family-wise over all its entries.  `max_width` caps every case's hidden width
    (a quick run: the threshold comes from the samples, so it stays calibrated, only less
    sensitive)."""
    reports = [LayerReport() for _ in cases]
    jobs = []   # (case index, parameterization, net, finite, x1, x2)
    for i, case in enumerate(cases):
        net = harness_net(case)
        x1, x2 = example_inputs(case.input_shape)
        if invariants:
            reports[i].reports.update(invariant_reports(net, x1, x2, case.x2))
        if not case.mc:
            continue
        for p in parameterizations:
            fin = None if case.finite is None else with_parameterization(case.finite, p)
            jobs.append((i, p, with_parameterization(net, p), fin, case))
    groups: dict = {}
    for job in jobs:
        case = job[4]
        w = min(case.width or width, max_width or width)
        groups.setdefault((case.input_shape, case.x2, case.get, w), []).append(job)
    for (shape, x2_ok, get, w), members in groups.items():
        x1, x2 = example_inputs(shape)
        for start in range(0, len(members), bundle):
            part = members[start:start + bundle]
            res = check_many_against_monte_carlo(
                [j[2] for j in part], x1, x2 if x2_ok else None, w, n_samples, key=key,
                alpha=alpha, finites=[j[3] for j in part], get=get)
            for (i, p, *_), r in zip(part, res):
                reports[i].reports[f'monte_carlo[{p}]'] = r
    return reports


__all__ = ['check_layer', 'check_cases', 'LayerReport', 'with_parameterization',
           'example_inputs', 'invariant_reports', 'PARAMETERIZATIONS']
