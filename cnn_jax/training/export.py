"""A trained model as a StableHLO program that runs without cnn_jax (`cnn-jax export`).

`jax.export` serialises the whole prediction, 8-bit pixels in and probabilities out: the input
normalisation of the run, the model with its weights and batch statistics, and the softmax.
Beside it go model.json (the class names, the input shape, where it came from) and
exported_model.py, the loader that needs only JAX and NumPy (`cnn_jax.runtime.exported_model`).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
from jax import export

from cnn_jax.errors import UserError
from cnn_jax.runtime import exported_model
from cnn_jax.training.inference import TrainedModel, file_normalizer, training_background
from cnn_jax.training.workdir import library_versions


PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # What jax.export lowers for, from any machine.


def probabilities_fn(trained: TrainedModel):
  """The jitted prediction: uint8 images [N, H, W, C] (0–255) → float32 probabilities [N, K]."""
  normalizer = file_normalizer(trained)  # The same arithmetic as evaluation, traced into it.

  def probabilities(pixels):
    logits = trained.model.apply(trained.variables, normalizer(pixels), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return jax.jit(probabilities)


def export_stablehlo(trained: TrainedModel, directory: str, batch: int | None = None,
                     platforms: tuple[str, ...] | None = None) -> list[str]:
  """Writes the model to `directory` and returns the paths written.

  Args:
    trained: the restored model (`inference.load_trained`).
    directory: where model.stablehlo, model.json and exported_model.py go.
    batch: a fixed batch size, or None for any (a symbolic batch dimension).
    platforms: what the program is lowered for ('cpu', 'cuda', 'rocm', 'tpu'); None: this
      machine's.

  Raises:
    UserError: the directory cannot be written, or a platform cannot be lowered for.
  """
  unknown = [p for p in platforms or () if p not in PLATFORMS]
  if unknown:
    raise UserError(f'unknown platform(s) {", ".join(unknown)}; choose from '
                    f'{", ".join(PLATFORMS)} (NVIDIA GPUs are cuda)')
  height, width, channels = trained.info.image_shape
  size = export.symbolic_shape('batch')[0] if batch is None else batch
  spec = jax.ShapeDtypeStruct((size, height, width, channels), jnp.uint8)
  try:
    exported = export.export(probabilities_fn(trained), platforms=platforms)(spec)
  except (ValueError, NotImplementedError, RuntimeError) as e:
    raise UserError(f'cannot export for platforms {platforms}: {e}') from None
  try:
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in
             (exported_model.MODEL_FILE, exported_model.RECORD_FILE, 'exported_model.py')]
    with open(paths[0], 'wb') as f:
      f.write(exported.serialize())
    record = {'format': 'stablehlo', 'class_names': list(trained.info.class_names),
              'image_shape': [height, width, channels], 'batch': batch,
              'input': 'uint8 pixels 0-255, [N, H, W, C], already at image_shape',
              'output': 'float32 class probabilities, [N, len(class_names)]',
              'platforms': list(exported.platforms), 'workdir': os.path.abspath(trained.workdir),
              'checkpoint_step': trained.step, 'versions': library_versions(),
              # How cnn_jax.predict feeds it image files: their resizing, and the background
              # of the training images (to flag images of the opposite polarity).
              'resize': trained.config.data.get('resize', 'squash'),
              'background': training_background(trained)}
    with open(paths[1], 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=2)
      f.write('\n')
    shutil.copyfile(exported_model.__file__, paths[2])
  except OSError as e:
    raise UserError(f'cannot write the export to {directory!r}: {e.strerror}') from None
  return paths
