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
import optax

from cnn_jax import speed
from cnn_jax.training import losses
from cnn_jax.training.augment import Augmentation, augment_batch, evaluation_logits

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


def eval_step_fn(model: nn.Module, loss: losses.Loss = losses.cross_entropy,
                 test_flip: bool = False) -> Callable[[TrainState, Batch], Metrics]:
  """Returns the pure `eval_step(state, batch) -> sums` over the real (mask = 1) examples, the
  loss without label smoothing, of the logits `evaluation_logits` gives with `test_flip`.

  It returns sums, not means, so that batches of different fill add up exactly:
  {'loss_sum', 'correct', 'count'}; the caller divides once at the end.
  """

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits = evaluation_logits(lambda images: model.apply(variables, images, train=False),
                              batch['image'], test_flip)
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
    that a step runner needs (`cnn_jax.training.runners`)."""
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
  `tx`, the batches augmented (and evaluated) as `augmentation` says, compiled as `run_speed` says (None: with
  XLA's defaults)."""
  return Steps(train=train_step_fn(model, tx, loss, label_smoothing, augmentation),
               eval=eval_step_fn(model, loss, augmentation.test_flip),
               compiler_options=run_speed.compiler_options() if run_speed else None)
