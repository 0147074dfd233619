"""Tests for cnn_jax.models.summary: shapes from the article cases, params, FLOPs and the table."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cnn_jax import speed
from cnn_jax.configs import default
from cnn_jax.models import conv_output_size, create_model
from cnn_jax.models.summary import (LayerRow, count_params, format_summary, param_arithmetic,
                                    size_arithmetic, summarize)
from conftest import REPO


def rows_by_name(rows):
  return {r.name: r for r in rows}


def test_single_conv_article_case():
  # 32×32×3 through 10 filters 5×5, VALID, stride 1: (32 − 5)/1 + 1 = 28 ─► 28×28×10.
  rows = rows_by_name(summarize(create_model('single_conv', 2), (32, 32, 3)))
  assert rows['input'].output_shape == (32, 32, 3)
  conv = rows['conv_0']
  assert conv.kind == 'Conv' and conv.output_shape == (28, 28, 10)
  assert conv.params == 10 * (5 * 5 * 3 + 1)
  assert conv.flops == 2 * 28 * 28 * 10 * 5 * 5 * 3
  assert rows['pool_0'].output_shape == (14, 14, 10)
  assert rows['pool_0'].flops == 4 * 14 * 14 * 10


def test_valid_3x3_on_6x6():
  # (W − F)/S + 1 = (6 − 3)/1 + 1 = 4.
  model = create_model('convnet', 2, features=(1,), kernel_size=3, padding='VALID', pool='none')
  rows = rows_by_name(summarize(model, (6, 6, 1)))
  assert rows['conv_0'].output_shape == (4, 4, 1)
  assert 'pool_0' not in rows


def test_same_stride_2():
  # SAME with S = 2 gives ceil(W / S) = 4 outputs for W = 7; that needs total padding
  # (4 − 1)·2 + 3 − 7 = 2, i.e. P = 1 per side, and then (W − F + 2P)/S + 1 = (7 − 3 + 2)/2 + 1 = 4.
  model = create_model('convnet', 2, features=(5,), kernel_size=3, strides=2, padding='SAME',
                       pool='none')
  rows = rows_by_name(summarize(model, (7, 7, 3)))
  w, f, p, s = 7, 3, 1, 2
  assert rows['conv_0'].output_shape == ((w - f + 2 * p) // s + 1,) * 2 + (5,)


@pytest.mark.parametrize('platform', ['cpu', 'gpu'])
def test_rows_are_in_call_order_and_name_the_textbook_layers(platform):
  # On a CPU the speed layer's batch norm, pooling and conv stand in: the rows are the same.
  layer_set = speed.resolve(default.get_config().speed, platform).layer_set
  model = create_model('lenet5', 10, batch_norm=True, conv_dropout=0.1, layer_set=layer_set)
  names = [r.name for r in summarize(model, (28, 28, 1))]
  assert names[:6] == ['input', 'conv_0', 'bn_0', 'pool_0', 'conv_dropout_0', 'conv_1']
  assert names[-1] == 'head'
  kinds = [r.kind for r in summarize(model, (28, 28, 1))]
  assert kinds[:6] == ['Input', 'Conv', 'BatchNorm', 'Pool', 'Dropout', 'Conv']


@pytest.mark.parametrize('name, kwargs, shape', [
  ('keras_mnist', {}, (28, 28, 1)),
  ('lenet5', dict(batch_norm=True, dense_dropout=0.2), (28, 28, 1)),
  ('resnet_small', {}, (32, 32, 3)),
  ('resnet18', {}, (224, 224, 3)),  # eval_shape only: free even at 224 px
])
def test_total_params_equal_count_params(name, kwargs, shape):
  model = create_model(name, 10, **kwargs)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
  rows = summarize(model, shape, variables)
  assert sum(r.params for r in rows) == count_params(variables['params'])


def test_resnet18_flops_match_the_published_figure():
  # torchvision lists ResNet-18 at 1.81 GMACs per 224 px image, i.e. ~3.6 GFLOPs.
  rows = summarize(create_model('resnet18', 1000), (224, 224, 3))
  assert 3.5e9 < sum(r.flops for r in rows) < 3.7e9


def test_flops_close_to_xla_cost_analysis():
  model = create_model('keras_mnist', 10)
  x = jnp.zeros((1, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  ours = sum(r.flops for r in summarize(model, (28, 28, 1), variables))
  cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
    cost = cost[0]
  xla = cost['flops']
  # XLA also counts activations and bias adds (~1% here), which the summary leaves out.
  assert abs(ours - xla) / xla < 0.15, (ours, xla)


def test_given_variables_give_the_same_rows():
  model = create_model('tiny', 3)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  assert summarize(model, (8, 8, 1), variables) == summarize(model, (8, 8, 1))


def test_format_summary():
  text = format_summary(summarize(create_model('keras_mnist', 10), (28, 28, 1)))
  assert 'Output shape' in text and 'FLOPs/image' in text
  assert '26x26x32' in text and '4,460,544' in text
  assert 'Total params: 34,826' in text
  assert 'Total FLOPs/image: 4.91 MFLOPs' in text
  lines = text.splitlines()
  assert len({len(line) for line in lines[:2]}) == 1  # header as wide as the rule


def test_format_summary_small_numbers():
  rows = [LayerRow('input', 'Input', (2, 2, 1), 0, 0), LayerRow('d', 'Dense', (3,), 15, 24)]
  assert 'Total FLOPs/image: 24 FLOPs' in format_summary(rows)


@pytest.mark.parametrize('size,kernel,stride,padding,expected', [
    (32, 5, 1, 'VALID', 28),  # 32×32×3 through 10 filters of 5×5 → 28×28×10
    (6, 3, 1, 'VALID', 4),  # the 6×6 image through a 3×3 weight matrix → 4×4
    (7, 3, 2, 'VALID', 3),  # (7 − 3 + 0)/2 + 1
    (7, 3, 2, 'SAME', 4),  # P = 1: (7 − 3 + 2)/2 + 1
    (4, 2, 2, 'VALID', 2),  # 2×2 max pooling with stride 2 halves 4×4 to 2×2
])
def test_output_size_formula_matches_the_layers(size, kernel, stride, padding, expected):
  assert conv_output_size(size, kernel, stride, padding) == expected
  model = create_model('convnet', 2, features=(3,), kernel_size=kernel, strides=stride,
                       padding=padding, pool='none')
  conv = {r.name: r for r in summarize(model, (size, size, 1))}['conv_0']
  assert conv.output_shape == (expected, expected, 3)


def _explained(shape, **kwargs):
  model = create_model('convnet', 2, dense=(), **kwargs)
  return {r.name: r for r in summarize(model, shape)}


@pytest.mark.parametrize('shape, kwargs, layer, size, params', [
    # The article's cases: a 6×6 image through a 3×3 filter, VALID → 4×4.
    ((6, 6, 1), dict(features=(1,), kernel_size=3, padding='VALID', pool='none'), 'conv_0',
     '(6 − 3 + 2·0)/1 + 1 = 4', '3·3·1·1 + 1 = 10'),
    # 32×32×3 through ten 5×5 filters, VALID → 28×28×10, with 760 parameters.
    ((32, 32, 3), dict(features=(10,), kernel_size=5, padding='VALID', pool='none'), 'conv_0',
     '(32 − 5 + 2·0)/1 + 1 = 28', '5·5·3·10 + 10 = 760'),
    # … and through 3×3 filters → 30×30×10.
    ((32, 32, 3), dict(features=(10,), kernel_size=3, padding='VALID', pool='none'), 'conv_0',
     '(32 − 3 + 2·0)/1 + 1 = 30', '3·3·3·10 + 10 = 280'),
    # SAME padding keeps the size: P = 2 for a 5×5 filter.
    ((32, 32, 3), dict(features=(10,), kernel_size=5, padding='SAME', pool='none'), 'conv_0',
     '(32 − 5 + 2·2)/1 + 1 = 32', '5·5·3·10 + 10 = 760'),
    # Stride 2 halves it (SAME pads one zero in all, after: P = 0.5).
    ((32, 32, 3), dict(features=(10,), kernel_size=3, strides=2, padding='SAME', pool='none'),
     'conv_0', '(32 − 3 + 2·0.5)/2 + 1 = 16', '3·3·3·10 + 10 = 280'),
    # 2×2 max pooling with stride 2: 4×4 → 2×2, no parameters.
    ((4, 4, 1), dict(features=(1,), kernel_size=1, pool='max'), 'pool_0',
     '(4 − 2 + 2·0)/2 + 1 = 2', ''),
    # A division that is not exact is rounded down: (7 − 3)/2 + 1 = 3.
    ((8, 8, 1), dict(features=(2,), kernel_size=3, strides=2, padding='VALID', pool='none'),
     'conv_0', '⌊(8 − 3 + 2·0)/2⌋ + 1 = 3', '3·3·1·2 + 2 = 20'),
])
def test_the_arithmetic_is_worked_out_as_the_article_writes_it(shape, kwargs, layer, size,
                                                               params):
  row = _explained(shape, **kwargs)[layer]
  assert size_arithmetic(row) == size and param_arithmetic(row) == params
  assert row.output_shape[0] == int(size.rsplit('= ', 1)[1])


def test_the_command_shows_a_model_without_data_or_training(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax.summary', '--config', 'configs/keras_seed.py',
       '--image_size=300', '--channels=3', '--num_classes=2', '--json'], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  conv = report['layers'][1]
  # The introductory Keras article's network: 438,842 parameters for 300×300×3 and 2 classes.
  assert conv['output_size'] == '(300 − 5 + 2·0)/1 + 1 = 296'
  assert conv['params_worked_out'] == '5·5·3·10 + 10 = 760'
  assert report['total_params'] == 438_842
  assert report['mlp_params'] == 300 * 300 * 3 * 2 + 2  # Straight from the pixels to 2 outputs.
  text = subprocess.run([sys.executable, '-m', 'cnn_jax.summary', '--config', 'configs/digits.py'],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
  assert 'Total params: 53,002' in text and '(8 − 3 + 2·1)/1 + 1 = 8' in text
  assert 'A fully connected network with the same inputs' in text
