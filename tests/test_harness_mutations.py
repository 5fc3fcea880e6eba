"""Mutation testing: deliberately broken kernel rules, monkeypatched in one at a time, must be
caught by the Monte-Carlo check of the harness (each mutant is a plausible real bug)."""

import math

import numpy as np
import pytest

from ntc.ir.registry import KERNEL_RULES
from ntc.layers import activations, conv
from ntc.testing import check_cases
from ntc.testing.cases import CASES, Case


def _conv_without_1_over_q(monkeypatch):
    """The conv covariance forgets to divide the window sum by the filter size q."""
    orig = conv.window_mean

    def broken(op, x, *args, **kwargs):
        return orig(op, x, *args, **kwargs) * math.prod(op.filter_shape)

    monkeypatch.setattr(conv, 'window_mean', broken)


def _relu_with_abs_derivative(monkeypatch):
    """ReLU's derivative kernel replaced by Abs' ((π - 2θ)/π instead of (π - θ)/2π)."""
    relu, abs_ = activations.ACTIVATIONS['Relu'], activations.ACTIVATIONS['Abs']

    def broken(xp, op, c12, q1, q2):
        return relu.kernel(xp, op, c12, q1, q2)[0], abs_.kernel(xp, op, c12, q1, q2)[1]

    monkeypatch.setitem(activations.ACTIVATIONS, 'Relu',
                        activations.ActivationRule(kernel=broken, phi=relu.phi))


def _dense_ntk_without_weight_term(monkeypatch):
    """Dense's NTK forgets the weight-gradient term: Θ' = c Θ + e instead of c Θ + d K + e."""
    from ntc.layers.dense import affine_map

    def broken(ctx, node, k):
        a, b, c, d, e = node.op.coefficients(ctx.in_type(node).channels)
        return affine_map(ctx, k, a, b, c, 0.0, e)

    monkeypatch.setitem(KERNEL_RULES, 'Dense', broken)


def _layer_norm_is_identity(monkeypatch):
    """LayerNorm forgets to normalise."""
    monkeypatch.setitem(KERNEL_RULES, 'LayerNorm', lambda ctx, node, k: k)


def _dropout_without_rescaling(monkeypatch):
    """Dropout forgets the 1/rate growth of the diagonal."""
    monkeypatch.setitem(KERNEL_RULES, 'Dropout', lambda ctx, node, k: k)


def _avg_pool_ignores_normalize_edges(monkeypatch):
    """AvgPool divides edge windows by the full window size even with normalize_edges."""
    orig = KERNEL_RULES['AvgPool']

    def broken(ctx, node, k):
        op = node.op.model_copy(update=dict(normalize_edges=False))
        return orig(ctx, node.model_copy(update=dict(op=op)), k)

    monkeypatch.setitem(KERNEL_RULES, 'AvgPool', broken)


def _same_padding_as_circular(monkeypatch):
    """Conv treats SAME padding as CIRCULAR (wraps instead of zero-padding)."""
    orig = KERNEL_RULES['Conv']

    def broken(ctx, node, k):
        if node.op.padding == 'SAME':
            node = node.model_copy(update=dict(op=node.op.model_copy(
                update=dict(padding='CIRCULAR'))))
        return orig(ctx, node, k)

    monkeypatch.setitem(KERNEL_RULES, 'Conv', broken)


def _prod_as_sum(monkeypatch):
    """FanInProd combines its branches like FanInSum."""
    monkeypatch.setitem(KERNEL_RULES, 'FanInProd', KERNEL_RULES['FanInSum'])


def _case(kind, pred=lambda c: True) -> Case:
    return next(c for c in CASES[kind] if pred(c))


def _arg(name, value):
    return lambda c: any(getattr(n.op, name, None) == value
                         for n in c.layer.graph().nodes())


MUTANTS = {
    'conv drops 1/q': (_conv_without_1_over_q, _case('Conv', _arg('padding', 'VALID'))),
    'relu derivative kernel': (_relu_with_abs_derivative, _case('Relu')),
    'dense ntk weight term': (_dense_ntk_without_weight_term, _case('Relu')),
    'layer norm identity': (_layer_norm_is_identity, _case('LayerNorm')),
    'dropout no rescale': (_dropout_without_rescaling, _case('Dropout')),
    'avg pool edges': (_avg_pool_ignores_normalize_edges,
                       _case('AvgPool', _arg('normalize_edges', True))),
    'SAME as CIRCULAR': (_same_padding_as_circular, _case('Conv', _arg('padding', 'SAME'))),
    'prod as sum': (_prod_as_sum, _case('FanInProd')),
}


@pytest.mark.parametrize('name', sorted(MUTANTS))
def test_broken_rule_is_caught(name, monkeypatch):
    mutate, case = MUTANTS[name]
    mutate(monkeypatch)
    (report,) = check_cases([case], n_samples=128, invariants=False)
    assert not report.ok, f'mutant {name!r} survived:\n{report.text}'
    worst = max(r.worst for r in report.reports.values())
    assert np.isfinite(worst)
