"""Does YNN fusion change what cnn_jax's train steps compute on this jaxlib?

jaxlib 0.10.2 miscompiles on CPU a vmapped matrix-vector product followed by a reduction while
YNN fusion is on (jax#39103), and cnn_jax hands the train step's dot products to YNNPACK
(`cnn_jax/speed/cpu_kernels.py`). This script runs one real train step of every registered
model, alone and vmapped over three members (as a population's 'vmap' mode does), compiled three
ways, and prints how far the loss, the gradients and the batch statistics move from the step
compiled with YNN fusion off:

- 'ynnpack': the train steps' own options (`cpu_kernels.compiler_options('ynnpack')`);
- 'default': the jaxlib's defaults (what evaluation and every other jitted program get);
- 'off': `xla_cpu_experimental_ynn_fusion_type=''`, no YNN fusion at all (the reference).

    python experiments/ynn_fusion/check_models.py

The gradient comes out of the step as the update of `optax.sgd(1.0)`: new params − old params.
Float rounding moves numbers by about 1e-6 relative; a miscompilation moves them by much more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import models, speed
from cnn_jax.configs import default
from cnn_jax.speed import cpu_kernels
from cnn_jax.training import steps

OFF = {'xla_cpu_experimental_ynn_fusion_type': ''}
SHAPES = {'resnet': (32, 32, 3), 'resnet18': (32, 32, 3), 'resnet10': (32, 32, 3),
          'resnet_small': (32, 32, 3), 'single_conv': (32, 32, 3)}
MEMBERS = 3
BATCH = 16


def _model(name: str):
  kwargs = {'batch_norm': True} if name == 'convnet' else {}
  fields = models.model_fields(name)
  # The CPU tricks on, as a CPU run has them.
  kwargs['layer_set'] = speed.resolve(default.get_config().speed, 'cpu').layer_set
  if 'dense_dropout' in fields:
    kwargs['dense_dropout'] = 0.25
  return models.create_model(name, 10, **kwargs)


def _relative(a, b) -> float:
  """Largest |a − b| over the pytree, relative to the largest |b|."""
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b))
  scale = max(jax.tree.leaves(jax.tree.map(lambda y: float(jnp.max(jnp.abs(y))), b)) + [1e-30])
  return max(diffs + [0.0]) / scale


def _outputs(step, state, batch):
  new, metrics = step(state, batch)
  grads = jax.tree.map(lambda old, upd: old - upd, state.params, new.params)  # sgd(1): −grad
  return metrics['loss'], grads, new.batch_stats


def main() -> None:
  print(f'jax {jax.__version__}, backend {jax.default_backend()}')
  print(f'{"model":<13} {"mode":<7} {"options":<8} {"loss":>9} {"grads":>9} {"batch_stats":>11}')
  worst = 0.0
  rng = np.random.default_rng(0)
  for name in models.MODELS:
    model = _model(name)
    shape = SHAPES.get(name, (28, 28, 1))
    tx = optax.sgd(1.0)
    batch = {'image': jnp.asarray(rng.normal(size=(BATCH, *shape)), jnp.float32),
             'label': jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)}
    one = steps.create_train_state(model, tx, jax.random.key(1), shape)
    # Members with their own initialisation, as population.seeds gives them.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[
        steps.create_train_state(model, tx, jax.random.key(s), shape) for s in range(MEMBERS)])
    pure = steps.build_steps(model, tx).train
    for mode, fn, state in (('single', pure, one),
                            ('vmapped', jax.vmap(pure, in_axes=(0, None)), stacked)):
      reference = _outputs(jax.jit(fn, compiler_options=OFF), state, batch)
      for label, options in (('ynnpack', cpu_kernels.compiler_options('ynnpack')),
                              ('default', None)):
        got = _outputs(jax.jit(fn, compiler_options=options), state, batch)
        row = [_relative(g, r) for g, r in zip(got, reference)]
        worst = max(worst, *row)
        print(f'{name:<13} {mode:<7} {label:<8} {row[0]:9.1e} {row[1]:9.1e} {row[2]:11.1e}')
  print(f'largest relative difference from YNN fusion off: {worst:.1e}')


if __name__ == '__main__':
  main()
