"""GlobalSelfAttention: closed forms where they exist, a clear error where they do not, FULL
layouts in the plan, and Monte-Carlo agreement of the kernel with the finite network.

Exact agreement with neural-tangents on every mechanism x positional embedding x scaling is in
`tests/test_nt_fixtures.py` (`attn_*`, `transformer_block*`)."""

import jax
import numpy as np
import pytest
from scipy import stats

import ntc
from ntc import stax
from ntc.errors import ShapeError
from ntc.runtime.monte_carlo import monte_carlo_kernel_stats
from tests.nt_zoo import ZOO


def z_threshold(n_entries: int, n_samples: int, alpha: float = 1e-3) -> float:
    """Bonferroni-corrected two-sided Student-t bound on max |z| over `n_entries` entries."""
    return float(stats.t.isf(alpha / (2 * n_entries), df=n_samples - 1))


def attention(width, mech='SOFTMAX', pos='SUM', linear_scaling=True, **kw):
    return stax.GlobalSelfAttention(
        width, width, width, 4, linear_scaling=linear_scaling, W_key_std=1.5, W_value_std=1.1,
        W_query_std=1.2, b_std=0.2, attention_mechanism=mech, pos_emb_type=pos,
        W_pos_emb_std=0.8, **kw)


@pytest.mark.parametrize('mech', ['SOFTMAX', 'ABS', 'RELU'])
def test_no_closed_form_names_combination_and_points_to_monte_carlo(mech):
    net = stax.serial(stax.Dense(8), attention(8, mech, 'CONCAT', linear_scaling=False))
    with pytest.raises(ntc.NtcError) as e:
        net.kernel_fn(np.ones((2, 3, 4)), None, 'nngp')
    msg = str(e.value)
    assert isinstance(e.value, NotImplementedError)
    for part in (f"attention_mechanism='{mech}'", 'linear_scaling=False', "'CONCAT'",
                 'monte_carlo_kernel_fn', 'serial[1].GlobalSelfAttention'):
        assert part in msg, msg


def test_attention_needs_spatial_axes():
    with pytest.raises(ShapeError, match='spatial axes'):
        stax.serial(stax.Dense(8), attention(8)).kernel_fn(np.ones((2, 4)), None, 'nngp')


def test_transformer_block_plan_layouts():
    """Attention and global pooling need FULL spatial cross covariances and attention reads
    each example's FULL covariance; LayerNorm and Gelu need per-position variances only."""
    plan = ntc.compile(ZOO['transformer_block'][0](stax), (3, 5, 4))
    rows = [(n.op.kind, n.cov.spatial, n.cov.marginal) for n in plan.graph.nodes()]
    full_full = ('FULL', 'FULL')
    assert rows == [
        ('Input', *full_full), ('Dense', *full_full),
        # block 1: LayerNorm -> attention, residual; LayerNorm -> MLP, residual
        ('LayerNorm', *full_full), ('GlobalSelfAttention', *full_full), ('FanInSum', *full_full),
        ('LayerNorm', *full_full), ('Dense', *full_full), ('Gelu', *full_full),
        ('Dense', *full_full), ('FanInSum', *full_full),
        # block 2: the attention's input still needs FULL variances, its output only DIAG ones
        ('LayerNorm', *full_full), ('GlobalSelfAttention', 'FULL', 'DIAG'),
        ('FanInSum', 'FULL', 'DIAG'), ('LayerNorm', 'FULL', 'DIAG'), ('Dense', 'FULL', 'DIAG'),
        ('Gelu', 'FULL', 'DIAG'), ('Dense', 'FULL', 'DIAG'), ('FanInSum', 'FULL', 'DIAG'),
        ('LayerNorm', 'FULL', None), ('GlobalAvgPool', 'NONE', None), ('Dense', 'NONE', None)]
    assert plan.transposes == 0
    text = plan.explain()
    assert 'GlobalSelfAttention' in text and 'cross sp=FULL ord=a var=FULL' in text


def test_attention_between_diag_layers_forces_full():
    """Dense -> Relu -> attention -> Relu -> Flatten: without attention the whole plan would be
    spatially diagonal; attention makes everything before it FULL and leaves DIAG after it."""
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(8), attention(8), stax.Relu(),
                      stax.Flatten(), stax.Dense(1))
    plan = ntc.compile(net, (2, 5, 3))
    spatial = {n.path: n.cov.spatial for n in plan.graph.nodes()}
    assert spatial['serial[2].Dense'] == 'FULL'
    assert spatial['serial[3].GlobalSelfAttention'] == 'DIAG'
    assert spatial['serial[4].Relu'] == 'DIAG'


def test_decay_positional_embedding_matches_reference_plan():
    """A custom `pos_emb_decay_fn` (2-D positions, L1 distance): optimised == reference plan."""
    net = stax.serial(stax.Conv(6, (2, 2), padding='SAME'), stax.Relu(),
                      attention(6, 'RELU', 'CONCAT', pos_emb_decay_fn=lambda d: 0.5 ** d,
                                pos_emb_p_norm=1, val_pos_emb=True, n_chan_pos_emb=3),
                      stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    x1, x2 = np.random.RandomState(0).randn(2, 2, 3, 3, 2)
    got = ntc.compile(net, x1.shape, ('nngp', 'ntk'))(x1, x2)
    ref = ntc.compile(net, x1.shape, ('nngp', 'ntk'), reference=True)(x1, x2)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    assert np.all(np.isfinite(got.ntk))


def test_monte_carlo_agreement():
    """Softmax attention with summed positional embeddings vs 256 finite networks of width 128
    (keys, values, heads x 4): every NNGP entry within the Bonferroni t-bound."""
    rs = np.random.RandomState(0)
    x1, x2 = rs.randn(2, 4, 3), rs.randn(1, 4, 3)

    def net(width):
        return stax.serial(stax.Dense(width, 1.2, 0.1), attention(width))

    exact = net(8).kernel_fn(x1, x2, 'nngp')
    init, apply, _ = net(128)
    st = monte_carlo_kernel_stats(init, apply, jax.random.PRNGKey(1), x1, x2, 256,
                                  get=('nngp',), chunk_size=64)
    z = (np.asarray(exact) - st.mean['nngp']) / st.stderr['nngp']
    assert np.abs(z).max() < z_threshold(z.size, 256)
