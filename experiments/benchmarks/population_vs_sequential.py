"""A population of N models in one program against the same N models trained one after another.

    python experiments/benchmarks/population_vs_sequential.py [--config digits] \\
        [--size 8] [--steps 200] [--repeats 3]

Two measurements, in one process so that both sides share the machine's state:

1. Step throughput: model-images/s of one jitted population step (N members, vmapped) against
   N × a single model's jitted step, on the same random batches, warm-up excluded.
2. End to end: `train_and_evaluate` of the config N times (seeds 0..N−1, one batch order) against
   one `train_and_evaluate` with population.size = N: everything a user waits for (data, compile,
   evaluation, checkpoints), but not Python's start-up, which separate commands would add to
   the sequential side.

Each line prints the ratio (population / sequential throughput; > 1 means the population wins).
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tests'))
from conftest import load_config  # pylint: disable=g-import-not-at-top,wrong-import-position

from cnn_jax import data  # pylint: disable=wrong-import-position
from cnn_jax.training import population, setup, train


def _steps_per_s(step, state, batches, num_steps: int) -> float:
  for i in range(3):  # Warm-up, compilation included.
    state, _ = step(state, batches[i % len(batches)])
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(num_steps):
    state, _ = step(state, batches[i % len(batches)])
  jax.block_until_ready(state)
  return num_steps / (time.perf_counter() - start)


def step_throughput(config, size: int, num_steps: int) -> tuple[float, float]:
  """Returns (population, sequential) model-images/s of the train step alone: the steps a
  population run and a single run compile."""
  info = data.describe_dataset(setup.data_spec(config))
  run_speed = setup.build_speed(config)
  model = setup.build_model(config, info.num_classes, run_speed)
  single = train.single_model(config, model, info.image_shape, num_steps, '', run_speed)
  config.population.size, config.population.seeds = size, tuple(range(size))
  members = population.member_configs(config)
  trainee = population.population_trainee(config, members, model, info.image_shape, num_steps,
                                          run_speed, [''] * size)
  rng = np.random.default_rng(0)
  batches = [{'image': jnp.asarray(rng.normal(size=(config.batch_size, *info.image_shape)),
                                   jnp.float32),
              'label': jnp.asarray(rng.integers(0, info.num_classes, config.batch_size),
                                   jnp.int32)} for _ in range(4)]
  sequential = _steps_per_s(single.steps.jit_train(), jax.jit(single.init)(), batches,
                            num_steps) * config.batch_size
  together = _steps_per_s(trainee.steps.jit_train(), jax.jit(trainee.init)(), batches,
                          num_steps) * size * config.batch_size
  return together, sequential


def end_to_end(config_name: str, size: int, vectorize: str,
               num_steps: int = 0) -> tuple[float, float]:
  """Returns (population, sequential) wall seconds to train `size` models of the config."""
  with contextlib.redirect_stdout(io.StringIO()):  # The runs' own logs would drown the figures.
    return _end_to_end(config_name, size, vectorize, num_steps)


def _end_to_end(config_name: str, size: int, vectorize: str,
                num_steps: int) -> tuple[float, float]:
  start = time.perf_counter()
  for seed in range(size):
    config = load_config(config_name)
    config.progress_bar, config.seed, config.shuffle_seed = False, seed, 0
    config.num_steps = num_steps or config.num_steps
    train.train_and_evaluate(config, tempfile.mkdtemp())
  sequential = time.perf_counter() - start
  config = load_config(config_name)
  config.progress_bar, config.population.size = False, size
  config.num_steps = num_steps or config.num_steps
  config.population.seeds, config.shuffle_seed = tuple(range(size)), 0  # As the sequential runs.
  config.speed.population_vectorize = vectorize
  start = time.perf_counter()
  train.train_and_evaluate(config, tempfile.mkdtemp())
  return time.perf_counter() - start, sequential


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='digits', help='A name under configs/.')
  parser.add_argument('--size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--skip_end_to_end', action='store_true')
  parser.add_argument('--vectorize', default='auto', choices=('auto', 'vmap', 'loop'),
                      help='config.speed.population_vectorize of the population.')
  parser.add_argument('--num_steps', type=int, default=0,
                      help='End to end: the training length of every run (0: the config\'s).')
  args = parser.parse_args()
  name = os.path.splitext(os.path.basename(args.config))[0]
  print(f'{name}: population of {args.size} against {args.size} sequential models on '
        f'{jax.device_count()} × {jax.devices()[0].platform.upper()}', flush=True)
  for _ in range(args.repeats):
    config = load_config(name)
    config.speed.population_vectorize = args.vectorize
    together, sequential = step_throughput(config, args.size, args.steps)
    print(f'  step throughput: population {together:10,.0f} model-images/s, sequential '
          f'{sequential:10,.0f}; ratio {together / sequential:.2f}', flush=True)
  if not args.skip_end_to_end:
    for _ in range(args.repeats):
      together, sequential = end_to_end(name, args.size, args.vectorize, args.num_steps)
      print(f'  end to end: population {together:6.1f} s, sequential {sequential:6.1f} s; '
            f'ratio {sequential / together:.2f}', flush=True)


if __name__ == '__main__':
  main()
