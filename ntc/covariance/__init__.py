"""What kernel rules compute with: the `Kernel` record and its layouts (`kernel`), the array
namespace shared by JAX and sympy (`xp`), window stencils (`stencil`) and the position masks of
`mask_constant` (`masking`)."""
