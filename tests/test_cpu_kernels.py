"""The train steps' CPU kernels compute what plain XLA computes, on the pattern jaxlib 0.10.2
miscompiled while YNN fusion was on (jax#39103): a vmapped matrix-vector product followed by a
reduction. pyproject.toml requires a jaxlib without it; this test fails on 0.10.2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.speed import cpu_kernels


def _vmapped_matvec_then_sum(x):
  matrix = jnp.eye(3, dtype=x.dtype)
  return jax.vmap(lambda row: jnp.sum((matrix @ row) ** 2))(x)


@pytest.mark.parametrize('kernels', cpu_kernels.CPU_KERNELS)
def test_a_vmapped_matvec_then_reduction_compiles_to_the_right_numbers(kernels):
  # Row i is (i, 0, 0), so f(x)[i] = i²; 32,769 rows is the float32 size of the upstream report.
  i = jnp.arange(32_769, dtype=jnp.float32)
  x = jnp.stack((i, jnp.zeros_like(i), jnp.zeros_like(i)), axis=1)  # [N, 3]
  compiled = jax.jit(_vmapped_matvec_then_sum,
                     compiler_options=cpu_kernels.compiler_options(kernels))
  expected = np.arange(32_769, dtype=np.float32) ** 2  # i², rounded to float32 as XLA rounds it.
  result = compiled(x)
  np.testing.assert_array_equal(np.asarray(result), expected)
  assert float(result[-1]) == 1_073_741_824.0  # jaxlib 0.10.2: 1,065,369,600.
