"""What `python -m cnn_jax.benchmark` measures: compile seconds and steady-state images/s of the
jitted train and eval steps, the input pipeline alone, the PyTorch reference on the same batches,
and the time to a target accuracy. See `cnn_jax/benchmark.py` for the command and its flags.
"""

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn_jax import data, models, speed
from cnn_jax.benchmarks import time_to_accuracy, torch_reference
from cnn_jax.runtime import distributed
from cnn_jax.training import losses, runners, setup, steps
from cnn_jax.training.augment import Augmentation
from cnn_jax.training.validation import validate_config


def _timed(fn, *args) -> tuple[float, object]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def host_batches(config, num_steps: int, real_data: bool
                 ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
  """Returns the host batches to time and, for real data, the input pipeline's images/s."""
  validate_config(config)  # Before any data is loaded.
  spec = setup.data_spec(config)
  info = data.describe_dataset(spec)
  size = config.batch_size
  results = {}
  if real_data and config.data.stream:
    batches, results = _streamed_batches(config, spec, num_steps)
  elif real_data:
    start = time.perf_counter()  # Input alone: decoding (or reading the cache) of the train split.
    loaded = len(data.load_split(spec, config.data.train_split))
    results['load_images_per_s'] = loaded / (time.perf_counter() - start)
    dataset = data.load_dataset(spec, config.data.train_split, config.data.eval_split)
    make = lambda i: data.train_batch(dataset.train, dataset.normalizer, size, config.seed, i)
    start = time.perf_counter()
    batches = [make(i) for i in range(num_steps)]
    results['host_batches_images_per_s'] = num_steps * size / (time.perf_counter() - start)
  else:
    rng = np.random.default_rng(config.seed)
    batches = [{'image': rng.normal(size=(size, *info.image_shape)).astype(np.float32),
                'label': rng.integers(0, info.num_classes, size).astype(np.int32)}
               for _ in range(min(num_steps, 8))]
  return batches, results


def _streamed_batches(config, spec, num_steps: int) -> tuple[list, dict[str, float]]:
  """Draws `num_steps` batches from the config's stream (data.stream=True), timing the input alone:
  opening the splits (fitting the normalisation; writing the decoded cache on first use), the
  first batch (worker start-up), then the steady rate."""
  d = config.data
  start = time.perf_counter()
  dataset = data.stream_dataset(spec, d.train_split, d.eval_split)
  results = {'stream_open_s': time.perf_counter() - start}
  stream = data.stream.train_batches(dataset.train, dataset.prepare, dataset.normalizer,
                                     config.batch_size, config.seed, threads=d.workers,
                                     worker_processes=d.worker_processes, prefetch=d.prefetch)
  start = time.perf_counter()
  batches = [next(stream)]
  results['stream_first_batch_s'] = time.perf_counter() - start
  timed = max(num_steps - 1, 1)  # Steady state: the batches after the first.
  start = time.perf_counter()
  batches += [next(stream) for _ in range(timed)]
  results['host_batches_images_per_s'] = timed * config.batch_size / (time.perf_counter() - start)
  stream.close()
  return batches[:num_steps], results


def measure(config, num_steps: int, warmup: int, real_data: bool,
            inputs: tuple[list, dict] | None = None,
            started: float | None = None) -> dict[str, float]:
  """Returns compile seconds and images/s of the train and eval steps for `config`.

  `inputs`: `host_batches(config, num_steps, real_data)`, when another measurement shares them.
  `started`: the command's start (`time.perf_counter()`), for 'first_step_s', the wait until the
  first train step is done.
  """
  speed.before_backend(config.speed)
  validate_config(config)
  run_speed = setup.build_speed(config)
  run_speed.apply()
  info = data.describe_dataset(setup.data_spec(config))
  model = setup.build_model(config, info.num_classes, run_speed)
  models.check_fits(model, info.image_shape)
  tx, _ = setup.build_optimizer(config, num_steps + warmup)
  state = steps.create_train_state(model, tx, jax.random.key(config.seed), info.image_shape)
  size, eval_size = config.batch_size, config.eval_batch_size
  host, input_results = inputs or host_batches(config, num_steps, real_data)
  results = dict(input_results)
  batches = [jax.device_put(b) for b in host]

  model_steps = steps.build_steps(model, tx, losses.get(config.loss), run_speed,
                                  config.label_smoothing, Augmentation(**config.augment))
  train_step = model_steps.jit_train()
  start = time.perf_counter()
  train_step = train_step.lower(state, batches[0]).compile()
  results['train_compile_s'] = time.perf_counter() - start
  memory = train_step.memory_analysis()
  if memory is not None:  # The step's working memory: over THREAD_HEAP_LIMIT, see host_memory.
    results['train_step_memory_mib'] = memory.temp_size_in_bytes / 2**20
  for i in range(warmup):
    state, _ = train_step(state, batches[i % len(batches)])
    if i == 0 and started is not None:
      jax.block_until_ready(state)
      results['first_step_s'] = time.perf_counter() - started
  jax.block_until_ready(state)  # Dispatch is asynchronous: keep warm-up out of the timed steps.
  elapsed, (state, _) = _timed(_run, train_step, state, batches, num_steps)
  results['train_images_per_s'] = num_steps * size / elapsed
  step_flops = _flops(train_step)
  if step_flops:  # What the compiled step computes, by XLA's count, per second.
    results['train_gflop_per_s'] = step_flops * num_steps / elapsed / 1e9
    results['matmul_gflop_per_s'] = matmul_gflop_per_s()
    results['train_fraction_of_matmul'] = (results['train_gflop_per_s']
                                           / results['matmul_gflop_per_s'])
  state, results['train_loop_images_per_s'] = _time_the_loop(
      config, model_steps, state, host, num_steps, warmup, real_data)

  eval_step = model_steps.jit_eval()
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


def _flops(compiled) -> float | None:
  """XLA's count of the floating-point operations of one call of `compiled`, if it gives one."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return (analysis or {}).get('flops') or None


def matmul_gflop_per_s(size: int = 1024, calls: int = 10) -> float:
  """GFLOP/s of a jitted float32 matrix product of two [size, size] matrices on this device, now:
  the yardstick that says what share of the machine a train step uses."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  product = jax.jit(lambda x: x @ x)
  jax.block_until_ready(product(a))  # Compiled and warm.
  elapsed, _ = _timed(lambda: [product(a) for _ in range(calls)])
  return 2 * size ** 3 * calls / elapsed / 1e9


def _time_the_loop(config, model_steps: steps.Steps, state, host: list[dict], num_steps: int,
                   warmup: int, real_data: bool) -> tuple[object, float]:
  """Images/s of the training loop's own step runner (`runners.HostBatches`): each step's batch
  assembled on the host (from the dataset, with --data real) and transferred, as training does,
  where the train figure above feeds batches already on the device."""
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  if real_data and not config.data.stream:
    dataset = data.load_dataset(setup.data_spec(config), config.data.train_split,
                                config.data.eval_split)
    runner = runners.HostBatches.from_dataset(model_steps, dataset, config.batch_size, config.seed,
                                           0, sharding, prefetch=config.data.prefetch)
  else:  # Synthetic batches, or those a stream gave: the same host arrays, transferred each step.
    batches = (distributed.to_global(host[i % len(host)], sharding) for i in itertools.count())
    runner = runners.HostBatches(model_steps, batches)
  for i in range(warmup):
    state, _ = runner(state, i, 1)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(num_steps):
    state, _ = runner(state, warmup + i, 1)
  jax.block_until_ready(state)
  return state, num_steps * config.batch_size / (time.perf_counter() - start)


def _run(train_step, state, batches, num_steps):
  for i in range(num_steps):
    state, metrics = train_step(state, batches[i % len(batches)])
  return state, metrics


def compare_with_torch(config, num_steps: int, warmup: int, inputs: tuple[list, dict],
                       results: dict[str, float]) -> dict[str, float]:
  """Returns the PyTorch reference's figures on the same host batches (keys prefixed 'torch_')
  and the ratios 'train_ratio' and 'eval_ratio' of cnn_jax's images/s to PyTorch's; then those
  of its train step through torch.compile ('torch_compiled_', 'compiled_train_ratio'), or why
  torch.compile does not work here ('torch_compile_error')."""
  measured = torch_reference.measure_torch(config, num_steps, warmup, inputs[0])
  compared = {**{f'torch_{k}': v for k, v in measured.items()},
              **{f'{k}_ratio': results[f'{k}_images_per_s'] / measured[f'{k}_images_per_s']
                 for k in ('train', 'eval')}}
  try:  # A second column where torch.compile works here (it needs a C++ compiler on a CPU).
    fast = torch_reference.measure_torch(config, num_steps, warmup, inputs[0], compiled=True)
  except Exception as e:  # pylint: disable=broad-except  # Its many backend errors.
    return {**compared, 'torch_compile_error': f'{type(e).__name__}: {str(e).splitlines()[0]}'}
  return {**compared, **{f'torch_compiled_{k}': v for k, v in fast.items()},
          'compiled_train_ratio': results['train_images_per_s'] / fast['train_images_per_s']}


def time_to_target(config, target: float, max_epochs: int, against_torch: bool) -> dict:
  """Returns seconds, epochs and accuracy to reach `target` for cnn_jax (and for PyTorch, with
  keys prefixed 'torch_') on the config's real dataset, loaded once for both."""
  dataset = data.load_dataset(setup.data_spec(config), config.data.train_split,
                              config.data.eval_split)
  runs = {'': time_to_accuracy.time_to_accuracy(config, dataset, target, max_epochs,
                                                setup.build_speed(config))}
  if against_torch:
    runs['torch_'] = torch_reference.time_to_accuracy_torch(config, dataset, target, max_epochs)
  rename = {'seconds': 's'}
  return {'target_accuracy': target, **{f'{prefix}time_to_target_{rename.get(k, k)}': v
                                        for prefix, run in runs.items() for k, v in run.items()}}
