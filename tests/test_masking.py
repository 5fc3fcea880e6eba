"""Masking (`mask_constant=` on kernel_fn and apply_fn): masked positions are left out of
pooling, attention and LayerNorm statistics.

Exact agreement with neural-tangents is in `tests/test_nt_fixtures.py` (`mask_*`).  Here:
masking a tail must give the kernel of the truncated sequences (an independent check for
position-agnostic nets), finite networks agree with the kernel (Monte-Carlo), and unsupported
layers fail clearly."""

import jax
import numpy as np
import pytest
from scipy import stats

import ntc
from ntc import stax
from ntc.covariance.masking import MaskedArray
from ntc.runtime.monte_carlo import monte_carlo_kernel_stats

C = -7.0


def z_threshold(n_entries: int, n_samples: int, alpha: float = 1e-3) -> float:
    """Bonferroni-corrected two-sided Student-t bound on max |z| over `n_entries` entries."""
    return float(stats.t.isf(alpha / (2 * n_entries), df=n_samples - 1))


def seq_net(width=8, mech='SOFTMAX'):
    """Length-agnostic: per-position layers, attention without positional embeddings,
    LayerNorm over positions and channels, mean pooling."""
    return stax.serial(
        stax.Dense(width, 1.3, 0.1), stax.Relu(), stax.Dense(width, 1.1, 0.2),
        stax.GlobalSelfAttention(width, width, width, 2, W_key_std=1.2, b_std=0.1,
                                 attention_mechanism=mech),
        stax.LayerNorm(axis=(1, 2)), stax.Gelu(), stax.Dense(width),
        stax.GlobalAvgPool(), stax.Dense(1))


@pytest.mark.parametrize('mech', ['SOFTMAX', 'IDENTITY'])
def test_masked_tail_equals_truncated_sequence(mech):
    rs = np.random.RandomState(0)
    x1, x2 = rs.randn(3, 6, 4), rs.randn(2, 6, 4)
    m1, m2 = x1.copy(), x2.copy()
    m1[:, 4:] = C
    m2[:, 4:] = C
    kernel_fn = seq_net(mech=mech).kernel_fn
    masked = kernel_fn(m1, m2, ('nngp', 'ntk'), mask_constant=C)
    short = kernel_fn(x1[:, :4], x2[:, :4], ('nngp', 'ntk'))
    for a, b in zip(masked, short):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if mech != 'SOFTMAX':
        return
    # x2 = None, and the reference (joint Gram matrix) plan, agree too
    masked11 = kernel_fn(m1, None, 'nngp', mask_constant=C)
    np.testing.assert_allclose(masked11, kernel_fn(x1[:, :4], None, 'nngp'), rtol=1e-10)
    ref = ntc.compile(seq_net(mech=mech), m1.shape, 'nngp', reference=True)
    np.testing.assert_allclose(ref(m1, m2, mask_constant=C), masked[0], rtol=1e-10)
    # without the mask the padded positions count, and the kernel differs
    assert not np.allclose(kernel_fn(m1, m2, 'nngp'), masked[0], rtol=1e-3)


def test_finite_network_masked_tail_equals_truncated_sequence():
    rs = np.random.RandomState(1)
    x = rs.randn(3, 6, 4)
    m = x.copy()
    m[:, 3:] = C
    init_fn, apply_fn, _ = seq_net(16)
    params = jax.jit(lambda key: init_fn(key, x.shape)[1])(jax.random.PRNGKey(0))
    out = jax.jit(lambda p, x: apply_fn(p, x, mask_constant=C))(params, m)
    assert isinstance(out, MaskedArray)
    assert out.mask.shape == (3, 1) and not out.mask.any()
    np.testing.assert_allclose(out.masked_value, jax.jit(apply_fn)(params, x[:, :3]),
                               rtol=1e-10)


def test_masked_spatial_output_and_conv_window_masks():
    """Entries that involve a masked position are zero; a strided conv keeps the mask of each
    window's centre (SAME, window 3, stride 2 over 6 positions: centres 1, 3, 5)."""
    rs = np.random.RandomState(2)
    x = rs.randn(2, 6, 3)
    x[0, 3] = C  # the centre of output 1
    x[1, 2] = C  # no centre: nothing masked at the output
    net = stax.serial(stax.Conv(4, (3,), strides=(2,), padding='SAME'), stax.Relu(),
                      stax.Dense(4))
    k = net.kernel_fn(x, None, 'nngp', mask_constant=C)
    assert k.shape == (2, 2, 3, 3)
    assert np.all(k[0, :, 1, :] == 0) and np.all(k[:, 0, :, 1] == 0)
    assert np.all(np.delete(np.delete(np.asarray(k), 1, axis=2), 1, axis=3) != 0)


def test_masking_through_layer_without_rule_is_a_clear_error():
    net = stax.serial(stax.Conv(4, (2,), padding='SAME'),
                      stax.ImageResize((-1, 12, -1), 'nearest'), stax.Flatten(), stax.Dense(1))
    x = np.random.RandomState(3).randn(2, 6, 3)
    x[0, 1] = C
    with pytest.raises(ntc.NtcError, match='cannot pass through ImageResize'):
        net.kernel_fn(x, None, 'nngp', mask_constant=C)


def test_monte_carlo_agreement_masked():
    """Masked attention + LayerNorm + pooling vs 192 finite networks of width 128."""
    rs = np.random.RandomState(4)
    x1, x2 = rs.randn(2, 5, 3), rs.randn(1, 5, 3)
    x1[0, 3:] = C
    x1[1, 0] = C
    x2[0, 2] = C

    def net(width):
        return stax.serial(
            stax.Dense(width, 1.3, 0.1),
            stax.GlobalSelfAttention(width, width, width, 4, W_key_std=1.2, b_std=0.1,
                                     pos_emb_type='SUM'),
            stax.LayerNorm(axis=(1, 2)), stax.Dense(width), stax.GlobalAvgPool())

    exact = net(8).kernel_fn(x1, x2, 'nngp', mask_constant=C)
    init, apply, _ = net(128)

    def apply_masked(params, x, **kw):
        return apply(params, x, mask_constant=C, **kw).masked_value

    st = monte_carlo_kernel_stats(init, apply_masked, jax.random.PRNGKey(2), x1, x2, 192,
                                  get=('nngp',), chunk_size=64)
    z = (np.asarray(exact) - st.mean['nngp']) / st.stderr['nngp']
    assert np.abs(z).max() < z_threshold(z.size, 192)


def test_masks_through_repeat_and_batching():
    """A masked conv net with `repeat` equals its unrolled form, also computed in tiles."""
    rs = np.random.RandomState(5)
    x1, x2 = rs.randn(4, 6, 3), rs.randn(3, 6, 3)
    x1[1, 4:] = C
    x2[0, :2] = C
    block = stax.serial(stax.Conv(4, (3,), padding='SAME', W_std=1.2, b_std=0.1), stax.Relu())

    def net(*body):
        return stax.serial(stax.Conv(4, (2,), padding='SAME'), stax.Relu(), *body,
                           stax.Dense(4), stax.GlobalAvgPool(), stax.Dense(1))

    looped = net(stax.repeat(block, 2)).kernel_fn
    got = looped(x1, x2, ('nngp', 'ntk'), mask_constant=C)
    want = net(block, block).kernel_fn(x1, x2, ('nngp', 'ntk'), mask_constant=C)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    tiled = ntc.batch(looped, 2)(x1, x2, 'nngp', mask_constant=C)
    np.testing.assert_allclose(tiled, got[0], rtol=1e-12)
