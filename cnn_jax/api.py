"""cnn_jax from Python: train a model, load a trained one, predict and evaluate.

    import cnn_jax

    cnn_jax.train('digits', 'runs/digits')                      # as cnn-jax train
    classifier = cnn_jax.load('runs/digits')                     # the checkpoint it chose
    for p in classifier.predict(['seven.png', pixels, pil_image]):
      print(p.file, p.label, p.probability)
    classifier.predict_proba(pixels)                             # [N, num_classes]
    classifier.evaluate('test')['accuracy']
    classifier.export('runs/digits/onnx', 'onnx')                # as cnn-jax export

Images are paths, PIL images or arrays: [H, W] or [H, W, C] (C = 1, 3 or 4) for one image,
[N, H, W, C] or [N, H, W] for several, of 8-bit pixel values (0–255) or floats in [0, 1]. Each is converted to the model's
channels and resized to its input, then normalised as in training, exactly as `cnn_jax.predict`
does with files. Mistakes raise `cnn_jax.errors.UserError` with the message the command line
prints.
"""

import copy
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from cnn_jax import cli, config_keys
from cnn_jax.errors import UserError
from cnn_jax.models import summary
from cnn_jax.serving import export, inference
from cnn_jax.training import train as training


def _config(config: str | os.PathLike | ml_collections.ConfigDict,
            overrides: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
  """A ConfigDict from a shipped config's name or a config file's path (either with ':small'), or a
  ConfigDict, with `overrides` ({'optimizer.learning_rate': 3e-3}) applied as --config.KEY=VALUE
  would."""
  if not isinstance(config, ml_collections.ConfigDict):
    path = os.fspath(config)
    argument = path.partition(':')[2]  # As --config FILE[:ARGUMENT]: get_config(ARGUMENT).
    module = cli.config_module(path)
    try:
      config = module.get_config(argument) if argument else module.get_config()
    except Exception as e:  # pylint: disable=broad-except  # The file's own code failed.
      raise UserError(f'could not load the config file {path!r}: {type(e).__name__}: {e}') from None
    if not isinstance(config, ml_collections.ConfigDict):
      raise UserError(f'the config file {path!r}: get_config() did not return a ConfigDict')
  else:
    config = copy.deepcopy(config)  # The caller's copy stays as it is.
  for key, value in (overrides or {}).items():
    config_keys.set_config_field(config, key, value)
  return config


def train(config: str | os.PathLike | ml_collections.ConfigDict, workdir: str | os.PathLike,
          overrides: Mapping[str, Any] | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`, as `python -m cnn_jax.main` does.

  Args:
    config: a shipped config's name ('digits') or a config file's path (either optionally with
      ':small'), or a ConfigDict.
    workdir: where the run's checkpoints, metrics and records go.
    overrides: {'dotted.key': value}, as --config.dotted.key=value on the command line.

  Returns:
    The final metrics on the eval split and, under 'test', those of the test split.

  Raises:
    UserError: a mistake in the config, data or workdir.
  """
  return training.train_and_evaluate(_config(config, overrides), os.fspath(workdir))


class Classifier:
  """A trained model restored from a workdir, ready to predict and evaluate."""

  def __init__(self, trained: inference.TrainedModel):
    self._trained = trained

  @property
  def class_names(self) -> tuple[str, ...]:
    return self._trained.info.class_names

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the model's input."""
    return self._trained.info.image_shape

  @property
  def step(self) -> int:
    """The training step of the restored checkpoint."""
    return self._trained.step

  @property
  def checkpoint(self) -> str:
    """Which checkpoint it is, in words: 'step 440, the one the run chose on validation'."""
    return self._trained.checkpoint

  def _items(self, images) -> list:
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple, np.ndarray)):
      return [images]  # One path or one PIL image.
    if isinstance(images, np.ndarray):  # [N, H, W, C] and [N, H, W] are stacks of images.
      stack = images.ndim == 4 or (images.ndim == 3 and images.shape[-1] not in (1, 3, 4))
      return list(images) if stack else [images]
    return list(images)

  def predict(self, images, top_k: int = 3, invert: bool = False,
              batch_size: int = 64) -> list[inference.Prediction]:
    """Predicts each image (see the module doc); an unreadable one carries its `error`.

    Returns:
      One Prediction per image, in order: `label`, `probability`, `top_k` (class, probability)
      pairs, `probabilities` over all classes, and `reversed_polarity` (the image's background
      is the opposite of the training images'; `invert=True` inverts the images first).
    """
    return inference.predict_images(self._trained, self._items(images), top_k, batch_size, invert)

  def predict_proba(self, images, invert: bool = False) -> np.ndarray:
    """Class probabilities [N, num_classes] of the images, in class_names order.

    Raises:
      UserError: an image that could not be read (its reason).
    """
    predictions = self.predict(images, top_k=1, invert=invert)
    if not predictions:  # As predict([]) gives [].
      return np.zeros((0, len(self.class_names)), np.float32)
    failed = [p for p in predictions if p.error]
    if failed:
      raise UserError(f'{failed[0].file}: {failed[0].error}')
    return np.stack([p.probabilities for p in predictions])

  def evaluate(self, split: str | None = None) -> dict:
    """Accuracy, loss, per-class accuracy and confusion matrix on `split` (default: the run's
    eval split), as `python -m cnn_jax.evaluate` reports them."""
    return inference.evaluate_trained(self._trained, split)

  def summary(self) -> str:
    """The model's layers, output shapes, parameters and FLOPs, as training prints them."""
    return summary.format_summary(summary.summarize(self._trained.model, self.image_shape,
                                                    self._trained.variables))

  def export(self, directory: str | os.PathLike, model_format: str = 'stablehlo',
             batch: int | None = None) -> list[str]:
    """Writes the model as `cnn-jax export` does ('stablehlo' or 'onnx'; `batch` None: any);
    returns the paths written. `exported_model.load(directory)` runs it without cnn_jax."""
    return export.export_model(self._trained, os.fspath(directory), model_format, batch)


def load(workdir: str | os.PathLike, checkpoint: str | int = 'best') -> Classifier:
  """Restores checkpoint `checkpoint` of the run in `workdir`: 'best', the one the run chose on
  validation and its final line scored (the latest where it ranked none); 'latest'; or a step.
  `Classifier.checkpoint` says which it is.

  Raises:
    UserError: not a workdir, or no such checkpoint.
  """
  return Classifier(inference.load_trained(os.fspath(workdir), str(checkpoint)))
