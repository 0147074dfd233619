"""A trained model restored from its workdir alone, and what is computed with it: logits over
batches, an evaluation report of a split, and predictions for image files prepared exactly as its
training data was.

evaluate, predict, report and sweep need nothing but `--workdir`: the config, the dataset record
(classes, image shape, input normalisation) and the checkpoints are all there.
"""

import dataclasses
import os
import sys
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from cnn_jax import data
from cnn_jax.data import image_folder, images
from cnn_jax.errors import UserError
from cnn_jax.runtime import compilation_cache
from cnn_jax.serving import exported_model
from cnn_jax.serving.exported_model import ExportedModel
from cnn_jax.training import augment, checkpoint, losses, setup, steps
from cnn_jax.training.workdir import load_dataset_record, load_run_config

FILE_PIXEL_MAX = 255.0  # Image files hold 8-bit pixels, whatever the training data's range was.


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
  checkpoint: str = ''  # Which checkpoint, in words (`checkpoint.describe_step`).


def load_trained(workdir: str, which: str = 'best') -> TrainedModel:
  """Restores checkpoint `which` ('best', the one the run chose on validation; 'latest'; or a
  step number) of the run in `workdir`.
  A damaged 'latest' or 'best' checkpoint gives way, with a warning, to the newest intact one.

  Raises:
    UserError: not a workdir, no such checkpoint, a checkpoint that does not fit the config, or
      a damaged one asked for by its step (or no intact one at all).
  """
  config = load_run_config(workdir)
  info, normalizer = load_dataset_record(workdir)
  if config is None:
    raise UserError(f'{workdir!r} has no config.json; is it the --workdir of a training run?')
  compilation_cache.enable(config.compilation_cache)
  model = setup.build_model(config, info.num_classes, setup.build_speed(config))
  # The optimizer only shapes the restore template (its state is restored and then dropped).
  tx, _ = setup.build_optimizer(config, num_steps=1)
  template = jax.eval_shape(lambda: steps.create_train_state(
      model, tx, jax.random.key(0), info.image_shape))
  with checkpoint.open_manager(workdir, read_only=True) as manager:
    step = checkpoint.resolve_step(manager, which)
    saved = sorted(manager.all_steps(), reverse=True)
    fallbacks = [s for s in saved if s != step] if which in ('latest', 'best') else []
    skipped = []
    try:
      step, state, _ = checkpoint.restore_intact(manager, [step, *fallbacks], template,
                                                 skipped.append)
    except checkpoint.DamagedCheckpoint as damaged:
      others = ', '.join(str(s) for s in saved if s != damaged.step) or 'none'
      raise UserError(f'{damaged}. Choose another with --checkpoint (saved steps: {others}).'
                      if not fallbacks else f'{damaged}, and so is every other checkpoint of '
                      f'{workdir!r}: train it again.') from None
    except checkpoint.IncompatibleCheckpoint as e:
      raise UserError(f'The checkpoint at step {step} of {workdir!r} does not match its own '
                      f'config.json ({e}); was config.json edited, or written by another version '
                      'of cnn_jax? See versions.json in the workdir.') from None
    described = checkpoint.describe_step(manager, step)
  for damaged in skipped:
    print(f'Warning: {damaged}; using the checkpoint at step {step:,} instead, the newest '
          'intact one.', file=sys.stderr, flush=True)
  return TrainedModel(workdir, step, config, info, normalizer, model,
                      {'params': state.params, 'batch_stats': state.batch_stats}, described)


def trained_logits(trained: TrainedModel, variables: dict, images: jax.Array) -> jax.Array:
  """The logits of `images` as the run `trained` evaluated them: the one place, after training,
  that knows a run may average each image with its mirror (`augment.evaluation_logits`)."""
  return augment.evaluation_logits(
      lambda batch: trained.model.apply(variables, batch, train=False), images,
      trained.config.augment.test_flip)


def batched_logits(trained: TrainedModel, batches: Iterable[dict[str, np.ndarray]],
                   num_batches: int | None = None, progress: bool = False) -> np.ndarray:
  """Returns logits [N, K] for the real (mask = 1) examples of padded `batches`, in order.

  With `progress`, a tqdm bar (of `num_batches`) shows on a terminal.
  """
  logits_fn = jax.jit(lambda variables, images: trained_logits(trained, variables, images))
  outputs = []
  for batch in tqdm(batches, total=num_batches, unit='batch', desc='predicting',
                    disable=None if progress else True):
    logits = np.asarray(logits_fn(trained.variables, jnp.asarray(batch['image'])))
    outputs.append(logits[batch['mask'] == 1])
  return np.concatenate(outputs) if outputs else np.zeros((0, trained.info.num_classes))


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities [N, K] of logits [N, K], computed stably in NumPy."""
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


# ---- a split: logits and the evaluation report ------------------------------------------------

def split_logits(trained: TrainedModel, split: str,
                 batch_size: int | None = None) -> tuple[data.Split, np.ndarray]:
  """Returns (examples, logits [N, K]) of `trained` on every example of `split`, in order."""
  examples = data.load_split(setup.data_spec(trained.config), split,
                             trained.config.data.train_split)
  batches = data.eval_batches(examples, trained.normalizer,
                              batch_size or trained.config.eval_batch_size)
  return examples, batched_logits(trained, batches)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Returns counts [K, K]: row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def _class_scores(matrix: np.ndarray, k: int) -> dict:
  """Class k's scores from the confusion matrix: accuracy (= recall: of the images of class k,
  the share predicted k), precision (of the images predicted k, the share that are k) and F1
  (their harmonic mean); None where a share has no images to count."""
  correct, count, predicted = int(matrix[k, k]), int(matrix[k].sum()), int(matrix[:, k].sum())
  recall = correct / count if count else None
  precision = correct / predicted if predicted else None
  f1 = (2 * precision * recall / (precision + recall) if precision and recall else
        (0.0 if precision is not None and recall is not None else None))
  return {'accuracy': recall, 'precision': precision, 'recall': recall, 'f1': f1,
          'correct': correct, 'count': count}


def evaluation_report(trained: TrainedModel, split: str, labels: np.ndarray,
                      logits: np.ndarray) -> dict:
  """Returns accuracy, mean cross-entropy loss, count, per-class accuracy and the confusion
  matrix as a dict."""
  predictions = logits.argmax(axis=-1)
  example_losses = np.asarray(losses.cross_entropy(logits, labels))
  matrix = confusion_matrix(labels, predictions, trained.info.num_classes)
  per_class = {name: _class_scores(matrix, k) for k, name in enumerate(trained.info.class_names)}
  return {'workdir': os.path.abspath(trained.workdir), 'checkpoint_step': trained.step,
          'checkpoint': trained.checkpoint,
          'split': split, 'count': int(len(labels)),
          'accuracy': float(np.mean(predictions == labels)), 'loss': float(np.mean(example_losses)),
          'class_names': list(trained.info.class_names), 'per_class': per_class,
          'confusion_matrix': matrix.tolist()}


def evaluate_workdir(workdir: str, which: str = 'best', split: str | None = None,
                     batch_size: int | None = None) -> dict:
  """Evaluates checkpoint `which` of `workdir` on `split` (default: the run's eval split);
  returns `evaluation_report`'s dict."""
  return evaluate_trained(load_trained(workdir, which), split, batch_size)


def evaluate_trained(trained: TrainedModel, split: str | None = None,
                     batch_size: int | None = None) -> dict:
  """Evaluates `trained` on `split` (default: its run's eval split); returns
  `evaluation_report`'s dict."""
  split = split or trained.config.data.eval_split
  examples, logits = split_logits(trained, split, batch_size)
  return evaluation_report(trained, split, examples.labels, logits)


# ---- image files ------------------------------------------------------------------------------

def load_predictor(path: str, which: str = 'best') -> 'TrainedModel | ExportedModel':
  """What predicts from `path`: the exported model of an export directory (`cnn-jax export`),
  else checkpoint `which` of the run in the workdir `path`."""
  if os.path.exists(os.path.join(path, exported_model.RECORD_FILE)):
    return exported_model.load(path)
  return load_trained(path, which)


@dataclasses.dataclass(frozen=True)
class _Facts:
  """What feeding a model needs to know, from a run or from an export's model.json."""
  image_shape: tuple[int, int, int]
  resize: str
  class_names: tuple[str, ...]
  background: str | None


def _facts(model: 'TrainedModel | ExportedModel') -> _Facts:
  if isinstance(model, ExportedModel):
    return _Facts(model.image_shape, model.record.get('resize', 'squash'), model.class_names,
                  model.record.get('background'))
  return _Facts(model.info.image_shape, model.config.data.resize,
                model.info.class_names, training_background(model))


def class_names(model: 'TrainedModel | ExportedModel') -> tuple[str, ...]:
  """The class names of a restored or exported model."""
  return _facts(model).class_names


def background_of(model: 'TrainedModel | ExportedModel') -> str | None:
  """'dark' or 'light': the background of the images a restored or exported model learned from
  (None for photos)."""
  return _facts(model).background


def decode_files(model: 'TrainedModel | ExportedModel', files: list[str],
                 progress: bool = False) -> tuple[list[np.ndarray | None], dict[str, str]]:
  """Returns (arrays, {file: reason}): each file decoded and resized as its training data was;
  arrays[i] is None where file i could not be read."""
  facts = _facts(model)
  height, width, channels = facts.image_shape
  if height == width:  # The image-folder decoder: same resize mode, threads, progress bar.
    resize = facts.resize
    arrays, skipped = image_folder.decode_files(files, height, channels, resize,
                                                os.cpu_count() or 1, progress)
    return arrays, dict(skipped)
  arrays, errors = [], {}
  for path in files:
    try:
      arrays.append(images.resize_image(images.read_image(path, channels), (height, width)))
    except (images.UnreadableImage, OSError) as e:
      arrays.append(None)
      errors[path] = str(e)
  return arrays, errors


def file_normalizer(trained: TrainedModel) -> data.Normalizer:
  """The normalisation of 8-bit pixels from image files for `trained`.

  The statistics are of pixels scaled to [0, 1], so only the scale changes, not the statistics:
  digits' raw 0–16 and a PNG's 0–255 both map to [0, 1].
  """
  return dataclasses.replace(trained.normalizer, max_value=FILE_PIXEL_MAX)


# A training set whose mean pixel is below DARK (MNIST 13%, Fashion-MNIST 29%, digits 30%) shows
# light strokes on a dark background; above 1 − DARK, the reverse. Photos (about 45%) have no
# single polarity, and their predictions are never flagged.
DARK = 0.35


def training_background(trained: TrainedModel) -> str | None:
  """'dark' or 'light': the background of the images `trained` learned from (from its dataset
  record, as a mean pixel scaled to [0, 1]); None for photos, which have no single one."""
  mean = float(np.mean(trained.normalizer.mean))
  return 'dark' if mean < DARK else 'light' if mean > 1 - DARK else None


def image_background(image: np.ndarray) -> str:
  """'dark' or 'light': the background of one 8-bit image, by which way its mean leans (single
  digits range over 18–40% light on dark, 60–82% inverted)."""
  return 'light' if image.mean() > FILE_PIXEL_MAX / 2 else 'dark'


@dataclasses.dataclass
class Prediction:
  """The result for one image: top-k (class, probability) pairs, or the reason it failed.

  `reversed_polarity` marks an image whose background is the opposite of the training images'
  (dark ink on white paper for a model of white-on-black digits): the model has never seen such
  an image, and its answer, however confident, is unreliable.
  """
  file: str  # The path, or 'image N' for an image given in memory.
  top_k: list[tuple[str, float]] = dataclasses.field(default_factory=list)
  probabilities: np.ndarray | None = None  # [K], in class order.
  error: str | None = None
  reversed_polarity: bool = False

  @property
  def label(self) -> str | None:
    """The predicted class (None for an image that could not be read)."""
    return self.top_k[0][0] if self.top_k else None

  @property
  def probability(self) -> float | None:
    """The predicted class's probability."""
    return self.top_k[0][1] if self.top_k else None


def predict_files(trained: 'TrainedModel | ExportedModel', files: list[str], top_k: int = 3,
                  batch_size: int = 64, progress: bool = False,
                  invert: bool = False) -> list[Prediction]:
  """Predicts every readable file of `files` with `trained` (a restored model, or an exported
  one: `load_predictor`), in fixed-size batches; unreadable ones carry an error. With `invert`, each image is inverted first (255 − pixel), for
  dark-on-light images and a model trained on light-on-dark ones. With `progress`, tqdm bars show
  on a terminal."""
  arrays, errors = decode_files(trained, files, progress)
  results = [Prediction(path, error=errors.get(path)) for path in files]
  return _predict(trained, results, arrays, top_k, batch_size, progress, invert)


def prepare_image(trained: TrainedModel, image) -> np.ndarray:
  """An image in memory (a PIL image, or an array of 8-bit or [0, 1] pixels, see
  `images.from_memory`) as `trained` takes it: uint8 [H, W, C], converted and resized as its
  image files are.

  Raises:
    images.UnreadableImage: an array of a shape or range that is not an image.
  """
  height, width, channels = trained.info.image_shape
  array = images.from_memory(image, channels)
  if trained.config.data.resize == 'crop' and height == width:
    array = images.crop_center_square(array)
  return images.resize_image(array, (height, width))


def predict_images(trained: TrainedModel, items: list, top_k: int = 3, batch_size: int = 64,
                   invert: bool = False) -> list[Prediction]:
  """`predict_files` for a list mixing paths and images in memory (see `prepare_image`)."""
  is_path = [isinstance(item, (str, os.PathLike)) for item in items]
  paths = [os.fspath(item) for item, path in zip(items, is_path) if path]
  decoded, errors = decode_files(trained, paths)  # Together: the files decode in threads.
  decoded = iter(decoded)
  results, arrays = [], []
  for i, (item, path) in enumerate(zip(items, is_path)):
    if path:
      array, error = next(decoded), errors.get(os.fspath(item))
    else:
      try:
        array, error = prepare_image(trained, item), None
      except images.UnreadableImage as e:
        array, error = None, str(e)
    results.append(Prediction(os.fspath(item) if path else f'image {i}', error=error))
    arrays.append(array)
  return _predict(trained, results, arrays, top_k, batch_size, False, invert)


def _probabilities(model: 'TrainedModel | ExportedModel', pixels: np.ndarray, batch_size: int,
                   progress: bool) -> np.ndarray:
  """Class probabilities [N, K] of 8-bit images at the model's input size."""
  if isinstance(model, ExportedModel):  # Normalisation and softmax are inside the program.
    return np.concatenate([model(pixels[i:i + batch_size])
                           for i in range(0, len(pixels), batch_size)])
  split = data.Split(pixels, np.zeros(len(pixels), np.int32))
  return softmax(batched_logits(model, data.eval_batches(split, file_normalizer(model),
                                                         batch_size),
                                -(-len(pixels) // batch_size), progress))


def _predict(trained: 'TrainedModel | ExportedModel', results: list[Prediction], arrays: list,
             top_k: int, batch_size: int, progress: bool, invert: bool) -> list[Prediction]:
  """Fills in `results` for the images of `arrays` (uint8 [H, W, C] each at the model's size, or
  None where one could not be read)."""
  readable = [r for r, array in zip(results, arrays) if array is not None]
  if readable:
    facts = _facts(trained)
    pixels = np.stack([array for array in arrays if array is not None])
    if invert:
      pixels = np.uint8(FILE_PIXEL_MAX) - pixels
    for result, image in zip(readable, pixels):
      result.reversed_polarity = (facts.background is not None
                                  and image_background(image) != facts.background)
    names = facts.class_names
    for result, probs in zip(readable, _probabilities(trained, pixels, batch_size, progress)):
      order = np.argsort(-probs, kind='stable')[:top_k]
      result.top_k = [(names[k], float(probs[k])) for k in order]
      result.probabilities = probs
  return results
