"""Measure a config's speed: compile seconds, steady-state train and eval images/s.

    python -m cnn_jax.benchmark --config configs/mnist.py [--steps 50] [--data real|synthetic]

Warm-up steps (which include compilation) are excluded from the throughput figures. By default
the batches are random images of the config's shape, so any config can be measured offline; with
`--data real` they come from the dataset, and host-side batch assembly is timed on its own too.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from cnn_jax import cli
from cnn_jax.augment import Augmentation



def define_flags() -> None:
  """Defines this command's flags (only when it runs, so the module imports anywhere)."""
  config_flags.DEFINE_config_file('config', None, 'Config file to measure.', lock_config=True)
  flags.DEFINE_integer('steps', 50, 'Timed steps (after warm-up).', lower_bound=1)
  flags.DEFINE_integer('warmup', 5, 'Untimed steps run first (compilation included).',
                       lower_bound=1)
  flags.DEFINE_enum('data', 'synthetic', ['synthetic', 'real'],
                    'Random batches of the right shape, or batches from the dataset.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.mark_flag_as_required('config')


def _timed(fn, *args) -> tuple[float, object]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def measure(config, num_steps: int, warmup: int, real_data: bool) -> dict[str, float]:
  """Returns compile seconds and images/s of the train and eval steps for `config`."""
  from cnn_jax import data, models, optim, steps, train  # pylint: disable=g-import-not-at-top
  from cnn_jax.config_validation import validate_config  # pylint: disable=g-import-not-at-top
  validate_config(config)
  spec = train.data_spec(config)
  info = data.describe_dataset(spec)
  model = train.build_model(config, info.num_classes)
  models.check_fits(model, info.image_shape)
  opt = config.optimizer
  tx = optim.create_optimizer(opt.name, optim.create_schedule(opt.schedule, opt.learning_rate,
                                                               num_steps + warmup),
                              opt.momentum, opt.nesterov, opt.weight_decay, opt.grad_clip_norm)
  state = steps.create_train_state(model, tx, jax.random.key(config.seed), info.image_shape)
  size, eval_size = config.batch_size, config.eval_batch_size
  results = {}
  if real_data:
    start = time.perf_counter()  # Input alone: decoding (or reading the cache) of the train split.
    loaded = len(data.load_split(spec, config.data.train_split))
    results['load_images_per_s'] = loaded / (time.perf_counter() - start)
    dataset = data.load_dataset(spec, config.data.train_split, config.data.eval_split)
    make = lambda i: data.train_batch(dataset.train, dataset.normalizer, size, config.seed, i)
    start = time.perf_counter()
    host_batches = [make(i) for i in range(num_steps)]
    results['host_batches_images_per_s'] = num_steps * size / (time.perf_counter() - start)
  else:
    rng = np.random.default_rng(config.seed)
    host_batches = [{'image': rng.normal(size=(size, *info.image_shape)).astype(np.float32),
                     'label': rng.integers(0, info.num_classes, size).astype(np.int32)}
                    for _ in range(min(num_steps, 8))]
  batches = [jax.device_put(b) for b in host_batches]

  train_step = steps.make_train_step(model, tx, config.label_smoothing,
                                     Augmentation(**config.augment))
  start = time.perf_counter()
  train_step = train_step.lower(state, batches[0]).compile()
  results['train_compile_s'] = time.perf_counter() - start
  for i in range(warmup):
    state, _ = train_step(state, batches[i % len(batches)])
  elapsed, (state, _) = _timed(_run, train_step, state, batches, num_steps)
  results['train_images_per_s'] = num_steps * size / elapsed

  eval_step = steps.make_eval_step(model)
  eval_batch = {'image': jnp.zeros((eval_size, *info.image_shape), jnp.float32),
                'label': jnp.zeros((eval_size,), jnp.int32), 'mask': jnp.ones((eval_size,))}
  start = time.perf_counter()
  eval_step = eval_step.lower(state, eval_batch).compile()
  results['eval_compile_s'] = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(eval_step(state, eval_batch))
  elapsed, _ = _timed(lambda: [eval_step(state, eval_batch) for _ in range(num_steps)])
  results['eval_images_per_s'] = num_steps * eval_size / elapsed
  return results


def _run(train_step, state, batches, num_steps):
  for i in range(num_steps):
    state, metrics = train_step(state, batches[i % len(batches)])
  return state, metrics


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS
  config = cli.load_config()
  results = measure(config, args.steps, args.warmup, args.data == 'real')
  if args.json:
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return
  device = jax.devices()[0]
  print(f'{config.model.name} on {config.data.name}, batch {config.batch_size}, {args.data} data, '
        f'{jax.device_count()} × {device.platform.upper()}; {args.steps} timed steps')
  for key, value in results.items():
    if key.endswith('_images_per_s'):
      print(f'  {key.removesuffix("_images_per_s").replace("_", " "):<20}{value:>10,.0f} images/s')
    else:
      print(f'  {key.removesuffix("_s").replace("_", " "):<20}{value:>10.2f} s')

if __name__ == '__main__':
  define_flags()
  cli.run(main)
