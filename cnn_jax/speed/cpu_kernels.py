"""Which kernels XLA:CPU uses for the matrix products inside convolutions and dense layers.

`config.speed.cpu_kernels` picks them for the jitted train steps:

- 'ynnpack' (the default): XLA hands dot products to YNNPACK. On a 2-core CPU this made the
  Keras MNIST convnet's train step about 2× faster, and the single-conv cats-vs-dogs network's
  about 4× (its 5×5 convolution's weight gradient went from 5.0 s to 0.9 s a batch); see
  experiments/benchmarks/RESULTS.md. The numbers agree with 'xla' up to float rounding.
- 'xla': XLA:CPU's own (Eigen) kernels, for comparison or if YNNPACK misbehaves.

Evaluation steps keep XLA's kernels whatever the setting: for the forward pass alone they were
faster (Keras MNIST convnet eval: 46,000 against 23,000 images/s).

The setting is passed per compiled step (`jax.jit(..., compiler_options=...)`), not through the
process-wide XLA_FLAGS, so it is a plain config value and does not touch other jitted code. It
only applies on CPU; on GPU and TPU nothing changes.
"""

import functools

import jax
import jax.numpy as jnp

CPU_KERNELS = ('ynnpack', 'xla')
_YNNPACK_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}


@functools.cache
def _ynnpack_available() -> bool:
  """Whether this jaxlib accepts the YNNPACK option (it is experimental and may be renamed)."""
  try:
    jax.jit(lambda x: x @ x, compiler_options=_YNNPACK_OPTIONS)(jnp.ones((2, 2)))
    return True
  except jax.errors.JaxRuntimeError:
    return False


def compiler_options(cpu_kernels: str) -> dict[str, str] | None:
  """Returns the `compiler_options` for a jitted step under `config.speed.cpu_kernels`, or None.

  None (XLA's defaults) off the CPU, for 'xla', and where this jaxlib lacks YNNPACK.
  """
  if cpu_kernels == 'xla' or jax.default_backend() != 'cpu' or not _ynnpack_available():
    return None
  return dict(_YNNPACK_OPTIONS)
