"""The public reference architectures, as functions of a stax-like module `s`.

The same text builds the network in neural-tangents and in ntc (`from ntc import stax`).
"""



def _wrn_block(stax, channels, strides=(1, 1), channel_mismatch=False):
    main = stax.serial(stax.Relu(), stax.Conv(channels, (3, 3), strides, padding='SAME'),
                       stax.Relu(), stax.Conv(channels, (3, 3), padding='SAME'))
    shortcut = (stax.Identity() if not channel_mismatch else
                stax.Conv(channels, (3, 3), strides, padding='SAME'))
    return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())


def _wrn(stax, block_size=1, k=1, num_classes=10, pool='gap'):
    def group(n, ch, strides=(1, 1)):
        blocks = [_wrn_block(stax, ch, strides, channel_mismatch=True)]
        blocks += [_wrn_block(stax, ch) for _ in range(n - 1)]
        return stax.serial(*blocks)
    top = stax.GlobalAvgPool() if pool == 'gap' else stax.AvgPool((2, 2))
    layers = [stax.Conv(16, (3, 3), padding='SAME'),
              group(block_size, int(16 * k)),
              group(block_size, int(32 * k), (2, 2)),
              top]
    if pool != 'gap':
        layers.append(stax.Flatten())
    layers.append(stax.Dense(num_classes, 1., 0.))
    return stax.serial(*layers)


def _conv_stack(stax, depth, top, W_std=1.0, b_std=0.0, padding='SAME', act=None):
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(1, (3, 3), (1, 1), padding, W_std, b_std),
                   (act(stax) if act else stax.Relu())]
    layers += top(stax)
    return stax.serial(*layers)


# name -> (builder(stax), x1 shape, x2 shape or None)
PUBLIC = {
    'fc_erf_paper': (lambda s: s.serial(
        s.Dense(512, W_std=1.5, b_std=0.05), s.Erf(),
        s.Dense(512, W_std=1.5, b_std=0.05), s.Erf(),
        s.Dense(1, W_std=1.5, b_std=0.05)), (6, 10), (4, 10)),
    'fc_relu_deep': (lambda s: s.serial(*(
        [s.Dense(64, 1.4, 0.1), s.Relu()] * 6 + [s.Dense(3, 1.0, 0.0)])), (5, 7), (3, 7)),
    'fc_standard_param': (lambda s: s.serial(
        s.Dense(256, 1.3, 0.2, parameterization='standard'), s.Relu(),
        s.Dense(128, 1.1, 0.1, parameterization='standard'), s.Erf(),
        s.Dense(1, 1.0, 0.0, parameterization='standard')), (4, 12), (3, 12)),
    'fc_mixed_acts': (lambda s: s.serial(
        s.Dense(64, 1.2, 0.1), s.Gelu(), s.Dense(64, 1.2, 0.1), s.LeakyRelu(0.1),
        s.Dense(64, 1.2, 0.1), s.Sin(), s.Dense(64), s.Abs(), s.Dense(2)), (5, 6), None),
    'fc_residual_concat': (lambda s: s.serial(
        s.Dense(32, 1.1, 0.1),
        s.FanOut(2), s.parallel(s.serial(s.Relu(), s.Dense(32)), s.Identity()), s.FanInSum(),
        s.FanOut(2), s.parallel(s.serial(s.Erf(), s.Dense(16)), s.Dense(8)), s.FanInConcat(),
        s.Dense(16), s.Relu(), s.Dense(1)), (4, 5), (3, 5)),
    'fc_layernorm': (lambda s: s.serial(
        s.Dense(32, 1.5, 0.1), s.LayerNorm(), s.Relu(), s.Dense(32, 1.5, 0.1),
        s.LayerNorm(), s.Erf(), s.Dense(1)), (5, 8), (2, 8)),
    'conv_flatten': (lambda s: _conv_stack(
        s, 3, lambda s: [s.Flatten(), s.Dense(1, 1.0, 0.0)]), (4, 6, 6, 3), (3, 6, 6, 3)),
    'conv_gap': (lambda s: _conv_stack(
        s, 3, lambda s: [s.GlobalAvgPool(), s.Dense(1, 1.0, 0.0)]), (4, 6, 6, 3), (3, 6, 6, 3)),
    'conv_valid_strided_avgpool': (lambda s: s.serial(
        s.Conv(8, (3, 3), (1, 1), 'VALID', 1.5, 0.1), s.Relu(),
        s.Conv(8, (2, 2), (2, 2), 'SAME', 1.5, 0.1), s.Erf(),
        s.AvgPool((2, 2), (1, 1), 'SAME'), s.Flatten(), s.Dense(2)), (3, 7, 7, 2), (2, 7, 7, 2)),
    'conv_circular_sumpool': (lambda s: s.serial(
        s.Conv(8, (3, 3), (1, 1), 'CIRCULAR', 1.3, 0.05), s.Relu(),
        s.Conv(8, (3, 3), (1, 1), 'CIRCULAR', 1.3, 0.05), s.Relu(),
        s.SumPool((2, 2), (2, 2), 'VALID'), s.GlobalSumPool(), s.Dense(1)), (3, 6, 6, 2), None),
    'conv1d_gap': (lambda s: s.serial(
        s.Conv(16, (3,), (1,), 'SAME', 1.4, 0.1), s.Relu(),
        s.Conv(16, (5,), (2,), 'SAME', 1.4, 0.1), s.Gelu(),
        s.GlobalAvgPool(), s.Dense(1)), (4, 12, 3), (3, 12, 3)),
    'wrn_tiny_gap': (lambda s: _wrn(s, 1, 1, 10, 'gap'), (3, 8, 8, 3), (2, 8, 8, 3)),
}
