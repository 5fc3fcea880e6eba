"""Optimised plans reproduce the reference lowering to float64 round-off on generated DAGs."""

from hypothesis import given

from ntc.testing import check_against_reference
from ntc.testing import strategies as s


@given(net=s.dense_nets(), data=s.st.data())
def test_dense_dags_match_the_reference_lowering(net, data):
    x1, x2 = data.draw(s.inputs((-1, 5)))
    check_against_reference(net, x1, x2).assert_ok()


@given(arch=s.conv_nets(), data=s.st.data())
def test_conv_dags_match_the_reference_lowering(arch, data):
    net, shape = arch
    x1, x2 = data.draw(s.inputs(shape, n1=(1, 3), n2=(1, 2)))
    check_against_reference(net, x1, x2).assert_ok()
