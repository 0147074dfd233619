"""Time to a target eval accuracy: the wall time a user waits, not only steady-state images/s.

`python -m cnn_jax.benchmark --target_accuracy 0.97` trains with cnn_jax's own jitted step on the
config's real dataset and evaluates the whole eval split after every epoch; with `--against torch`
the PyTorch reference (`cnn_jax.benchmarks.torch_reference`) runs the same loop through
`train_until`, so both stop by the same rule and their clocks cover the same work. Both take the
training length and batch order from the run's plan (`cnn_jax.training.setup`): the learning-rate
schedule spans the config's whole training length, so a run that stops early at the target sees
the learning rates a full run would at those steps.
"""

import time
from collections.abc import Callable

import jax

from cnn_jax import data
from cnn_jax import speed
from cnn_jax.training import losses, setup, steps
from cnn_jax.training.augment import Augmentation


def train_until(train_epoch: Callable[[int], None], evaluate: Callable[[], float], target: float,
                max_epochs: int, start: float) -> dict[str, float | int | None]:
  """Runs `train_epoch(e)` then `evaluate()` for e = 0, 1, ... until the accuracy reaches `target`.

  Args:
    train_epoch: trains epoch `e` (its batches are a function of the step, see `data.train_batch`).
    evaluate: returns the accuracy on the whole eval split.
    target: accuracy to reach.
    max_epochs: give up after this many epochs.
    start: `time.perf_counter()` when the clock started; the seconds are counted from it.

  Returns:
    {'seconds': up to the end of the first evaluation at or above `target`, or None if none was;
    'epochs': epochs trained; 'accuracy': the last evaluation's accuracy}.
  """
  accuracy = 0.0
  for epoch in range(max_epochs):
    train_epoch(epoch)
    accuracy = evaluate()
    if accuracy >= target:
      return {'seconds': time.perf_counter() - start, 'epochs': epoch + 1, 'accuracy': accuracy}
  return {'seconds': None, 'epochs': max_epochs, 'accuracy': accuracy}


def time_to_accuracy(config, dataset: data.Dataset, target: float, max_epochs: int,
                     run_speed: speed.Speed) -> dict[str, float | int | None]:
  """Trains `config`'s model with cnn_jax's jitted steps, as fast as `run_speed` makes them,
  until its eval accuracy reaches `target`.

  The clock starts before the model is built, so the seconds include initialisation, compilation,
  host batch assembly and every evaluation; 'compile_s' (the part before the first training step)
  is reported too, for readers who want to subtract it.

  Returns:
    `train_until`'s {'seconds', 'epochs', 'accuracy'} plus 'compile_s'.
  """
  plan = setup.make_plan(config, len(dataset.train), run_speed)
  per_epoch, seed = plan.steps_per_epoch, plan.shuffle_seed
  start = time.perf_counter()
  model = setup.build_model(config, dataset.info.num_classes, run_speed)
  tx, _ = setup.build_optimizer(config, plan.num_steps)
  state = steps.create_train_state(model, tx, jax.random.key(config.seed), dataset.info.image_shape)
  train_batch = lambda i: jax.device_put(data.train_batch(
      dataset.train, dataset.normalizer, config.batch_size, seed, i))
  eval_batches = lambda: map(jax.device_put, data.eval_batches(
      dataset.eval, dataset.normalizer, config.eval_batch_size))
  model_steps = steps.build_steps(model, tx, losses.get(config.loss), run_speed,
                                  config.label_smoothing, Augmentation(**config.augment))
  train_step = model_steps.jit_train().lower(state, train_batch(0)).compile()
  eval_step = model_steps.jit_eval().lower(state, next(eval_batches())).compile()
  compile_s = time.perf_counter() - start

  def train_epoch(epoch: int) -> None:
    nonlocal state
    for i in range(epoch * per_epoch, (epoch + 1) * per_epoch):
      state, _ = train_step(state, train_batch(i))

  def evaluate() -> float:
    correct = [eval_step(state, batch)['correct'] for batch in eval_batches()]
    return float(sum(jax.device_get(correct))) / len(dataset.eval)

  return {**train_until(train_epoch, evaluate, target, max_epochs, start), 'compile_s': compile_s}
