"""`train_and_evaluate(config, workdir)`: the training loop, top to bottom in data-flow order.

This is the one place besides the command-line tools that reads the config; everything it calls
takes plain arguments. Copy it and change it: there are no callbacks or hooks to learn.
"""

import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from cnn_jax import data, models, optim, steps, summary
from cnn_jax.config_validation import model_kwargs, validate_config
from cnn_jax.metric_writers import MetricWriter
from cnn_jax.workdir import save_run_record

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def evaluate(eval_step, state: steps.TrainState, split: data.Split, normalizer: data.Normalizer,
             batch_size: int, sharding: NamedSharding) -> dict[str, float]:
  """Returns {'loss', 'accuracy', 'count'} over every example of `split`, each counted once."""
  totals = None
  for batch in data.eval_batches(split, normalizer, batch_size):
    sums = eval_step(state, jax.device_put(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {'loss': float(totals['loss_sum']) / count, 'accuracy': float(totals['correct']) / count,
          'count': count}


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """Returns the Flax module named by config.model, for `num_classes` outputs."""
  return models.create_model(config.model.name, num_classes, dtype=DTYPES[config.dtype],
                             **model_kwargs(config.model))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the model described by `config`, writing metrics and the run record into `workdir`.

  Returns:
    The final evaluation metrics: {'loss', 'accuracy', 'count'} on config.data.eval_split.
  """
  # ---- check everything before any work ----------------------------------------------------------
  mesh = Mesh(np.asarray(jax.devices()), ('data',))  # One data axis; one device is a mesh of one.
  validate_config(config, num_devices=mesh.size)
  info = data.describe_dataset(config.data.name, config.data.tfds_data_dir, config.data.image_size)
  model = build_model(config, info.num_classes)
  models.check_fits(model, info.image_shape)
  rows = summary.summarize(model, info.image_shape)
  save_run_record(workdir, config)

  # ---- data ----------------------------------------------------------------------------------------
  started = time.time()
  dataset = data.load_dataset(config.data.name, config.data.train_split, config.data.eval_split,
                              config.data.tfds_data_dir, config.data.download,
                              config.data.image_size)
  per_epoch = data.steps_per_epoch(len(dataset.train), config.batch_size)
  num_steps = config.num_steps or math.ceil(config.num_epochs * per_epoch)
  eval_every = config.eval_every_steps or per_epoch
  print(f'{info.name}: {len(dataset.train):,} training and {len(dataset.eval):,} eval images of '
        f'{info.image_shape}, {info.num_classes} classes; {num_steps:,} steps of '
        f'{config.batch_size} ({num_steps / per_epoch:.1f} epochs) on {mesh.size} '
        f'{jax.devices()[0].platform.upper()} device(s).', flush=True)
  print(summary.format_summary(rows), flush=True)

  # ---- model, optimizer, state --------------------------------------------------------------------
  opt = config.optimizer
  schedule = optim.create_schedule(opt.schedule, opt.learning_rate, num_steps, opt.warmup_steps)
  tx = optim.create_optimizer(opt.name, schedule, opt.momentum, opt.nesterov, opt.weight_decay,
                              opt.grad_clip_norm)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
  state = jax.device_put(
      steps.create_train_state(model, tx, jax.random.key(config.seed), info.image_shape),
      replicated)
  train_step = steps.make_train_step(model, tx, config.label_smoothing)
  eval_step = steps.make_eval_step(model)

  # ---- loop ----------------------------------------------------------------------------------------
  writer = MetricWriter(workdir)
  pending = []  # Train metrics stay on the device until the next log step.
  bar = tqdm(total=num_steps, unit='step', dynamic_ncols=True,
             disable=None if config.progress_bar else True)  # None: hidden when not a terminal.
  eval_metrics = {}
  for step in range(num_steps):
    batch = data.train_batch(dataset.train, dataset.normalizer, config.batch_size, config.seed,
                             step)
    state, metrics = train_step(state, jax.device_put(batch, batch_sharding))
    pending.append(metrics)
    done = step + 1
    bar.update(1)
    if done % config.log_every_steps == 0 or done == num_steps:
      train_metrics = {k: float(np.mean(v)) for k, v in
                       jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending)).items()}
      train_metrics['learning_rate'] = float(schedule(step))
      pending = []
      writer.write(done, 'train', train_metrics)
      bar.set_postfix(loss=f"{train_metrics['loss']:.4f}", acc=f"{train_metrics['accuracy']:.3f}")
    if done % eval_every == 0 or done == num_steps:
      eval_metrics = evaluate(eval_step, state, dataset.eval, dataset.normalizer,
                              config.eval_batch_size, batch_sharding)
      writer.write(done, 'eval', eval_metrics)
      bar.write(f'step {done:>6,}/{num_steps:,}  epoch {done / per_epoch:6.2f}  '
                f'{config.data.eval_split} loss {eval_metrics["loss"]:.4f}  '
                f'accuracy {eval_metrics["accuracy"]:.2%}  ({time.time() - started:.1f} s)')
  bar.close()
  writer.close()

  print(f'Final {config.data.eval_split} accuracy: {eval_metrics["accuracy"]:.2%} '
        f'({int(round(eval_metrics["accuracy"] * eval_metrics["count"]))}/'
        f'{int(eval_metrics["count"])}) after {num_steps:,} steps in '
        f'{time.time() - started:.1f} s.', flush=True)
  return eval_metrics
