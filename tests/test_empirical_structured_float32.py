"""The structured empirical-NTK program keeps float32 inputs in float32: XLA's compiled program
has no float64 value and no dtype conversion, even with jax_enable_x64 on (as in these tests),
where a stray Python float or NumPy scalar would otherwise promote a factor to float64 and
double the bytes of every contraction after it."""

import re

import jax
import numpy as np

from ntc import stax
from ntc.runtime.empirical import NtkImplementation, empirical_ntk_fn


def test_float32_conv_net_compiles_to_a_float32_program():
    init_fn, apply_fn, _ = stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                                       stax.Conv(4, (3, 3), padding='SAME'), stax.Relu(),
                                       stax.GlobalAvgPool(), stax.Dense(3))
    x1 = np.random.RandomState(1).randn(3, 5, 4, 2).astype(np.float32)
    x2 = np.random.RandomState(2).randn(2, 5, 4, 2).astype(np.float32)
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    params = jax.tree_util.tree_map(lambda a: a.astype(np.float32), params)
    fn = jax.jit(empirical_ntk_fn(apply_fn, (), (), 0,
                                  NtkImplementation.STRUCTURED_DERIVATIVES))
    assert fn(x1, x2, params).dtype == np.float32
    hlo = fn.lower(x1, x2, params).compile().as_text()
    assert re.findall(r'f64\[[^\]]*\]', hlo) == []
    assert re.findall(r' convert\(', hlo) == []
