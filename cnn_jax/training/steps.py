"""The train state and the pure train and eval steps, built once (`build_steps`) and compiled in
one place (`Steps.jit_train`, `Steps.jit_eval`).

`train_step(state, batch) -> (state, metrics)`: loss, gradient, optimizer update and new batch
statistics in one `jax.jit`, with the old state's buffers donated. The dropout key of step s is
`fold_in(state.rng, s)`, so a run resumed at step s draws the same numbers as one never stopped.
Training, populations (their steps vmapped), the benchmark and time to accuracy all build their
steps here.
"""

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import speed
from cnn_jax.training import losses
from cnn_jax.training.augment import Augmentation, augment_batch

Batch = dict[str, jax.Array]
_AUGMENT_STREAM = 1  # fold_in index deriving the augmentation key from the step's key.
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (what a checkpoint holds)."""
  step: jax.Array  # int32 scalar: number of updates applied so far.
  params: Any
  batch_stats: Any  # Batch-norm running statistics; {} for models without batch norm.
  opt_state: optax.OptState
  rng: jax.Array  # Base key; each step folds its step number in.


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initialises parameters (from `rng`) and optimizer state for `model` on [1, *image_shape]."""
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(model.init, static_argnames='train')(
      init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    rng=state_rng)


def train_step_fn(model: nn.Module, tx: optax.GradientTransformation,
                  loss: losses.Loss = losses.cross_entropy,
                  label_smoothing: float | jax.Array = 0.0,
                  augmentation: Augmentation = Augmentation()) -> Callable[
                      [TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns the pure `train_step(state, batch) -> (state, metrics)`, not yet jitted: one step
  of `tx` on the batch mean of `loss` (with `label_smoothing`).

  The batch is augmented on the device first (see `cnn_jax.training.augment`), if `augmentation`
  says so.
  metrics: {'loss': mean training loss of the batch, 'accuracy': its top-1 accuracy}.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    images = batch['image']
    if augmentation.active:  # A stream of its own, so dropout draws the same with or without it.
      images = augment_batch(images, jax.random.fold_in(dropout_rng, _AUGMENT_STREAM), augmentation)

    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
          rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      mean_loss = loss(logits, batch['label'], label_smoothing).mean()
      return mean_loss, (logits, updates.get('batch_stats', {}))

    (mean_loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return new_state, {'loss': mean_loss, 'accuracy': accuracy}

  return train_step


def normalize_on_device(train_step: Callable, table: np.ndarray) -> Callable:
  """Returns `train_step` for batches whose images are uint8, as the split holds them: the step
  normalises them through `table` [256, C] (`data.Normalizer.lookup_table`), a lookup that gives
  the host's float32 values bit for bit, so training computes exactly the same numbers while a
  quarter of the bytes travel to the device."""
  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    pixels = batch['image'].astype(jnp.int32)  # [B, H, W, C]
    images = jnp.asarray(table)[pixels, jnp.arange(pixels.shape[-1])]
    return train_step(state, {**batch, 'image': images})
  return step


def gather_step(train_step: Callable) -> Callable:
  """Returns the pure `step(state, images, labels, index) -> (state, metrics)` for on-device data.

  `train_step` is a pure train step (`Steps.train`). `images` [N, H, W, C] and `labels` [N] are
  the whole normalised training split, already on the device; only the batch's indices [B]
  travel each step. The batch is gathered inside the same compiled program, so the host neither
  assembles nor copies images.
  """
  def step(state, images, labels, index):
    return train_step(state, {'image': images[index], 'label': labels[index]})
  return step


def scan_steps(train_step: Callable) -> Callable:
  """Returns the pure `scanned_train_steps(state, images, labels, index, count) -> (state,
  metrics)` that runs up to K steps in one compiled call.

  Like `gather_step`, but `index` is [B, K]: column k holds step k's batch, and
  `lax.scan` runs the steps inside one call, so the host dispatches once per K steps. Only the
  first `count` (≤ K, a traced number) steps train; the others leave the state as it is. A call
  that must end early, at a log, an evaluation or a save, is the same program: a run compiles
  one, whatever its cadence. The metrics come back stacked, [K] each, the last K − count zero.
  (The index is [B, K], not [K, B], so that it is sharded along its first axis like every batch.)
  """
  def scanned_train_steps(state, images, labels, index, count):
    def one_step(state, step_and_index):
      k, batch_index = step_and_index

      def train(state):
        return train_step(state, {'image': images[batch_index], 'label': labels[batch_index]})

      def skip(state):
        metrics = jax.eval_shape(lambda s: train(s)[1], state)
        return state, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)

      return jax.lax.cond(k < count, train, skip, state)
    steps = jnp.arange(index.shape[1])
    return jax.lax.scan(one_step, state, (steps, index.T))
  return scanned_train_steps


def eval_step_fn(model: nn.Module, loss: losses.Loss = losses.cross_entropy
                 ) -> Callable[[TrainState, Batch], Metrics]:
  """Returns the pure `eval_step(state, batch) -> sums` over the real (mask = 1) examples, the
  loss without label smoothing.

  It returns sums, not means, so that batches of different fill add up exactly:
  {'loss_sum', 'correct', 'count'}; the caller divides once at the end.
  """

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                         batch['image'], train=False)
    mask = batch['mask']
    example_losses = loss(logits, batch['label'], 0.0)
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return {'loss_sum': jnp.sum(example_losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return eval_step


@dataclasses.dataclass(frozen=True)
class Steps:
  """A model's pure train and eval steps, and the options its train steps compile with.

  Attributes:
    train: `(state, batch) -> (state, metrics)`; a population's takes and gives stacked states.
    eval: `(state, batch) -> sums` ({'loss_sum', 'correct', 'count'}).
    compiler_options: XLA options of the train steps (`cnn_jax.speed.Speed.compiler_options`).
  """
  train: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
  eval: Callable[[TrainState, Batch], Metrics]
  compiler_options: dict[str, str] | None = None

  def jit_train(self, step: Callable | None = None) -> Callable:
    """`step` jitted with the state (its first argument) donated and the speed layer's options:
    the one place a train step is compiled. `step` is `train` (the default) or a wrapper of it
    that the runner needs (`normalize_on_device`, `gather_step`, `scan_steps`)."""
    return jax.jit(step or self.train, donate_argnums=0, compiler_options=self.compiler_options)

  def jit_eval(self) -> Callable:
    """`eval` jitted, with XLA's own CPU kernels: for the forward pass alone they were faster
    (see `cnn_jax.speed.cpu_kernels`)."""
    return jax.jit(self.eval)


def build_steps(model: nn.Module, tx: optax.GradientTransformation,
                loss: losses.Loss = losses.cross_entropy, run_speed: speed.Speed | None = None,
                label_smoothing: float | jax.Array = 0.0,
                augmentation: Augmentation = Augmentation()) -> Steps:
  """Returns the train and eval steps of `model` minimising `loss` (with `label_smoothing`) by
  `tx`, the batches augmented as `augmentation` says, compiled as `run_speed` says (None: with
  XLA's defaults)."""
  return Steps(train=train_step_fn(model, tx, loss, label_smoothing, augmentation),
               eval=eval_step_fn(model, loss),
               compiler_options=run_speed.compiler_options() if run_speed else None)
