"""A cnn_jax model exported as StableHLO or ONNX, run without cnn_jax or Flax.

`cnn-jax export --workdir W [--format onnx]` writes this file beside the model, so the export
directory is all a program needs: NumPy, and JAX for StableHLO (`pip install jax`) or onnxruntime
for ONNX (`pip install onnxruntime`; JAX is then never imported):

    import sys; sys.path.insert(0, 'runs/digits/export')
    import exported_model
    model = exported_model.load('runs/digits/export')
    probabilities = model(pixels)            # [N, H, W, C] → float32 [N, classes]
    labels = [model.class_names[k] for k in probabilities.argmax(-1)]

The model takes images already at its input size, as `cnn_jax.load(...).predict` takes arrays:
8-bit pixels (integers 0–255), or floats in [0, 1] (floats above 1 are taken as 0–255). The input
normalisation and the softmax are inside it, so its output is cnn_jax's predicted probabilities.
"""

import json
import os

import numpy as np

MODEL_FILES = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}  # By model.json's format.
RECORD_FILE = 'model.json'
ONNX_INPUT, ONNX_OUTPUT = 'pixels', 'probabilities'  # The ONNX graph's input and output names.


def _stablehlo_runner(path: str):
  import jax  # pylint: disable=g-import-not-at-top  # Only for this format.
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda pixels: np.asarray(exported.call(pixels))


def _onnx_runner(path: str):
  import onnxruntime  # pylint: disable=g-import-not-at-top  # Only for this format.
  session = onnxruntime.InferenceSession(path, providers=onnxruntime.get_available_providers())
  return lambda pixels: session.run([ONNX_OUTPUT], {ONNX_INPUT: pixels})[0]


def _as_8_bit(pixels: np.ndarray) -> np.ndarray:
  """`pixels` as uint8 by the rule cnn_jax's own predict applies to arrays (data.images): floats
  in [0, 1] scaled to 0–255 and rounded, floats above 1 taken as 0–255; integers kept if 0–255."""
  if np.issubdtype(pixels.dtype, np.floating):
    if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0):
      raise ValueError('float pixels must be finite and in [0, 1] (or 0–255)')
    full_scale = 1.0 if pixels.max(initial=0.0) <= 1.0 else 255.0
    return np.clip(np.round(pixels * (255.0 / full_scale)), 0, 255).astype(np.uint8)
  if pixels.dtype == np.bool_ or not np.issubdtype(pixels.dtype, np.integer):
    raise ValueError(f'pixels of dtype {pixels.dtype}: give 8-bit integers (0–255) or floats in '
                     '[0, 1]')
  if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
    raise ValueError('integer pixels must be 8-bit values, 0–255')
  return pixels.astype(np.uint8)


class ExportedModel:
  """The exported model of one directory: call it on a batch of 8-bit images."""

  def __init__(self, directory: str):
    with open(os.path.join(directory, RECORD_FILE), encoding='utf-8') as f:
      self.record = json.load(f)
    self.class_names = tuple(self.record['class_names'])
    self.image_shape = tuple(self.record['image_shape'])
    self.batch = self.record['batch']  # None: any batch size.
    self.format = self.record.get('format', 'stablehlo')
    runner = {'stablehlo': _stablehlo_runner, 'onnx': _onnx_runner}[self.format]
    self._run = runner(os.path.join(directory, MODEL_FILES[self.format]))

  def __call__(self, pixels) -> np.ndarray:
    """Class probabilities [N, len(class_names)] of images [N, H, W, C] (or one [H, W, C]):
    integers 0–255, or floats in [0, 1] (taken as 0–255 if any is above 1).

    Raises:
      ValueError: images of another shape than the model's input, integers outside 0–255,
        negative floats, or another kind of values (booleans, text, ...).
    """
    pixels = _as_8_bit(np.asarray(pixels))
    if pixels.shape == self.image_shape:
      pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[1:] != self.image_shape:
      raise ValueError(f'images of shape {pixels.shape}; this model takes [N, '
                       f'{", ".join(map(str, self.image_shape))}] (resize them first)')
    if self.batch is None:
      return self._run(pixels)
    outputs = []
    for start in range(0, len(pixels), self.batch):  # Fixed batches, the last one padded.
      chunk = pixels[start:start + self.batch]
      padded = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *self.image_shape),
                                                np.uint8)])
      outputs.append(self._run(padded)[:len(chunk)])
    return np.concatenate(outputs) if outputs else np.zeros((0, len(self.class_names)),
                                                            np.float32)


def load(directory: str) -> ExportedModel:
  """The exported model in `directory` (model.json, and model.stablehlo or model.onnx)."""
  return ExportedModel(directory)
