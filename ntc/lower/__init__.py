"""Lowering: a laid-out graph to one JAX function (`lower`), to the finite network (`finite`),
and to sympy expressions (`symbolic`), through the rules `ntc.layers` registers."""
