"""Exported models: the same probabilities as cnn_jax's own prediction, as StableHLO run with JAX
alone and as ONNX run in onnxruntime."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jax.numpy as jnp

from cnn_jax import data
from cnn_jax.errors import UserError
from cnn_jax.serving import export, exported_model, inference, jaxpr_to_onnx
from cnn_jax.training import train
from conftest import REPO, load_config
from test_real_data import FASHION_MNIST, needs_fashion_mnist

FORMATS = ('stablehlo', 'onnx')


def _test_pixels():
  """The 360 test digits as 8-bit images, as image files hold them."""
  split = data.load_split(data.DataSpec('digits'), 'test')
  return np.round(split.images.astype(np.float32) * 255 / 16).astype(np.uint8)


def _trained(tmp_path, name, **model):
  config = load_config('digits')
  config.num_steps, config.progress_bar = 44, False
  config.model.update(model)
  workdir = str(tmp_path / name)
  train.train_and_evaluate(config, workdir)
  return inference.load_trained(workdir)


def _matches_cnn_jax(trained, pixels, directory, model_format, batch=None):
  """Exports `trained` and checks the export's probabilities against cnn_jax's own to 1e-5."""
  ours = np.stack([p.probabilities for p in inference.predict_images(trained, list(pixels))])
  export.export_model(trained, directory, model_format, batch)
  exported = exported_model.load(directory)
  assert exported.format == model_format and exported.class_names == trained.info.class_names
  np.testing.assert_allclose(exported(pixels), ours, atol=1e-5)


@pytest.mark.parametrize('model_format', FORMATS)
@pytest.mark.parametrize('name, model', [
    ('convnet', {}),
    ('batch_norm', {'batch_norm': True}),  # Running statistics baked in.
    ('overlapping_pools', {'pool': 'l2', 'pool_window': 3, 'pool_stride': 1,
                           'activation': 'gelu'}),
])
def test_the_exported_model_gives_cnn_jax_s_probabilities(tmp_path, name, model, model_format):
  trained = _trained(tmp_path, name, **model)
  pixels = _test_pixels()
  _matches_cnn_jax(trained, pixels, str(tmp_path / 'export'), model_format)
  _matches_cnn_jax(trained, pixels[:45], str(tmp_path / 'fixed'), model_format, batch=32)


@pytest.mark.parametrize('model_format', FORMATS)
def test_a_resnet_exports_too(tmp_path, model_format):
  config = load_config('digits')
  config.num_steps, config.progress_bar = 10, False
  config.model = type(config.model)({'name': 'resnet_small', 'stage_sizes': (1, 1),
                                     'num_filters': 8})
  workdir = str(tmp_path / 'resnet')
  train.train_and_evaluate(config, workdir)
  _matches_cnn_jax(inference.load_trained(workdir), _test_pixels(), str(tmp_path / 'export'),
                   model_format)


@needs_fashion_mnist
def test_the_fashion_mnist_model_exports_on_its_whole_test_split(tmp_path):
  """The batch-norm model of the Fashion-MNIST config, briefly trained on the real files."""
  config = load_config('fashion_mnist')
  config.num_steps, config.progress_bar, config.eval_every_steps = 40, False, 40
  config.data.train_split = 'train[:5000]'
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  trained = inference.load_trained(str(tmp_path / 'run'))
  pixels = data.load_split(data.DataSpec('idx', path=FASHION_MNIST), 'test').images
  assert pixels.shape == (10_000, 28, 28, 1) and pixels.dtype == np.uint8
  for model_format in FORMATS:
    _matches_cnn_jax(trained, pixels, str(tmp_path / model_format), model_format)


def test_what_onnx_cannot_hold_is_refused_by_name(tmp_path):
  spec = jnp.zeros((2, 3), jnp.float32)
  with pytest.raises(UserError, match="the JAX primitive 'cumsum'"):
    jaxpr_to_onnx.to_onnx(lambda x: jnp.cumsum(x, axis=1), spec, 'x', 'y')
  with pytest.raises(UserError, match='float16.*config.dtype=float32'):
    jaxpr_to_onnx.to_onnx(lambda x: x.astype(jnp.float16) * 2, spec, 'x', 'y')


def test_an_onnx_model_that_disagrees_with_jax_is_not_written(tmp_path, monkeypatch):
  trained = _trained(tmp_path, 'run')
  monkeypatch.setattr(export, 'CHECK_TOLERANCE', -1.0)  # Any difference, even 0, is too much.
  with pytest.raises(RuntimeError, match="ONNX model's probabilities differ"):
    export.export_model(trained, str(tmp_path / 'out'), 'onnx')
  assert not os.path.exists(tmp_path / 'out')


def test_the_command_writes_directories_that_run_without_cnn_jax(tmp_path):
  trained = _trained(tmp_path, 'run')
  np.save(tmp_path / 'pixels.npy', _test_pixels()[:20])
  ours = np.stack([p.probabilities for p in
                   inference.predict_images(trained, list(_test_pixels()[:20]))])
  # The loader alone, in a fresh process: what it imported besides NumPy's own.
  script = ('import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, exported_model; '
            'p = exported_model.load(sys.argv[1])(np.load(sys.argv[2])); np.save(sys.argv[3], p); '
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'cnn_jax', 'flax', 'jax', 'onnxruntime'}))")
  for model_format, platforms, imported in (('stablehlo', ['--platforms', 'cpu,cuda,tpu'], 'jax'),
                                            ('onnx', [], 'onnxruntime')):
    out = tmp_path / model_format
    result = subprocess.run([sys.executable, '-m', 'cnn_jax.export', '--workdir', trained.workdir,
                             '--out', str(out), '--format', model_format, *platforms], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == sorted(['exported_model.py', 'model.json',
                                              exported_model.MODEL_FILES[model_format]])
    run = subprocess.run([sys.executable, '-c', script, str(out), str(tmp_path / 'pixels.npy'),
                          str(tmp_path / 'p.npy')], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == repr([imported])  # Neither cnn_jax nor Flax; ONNX: no JAX.
    np.testing.assert_allclose(np.load(tmp_path / 'p.npy'), ours, atol=1e-5)
  files = []
  for i, image in enumerate(_test_pixels()[:6]):
    files.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(image[..., 0]).save(files[-1])
  printed = {}
  for source in (trained.workdir, *(str(tmp_path / f) for f in FORMATS)):  # The run, its exports.
    predicted = subprocess.run([sys.executable, '-m', 'cnn_jax.predict', '--workdir', source,
                                '--json', '--top_k=10', *files], cwd=REPO, capture_output=True,
                               text=True, timeout=300, check=True)
    printed[source] = [json.loads(line) for line in predicted.stdout.splitlines()]
  run, *exports = printed.values()
  for exported in exports:
    assert [r['prediction'] for r in run] == [r['prediction'] for r in exported]
    np.testing.assert_allclose([[c['probability'] for c in r['top_k']] for r in run],
                               [[c['probability'] for c in r['top_k']] for r in exported],
                               atol=1e-5)
  for flags, message in ((['--platforms', 'gpu'], 'NVIDIA GPUs are cuda'),
                         (['--format', 'onnx', '--platforms', 'cpu'], '--platforms is for')):
    bad = subprocess.run([sys.executable, '-m', 'cnn_jax.export', '--workdir', trained.workdir,
                          *flags], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False)
    assert bad.returncode == 2 and message in bad.stderr


def test_the_exported_model_takes_what_cnn_jax_s_predict_takes_and_refuses_the_rest(tmp_path):
  """uint8 0–255 and floats in [0, 1] give the same probabilities as cnn_jax's own predict on
  those floats; other dtypes are refused by name, never cast."""
  trained = _trained(tmp_path, 'convnet')
  pixels = _test_pixels()[:40]
  floats = pixels.astype(np.float32) / 255.0  # What README's Python section calls pixels.
  directory = str(tmp_path / 'export')
  export.export_model(trained, directory, 'stablehlo')
  exported = exported_model.load(directory)
  ours = np.stack([p.probabilities for p in inference.predict_images(trained, list(floats))])
  np.testing.assert_allclose(exported(floats), ours, atol=1e-5)
  np.testing.assert_allclose(exported(floats), exported(pixels), atol=1e-6)
  np.testing.assert_allclose(exported(pixels.astype(np.int64)), exported(pixels), atol=1e-6)
  for bad, message in ((pixels > 100, 'dtype bool'), (pixels.astype(np.int32) + 300, '0–255'),
                       (floats - 0.5, 'float pixels'), (pixels.astype(str), 'dtype <U')):
    with pytest.raises(ValueError, match=message):
      exported(bad)
