"""A trained model restored from its workdir alone, and the jitted forward pass over batches.

evaluate, predict (and later tools) need nothing but `--workdir`: the config, the dataset record
(classes, image shape, input normalisation) and the checkpoints are all there.
"""

import dataclasses
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from cnn_jax import checkpoint, data, optim, steps
from cnn_jax.errors import UserError
from cnn_jax.workdir import load_config, load_dataset_record


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A model and its weights as of one checkpoint, with what is needed to feed it."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  normalizer: data.Normalizer
  model: Any
  variables: dict  # {'params': ..., 'batch_stats': ...}


def load_trained(workdir: str, which: str = 'latest') -> TrainedModel:
  """Restores checkpoint `which` ('latest', 'best' or a step number) of the run in `workdir`.

  Raises:
    UserError: not a workdir, no such checkpoint, or a checkpoint that does not fit the config.
  """
  from cnn_jax import train  # pylint: disable=g-import-not-at-top  # train imports this module's peers.
  config = load_config(workdir)
  info, normalizer = load_dataset_record(workdir)
  if config is None:
    raise UserError(f'{workdir!r} has no config.json; is it the --workdir of a training run?')
  model = train.build_model(config, info.num_classes)
  opt = config.optimizer
  # The optimizer only shapes the restore template (its state is restored and then dropped).
  tx = optim.create_optimizer(opt.name, optax.constant_schedule(opt.learning_rate), opt.momentum,
                              opt.nesterov, opt.weight_decay, opt.grad_clip_norm)
  template = jax.eval_shape(lambda: steps.create_train_state(
      model, tx, jax.random.key(0), info.image_shape))
  with checkpoint.open_manager(workdir, read_only=True) as manager:
    step = checkpoint.resolve_step(manager, which)
    try:
      state, _ = checkpoint.restore(manager, step, template)
    except checkpoint.IncompatibleCheckpoint as e:
      raise UserError(f'The checkpoint at step {step} of {workdir!r} does not match its own '
                      f'config.json ({e}); was config.json edited, or written by another version '
                      'of cnn_jax? See versions.json in the workdir.') from None
  return TrainedModel(workdir, step, config, info, normalizer, model,
                      {'params': state.params, 'batch_stats': state.batch_stats})


def make_logits_fn(model):
  """Returns a jitted `logits(variables, images) -> float32 [B, num_classes]` (eval mode)."""
  return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def batched_logits(trained: TrainedModel, batches: Iterable[dict[str, np.ndarray]],
                   num_batches: int | None = None, progress: bool = False) -> np.ndarray:
  """Returns logits [N, K] for the real (mask = 1) examples of padded `batches`, in order.

  With `progress`, a tqdm bar (of `num_batches`) shows on a terminal.
  """
  logits_fn = make_logits_fn(trained.model)
  outputs = []
  for batch in tqdm(batches, total=num_batches, unit='batch', desc='predicting',
                    disable=None if progress else True):
    logits = np.asarray(logits_fn(trained.variables, jnp.asarray(batch['image'])))
    outputs.append(logits[batch['mask'] == 1])
  return np.concatenate(outputs) if outputs else np.zeros((0, trained.info.num_classes))
