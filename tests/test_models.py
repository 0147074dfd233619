"""Tests for the model registry, the ConvNet and ResNet families, and the pooling layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.errors import UserError
from cnn_jax.models import MODELS, create_model, model_fields
from cnn_jax.models.layers import L2_POOL_EPS, Pool
from cnn_jax.models.summary import count_params

# Small input sizes keep every test fast on CPU; each model gets one it was designed for.
SHAPES = {
  'convnet': (28, 28, 1), 'keras_mnist': (28, 28, 1), 'single_conv': (32, 32, 3),
  'lenet5': (28, 28, 1), 'tiny': (8, 8, 1), 'resnet': (32, 32, 3), 'resnet18': (32, 32, 3),
  'resnet10': (32, 32, 3), 'resnet_small': (16, 16, 3),
}


def abstract_params(model, shape):
  """The model's variables as ShapeDtypeStructs; costs no compute even at 224 px."""
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))


def with_random_head(variables):
  """`variables` with a random classifier: at init it is zero, which hides what the body computes
  (zero logits, no gradient into the body)."""
  head = variables['params']['head']
  head['kernel'] = jax.random.normal(jax.random.key(3), head['kernel'].shape)
  return variables


def images(shape, batch=2, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, *shape))


def test_every_registered_model_has_a_test_shape():
  assert set(SHAPES) == set(MODELS)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_output_shape_and_dtype(name):
  model = create_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct((3, *SHAPES[name]), jnp.float32)
  variables = abstract_params(model, SHAPES[name])
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert out.shape == (3, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize('name', ['tiny', 'keras_mnist', 'lenet5', 'resnet_small'])
def test_forward_runs_and_is_finite(name):
  model = create_model(name, num_classes=5)
  x = images(SHAPES[name])
  # Jitted: one compile is much faster on CPU than eager dispatch of every op.
  variables = jax.jit(model.init)(jax.random.key(0), x)
  logits = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 5)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('name, shape, num_classes, expected', [
  ('keras_mnist', (28, 28, 1), 10, 34_826),
  ('lenet5', (28, 28, 1), 10, 61_706),
  # 10·(5·5·3+1) conv + 2·(148·148·10) + 2 dense: 300 ─conv5 VALID─► 296 ─pool─► 148.
  ('single_conv', (300, 300, 3), 2, 438_842),
  ('resnet18', (224, 224, 3), 1000, 11_689_512),  # torchvision's figure
])
def test_param_counts(name, shape, num_classes, expected):
  params = abstract_params(create_model(name, num_classes), shape)['params']
  assert count_params(params) == expected


def test_resnet_small_is_small():
  params = abstract_params(create_model('resnet_small', 200), (64, 64, 3))['params']
  assert count_params(params) < 500_000


def test_unknown_model_name():
  with pytest.raises(UserError, match=r"unknown model 'resnt18'.*resnet18.*keras_mnist"):
    create_model('resnt18', 10)
  with pytest.raises(UserError, match='choose one of'):
    model_fields('nope')


def test_unknown_kwarg_lists_accepted_ones():
  with pytest.raises(UserError, match=r"'featurs'.*did you mean 'features'.*kernel_size"):
    create_model('convnet', 10, featurs=(8,))
  with pytest.raises(UserError, match=r"did you mean 'initializer'"):
    create_model('keras_mnist', 10, init='he')


def test_model_fields():
  fields = model_fields('keras_mnist')
  assert 'features' in fields and 'dense_dropout' in fields and 'dtype' in fields
  assert not {'parent', 'name', 'num_classes'} & set(fields)
  assert model_fields('resnet18') == ('stage_sizes', 'num_filters', 'stem', 'initializer', 'dtype',
                                      'precision', 'layer_set')


def test_variant_fields_can_be_overridden_and_lists_become_tuples():
  model = create_model('keras_mnist', 10, features=[8, 16], dense_dropout=0.0)
  assert model.features == (8, 16)
  hash(model)  # hashable, so it can be a static argument of jax.jit


@pytest.mark.parametrize('field, value', [
  ('kernel_size', (3, 3, 3)), ('padding', ('SAME',)), ('pool', ('max', 'avg', 'none')),
])
def test_per_block_sequence_length_mismatch(field, value):
  with pytest.raises(UserError, match=field):
    create_model('convnet', 10, features=(8, 16), **{field: value})


@pytest.mark.parametrize('kwargs, message', [
  (dict(activation='rleu'), "did you mean 'relu'"),
  (dict(initializer='xavir'), 'choose one of'),
  (dict(pool='mean'), "unknown pool 'mean'"),
  (dict(padding='same'), "did you mean 'SAME'"),
  (dict(dense_dropout=1.5), r'\[0, 1\)'),
])
def test_bad_field_values_fail_at_construction(kwargs, message):
  with pytest.raises(UserError, match=message):
    create_model('convnet', 10, **kwargs)


def test_per_block_values():
  # Block 0: 5×5 VALID, no pool; block 1: 3×3 SAME stride 2, avg pool. 20 ─► 16 ─► 8 ─► 4.
  model = create_model('convnet', 3, features=(4, 8), kernel_size=(5, 3), strides=(1, 2),
                       padding=('VALID', 'SAME'), pool=('none', 'avg'))
  x = images((20, 20, 1))
  variables = model.init(jax.random.key(0), x)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  inter = state['intermediates']
  assert inter['conv_0']['__call__'][0].shape == (2, 16, 16, 4)
  assert 'pool_0' not in inter
  assert inter['pool_1']['__call__'][0].shape == (2, 4, 4, 8)


def test_l2_pool_known_values_and_finite_gradient_at_zero():
  # One 2×2 window holding 3, 4, 0, 0 ─► sqrt(9 + 16) = 5; an all-zero window ─► sqrt(eps).
  x = jnp.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
  out = Pool('l2', 2, 2).apply({}, x)
  np.testing.assert_allclose(out.ravel(), [5.0, np.sqrt(L2_POOL_EPS)], rtol=1e-6)
  grad = jax.grad(lambda x: Pool('l2', 2, 2).apply({}, x).sum())(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad.ravel()[:2], [3 / 5, 4 / 5], rtol=1e-5)


def test_overlapping_l2_pool_has_a_gradient_under_jit():
  """A training step differentiates inside jit: overlapping SAME l2 pooling must work there."""
  x = images((7, 7, 2))
  pool = lambda x: Pool('l2', 3, 1, 'SAME').apply({}, x)
  grad = jax.jit(jax.grad(lambda x: pool(x).sum()))(x)
  assert grad.shape == x.shape and np.all(np.isfinite(grad))
  sums = nn.avg_pool(jnp.square(x), (3, 3), (1, 1), 'SAME', count_include_pad=True) * 9
  np.testing.assert_allclose(pool(x), jnp.sqrt(sums + L2_POOL_EPS), rtol=1e-5)


@pytest.mark.parametrize('name', ['convnet', 'keras_mnist', 'lenet5', 'resnet_small'])
def test_every_class_starts_equally_likely(name):
  """The classifier starts at zero, whatever the body's initialiser: the first loss is ln(C)."""
  model = create_model(name, 10)
  x = images((28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  np.testing.assert_array_equal(logits, np.zeros_like(logits))
  body = [v for path, v in jax.tree_util.tree_leaves_with_path(variables['params'])
          if 'kernel' in jax.tree_util.keystr(path) and 'head' not in jax.tree_util.keystr(path)]
  assert body and all(float(jnp.std(k)) > 0 for k in body)  # The rest is drawn as configured.


def test_dropout_depends_on_key_in_train_and_is_identity_in_eval():
  model = create_model('keras_mnist', 10)  # dropout 0.5 before the classifier
  x = images((28, 28, 1))
  variables = with_random_head(model.init(jax.random.key(0), x))
  train_a = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
  train_b = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_a, train_b)
  no_dropout = create_model('keras_mnist', 10, dense_dropout=0.0)
  np.testing.assert_allclose(model.apply(variables, x), no_dropout.apply(variables, x), rtol=1e-6)


def test_conv_dropout_uses_the_dropout_stream():
  model = create_model('tiny', 3, conv_dropout=0.5)
  x = images((8, 8, 1))
  variables = with_random_head(model.init(jax.random.key(0), x))
  outs = [model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(k)})
          for k in (1, 2)]
  assert not np.allclose(*outs)


@pytest.mark.parametrize('name, kwargs', [
  ('tiny', dict(batch_norm=True)), ('resnet_small', {}),
])
def test_batch_norm_updates_batch_stats(name, kwargs):
  model = create_model(name, 3, **kwargs)
  x = images(SHAPES[name]) + 3.0  # mean far from the initial running mean of 0
  variables = model.init(jax.random.key(0), x)
  assert 'batch_stats' in variables
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (2, 3)
  before, after = jax.tree.leaves(variables['batch_stats']), jax.tree.leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_batch_norm_drops_the_conv_bias():
  params = create_model('tiny', 3, batch_norm=True).init(
    jax.random.key(0), jnp.zeros((1, 8, 8, 1)))['params']
  assert set(params['conv_0']) == {'kernel'}
  assert set(params['bn_0']) == {'scale', 'bias'}


@pytest.mark.parametrize('name', ['tiny', 'resnet_small'])
def test_bfloat16_computes_in_bf16_but_keeps_float32_params_and_logits(name):
  model = create_model(name, 4, dtype=jnp.bfloat16)
  x = images(SHAPES[name])
  variables = model.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  logits, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
  assert logits.dtype == jnp.float32
  first_conv = 'conv_0' if name == 'tiny' else 'stem_conv'
  conv_out = state['intermediates'][first_conv]['__call__'][0]
  assert conv_out.dtype == jnp.bfloat16


def test_initializer_names_take_effect():
  # glorot_uniform is bounded by sqrt(6 / (fan_in + fan_out)); he_normal is not.
  x = jnp.zeros((1, 8, 8, 1))
  xavier = create_model('tiny', 3, initializer='xavier').init(jax.random.key(0), x)['params']
  he = create_model('tiny', 3, initializer='he').init(jax.random.key(0), x)['params']
  bound = np.sqrt(6 / (9 * 1 + 9 * 4))
  assert np.abs(xavier['conv_0']['kernel']).max() <= bound
  assert not np.allclose(xavier['conv_0']['kernel'], he['conv_0']['kernel'])
