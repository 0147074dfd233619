"""A trained model as a program that runs without cnn_jax (`cnn-jax export`).

The whole prediction goes out, 8-bit pixels in and probabilities out: the input normalisation of
the run, the model with its weights and batch statistics, and the softmax. As StableHLO,
`jax.export` serialises it; as ONNX, `jaxpr_to_onnx` translates it and onnxruntime checks the
result against JAX's. Beside it go model.json (the format, the class names, the input shape,
where it came from) and exported_model.py, the loader that needs only NumPy and JAX or
onnxruntime (`cnn_jax.serving.exported_model`).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from cnn_jax.errors import UserError
from cnn_jax.serving import exported_model, jaxpr_to_onnx
from cnn_jax.serving.inference import (TrainedModel, file_normalizer, trained_logits,
                                       training_background)
from cnn_jax.training.workdir import library_versions


PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # What jax.export lowers for, from any machine.
# How far onnxruntime's probabilities may be from JAX's before an ONNX export is refused. Its
# operators round in another order than XLA's: 4e-7 at most on the models the tests export.
CHECK_TOLERANCE = 1e-5


def probabilities_fn(trained: TrainedModel):
  """The jitted prediction: uint8 images [N, H, W, C] (0–255) → float32 probabilities [N, K]."""
  normalizer = file_normalizer(trained)  # The same arithmetic as evaluation, traced into it.

  def probabilities(pixels):
    logits = trained_logits(trained, trained.variables, normalizer(pixels))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return jax.jit(probabilities)


FORMATS = ('stablehlo', 'onnx')


def _lowered(trained: TrainedModel, batch: int | None, platforms: tuple[str, ...] | None):
  """The prediction as a jax.export.Exported, for a fixed batch or any (batch None)."""
  unknown = [p for p in platforms or () if p not in PLATFORMS]
  if unknown:
    raise UserError(f'unknown platform(s) {", ".join(unknown)}; choose from '
                    f'{", ".join(PLATFORMS)} (NVIDIA GPUs are cuda)')
  try:
    lower = export.export(probabilities_fn(trained), platforms=platforms)
    return lower(_input_spec(trained, batch))
  except (ValueError, NotImplementedError, RuntimeError) as e:
    raise UserError(f'cannot export for platforms {platforms}: {e}') from None


def _input_spec(trained: TrainedModel, batch: int | None) -> jax.ShapeDtypeStruct:
  size = export.symbolic_shape(jaxpr_to_onnx.BATCH)[0] if batch is None else batch
  return jax.ShapeDtypeStruct((size, *trained.info.image_shape), jnp.uint8)


def _onnx_bytes(trained: TrainedModel, batch: int | None) -> bytes:
  """The prediction as an ONNX model, checked in onnxruntime against JAX's own output."""
  predict = probabilities_fn(trained)  # Traced for the graph, then run for the check.
  model = jaxpr_to_onnx.to_onnx(
      predict, _input_spec(trained, batch), exported_model.ONNX_INPUT,
      exported_model.ONNX_OUTPUT, doc=f'cnn_jax model: step {trained.step} of {trained.workdir}')
  serialized = model.SerializeToString()
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("exporting to ONNX needs onnxruntime, which checks the export: "
                    "pip install 'cnn_jax[onnx]'") from None
  session = onnxruntime.InferenceSession(serialized, providers=['CPUExecutionProvider'])
  pixels = np.random.default_rng(0).integers(0, 256, (batch or 5, *trained.info.image_shape),
                                             dtype=np.uint8)
  theirs = session.run(None, {exported_model.ONNX_INPUT: pixels})[0]
  ours = np.asarray(predict(pixels))
  difference = float(np.max(np.abs(theirs - ours)))
  if not difference <= CHECK_TOLERANCE:
    raise RuntimeError(f'the ONNX model\'s probabilities differ from cnn_jax\'s by {difference:.2g}'
                       f' (more than {CHECK_TOLERANCE}) on random images: nothing was written. '
                       'Export --format stablehlo instead, and please report this.')
  return serialized


def export_model(trained: TrainedModel, directory: str, model_format: str = 'stablehlo',
                 batch: int | None = None,
                 platforms: tuple[str, ...] | None = None) -> list[str]:
  """Writes the model to `directory` and returns the paths written.

  Args:
    trained: the restored model (`inference.load_trained`).
    directory: where the model file, model.json and exported_model.py go.
    model_format: 'stablehlo' (model.stablehlo, run by JAX) or 'onnx' (model.onnx, run by
      onnxruntime or any ONNX runtime).
    batch: a fixed batch size, or None for any (a symbolic batch dimension).
    platforms: StableHLO only: what the program is lowered for ('cpu', 'cuda', 'rocm', 'tpu');
      None: this machine's.

  Raises:
    UserError: an unknown format or platform, a model the format cannot hold, or a directory
      that cannot be written.
  """
  if model_format not in FORMATS:
    raise UserError(f'unknown export format {model_format!r}; choose from {", ".join(FORMATS)}')
  if model_format == 'onnx':
    if platforms:
      raise UserError('--platforms is for StableHLO; an ONNX model runs wherever its runtime does')
    serialized, lowered_for = _onnx_bytes(trained, batch), ['any ONNX runtime']
  else:
    exported = _lowered(trained, batch, platforms)
    serialized, lowered_for = exported.serialize(), list(exported.platforms)
  height, width, channels = trained.info.image_shape
  try:
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in
             (exported_model.MODEL_FILES[model_format], exported_model.RECORD_FILE,
              'exported_model.py')]
    with open(paths[0], 'wb') as f:
      f.write(serialized)
    record = {'format': model_format, 'class_names': list(trained.info.class_names),
              'image_shape': [height, width, channels], 'batch': batch,
              'input': 'uint8 pixels 0-255, [N, H, W, C], already at image_shape',
              'output': 'float32 class probabilities, [N, len(class_names)]',
              'platforms': lowered_for, 'workdir': os.path.abspath(trained.workdir),
              'checkpoint_step': trained.step, 'versions': library_versions(),
              # How cnn_jax.predict feeds it image files: their resizing, and the background
              # of the training images (to flag images of the opposite polarity).
              'resize': trained.config.data.resize,
              'background': training_background(trained)}
    for stale in set(exported_model.MODEL_FILES.values()) - {os.path.basename(paths[0])}:
      if os.path.exists(os.path.join(directory, stale)):  # An earlier export in the other format.
        os.remove(os.path.join(directory, stale))
    with open(paths[1], 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=2)
      f.write('\n')
    shutil.copyfile(exported_model.__file__, paths[2])
  except OSError as e:
    raise UserError(f'cannot write the export to {directory!r}: {e.strerror}') from None
  return paths
