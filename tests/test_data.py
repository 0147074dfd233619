"""Data: the offline digits split, batching by step, evaluation coverage, and TFDS sources."""

import functools
import gzip
import http.server
import importlib.util
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.data import sources
from cnn_jax.errors import UserError


@pytest.fixture(scope='module')
def digits():
  return data.load_dataset(data.DataSpec('digits'))


def test_digits_split_is_fixed_disjoint_and_stratified(digits):
  assert (len(digits.train), len(digits.eval)) == (1437, 360)
  assert digits.info.image_shape == (8, 8, 1) and digits.info.num_classes == 10
  assert digits.train.images.dtype == np.uint8 and digits.train.images.max() == 16
  # No test digit appears in training (compare raw pixels: the UCI set has no exact duplicates
  # across this split) and every class is in both splits in roughly its overall proportion.
  train_rows = {row.tobytes() for row in digits.train.images}
  assert not any(row.tobytes() in train_rows for row in digits.eval.images)
  counts = np.bincount(digits.eval.labels, minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37
  again = data.load_dataset(data.DataSpec('digits'))
  np.testing.assert_array_equal(again.eval.labels, digits.eval.labels)


def test_normalizer_centres_and_scales_training_data(digits):
  x = digits.normalizer(digits.train.images)
  assert x.dtype == np.float32 and x.shape == digits.train.images.shape
  assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01


def test_train_batches_are_a_function_of_seed_and_step(digits):
  split, norm = digits.train, digits.normalizer
  a = data.train_batch(split, norm, 64, seed=0, step=5)
  b = data.train_batch(split, norm, 64, seed=0, step=5)
  c = data.train_batch(split, norm, 64, seed=1, step=5)
  np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(a['label'], c['label'])
  assert a['image'].shape == (64, 8, 8, 1) and a['label'].dtype == np.int32


def test_an_epoch_visits_each_example_at_most_once(digits):
  split = data.Split(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1),
                     np.arange(10, dtype=np.int32))
  norm = data.Normalizer(1.0, (0.0,), (1.0,))
  per_epoch = data.steps_per_epoch(len(split), 3)
  assert per_epoch == 3  # 10 // 3: the partial batch is skipped, a different one each epoch.
  for epoch in range(2):
    seen = np.concatenate([data.train_batch(split, norm, 3, 0, epoch * per_epoch + i)['label']
                           for i in range(per_epoch)])
    assert len(set(seen.tolist())) == 9


@pytest.mark.parametrize('n,batch', [(10, 4), (8, 4), (3, 8), (360, 256)])
def test_eval_batches_cover_every_example_exactly_once(n, batch):
  split = data.Split(np.zeros((n, 2, 2, 1), np.uint8), np.arange(n, dtype=np.int32))
  norm = data.Normalizer(1.0, (0.0,), (1.0,))
  batches = list(data.eval_batches(split, norm, batch))
  assert all(b['image'].shape == (batch, 2, 2, 1) for b in batches)
  real = np.concatenate([b['label'][b['mask'] == 1] for b in batches])
  np.testing.assert_array_equal(real, np.arange(n))  # Each once, in order, no padding counted.
  assert sum(float(b['mask'].sum()) for b in batches) == n


def test_tfds_mnist_loads_through_data_source():
  with tfds.testing.mock_data(num_examples=12):
    info = data.describe_dataset(data.DataSpec('mnist'))
    dataset = data.load_dataset(data.DataSpec('mnist'), 'train', 'test')
  assert info.num_classes == 10 and info.image_shape == (28, 28, 1)
  assert info.class_names[3] == '3'
  assert dataset.train.images.shape == (12, 28, 28, 1) and dataset.eval.labels.dtype == np.int32


def test_tfds_images_of_varying_size_are_resized_or_refused():
  with tfds.testing.mock_data(num_examples=6):
    with pytest.raises(UserError, match='image_size'):
      data.describe_dataset(data.DataSpec('cats_vs_dogs'))
    dataset = data.load_dataset(data.DataSpec('cats_vs_dogs', image_size=24), 'train[:50%]',
                                'train[50%:]')
  assert dataset.info.class_names == ('cat', 'dog')
  assert dataset.train.images.shape[1:] == (24, 24, 3)


def test_missing_tfds_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(UserError) as error:
    data.load_dataset(data.DataSpec('mnist', tfds_data_dir=str(tmp_path)))
  message = str(error.value)
  assert 'download_and_prepare' in message and 'tfds_data_dir' in message
  assert str(tmp_path) in message


def test_unknown_dataset_names_the_problem():
  with pytest.raises(UserError, match="config.data.name='mnsit'"):
    data.describe_dataset(data.DataSpec('mnsit'))
  with pytest.raises(UserError, match='splits'):
    data.load_dataset(data.DataSpec('digits'), eval_split='valid')


def test_every_registered_name_opens_its_source_and_any_other_name_is_tfds():
  assert set(data.SOURCES) == {'digits', 'idx', 'image_folder', 'csv'}
  for name, source in data.SOURCES.items():
    assert type(data.open_source(data.DataSpec(name))) is source  # Opening reads nothing.
  assert type(data.open_source(data.DataSpec('mnist'))) is sources.Tfds
  assert type(data.open_source(data.DataSpec('mnsit'))) is sources.Tfds  # describe() says why.
  assert data.LOCAL_SOURCES == tuple(data.SOURCES)  # Every registered source is local.
  assert [data.open_source(data.DataSpec(name)).max_value for name in ('digits', 'mnist')] == [
      16, 255]


def test_a_described_source_loads_and_streams_alike():
  source = data.open_source(data.DataSpec('digits'))
  assert source.describe() == data.describe_dataset(data.DataSpec('digits'))
  loaded = data.load_dataset(source)
  streamed = data.stream_dataset(source)
  assert streamed.normalizer == loaded.normalizer  # The same examples, the same values.
  np.testing.assert_array_equal(streamed.eval.gather(np.arange(360))['image'], loaded.eval.images)


@pytest.fixture
def loopback_fashion_mnist(tmp_path, monkeypatch):
  """TFDS's fashion_mnist builder pointed at a loopback HTTP server that serves small IDX files
  of the original names: the whole download path, without the internet."""
  files = tmp_path / 'served'
  files.mkdir()
  rng = np.random.default_rng(0)
  for prefix, count in (('train', 40), ('t10k', 12)):
    for kind, array in (('images-idx3', rng.integers(0, 256, (count, 28, 28))),
                        ('labels-idx1', rng.integers(0, 10, count))):
      header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, '>i4').tobytes()
      with gzip.open(files / f'{prefix}-{kind}-ubyte.gz', 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(mnist.FashionMNIST, 'URL', f'http://127.0.0.1:{server.server_address[1]}/')
  yield data.DataSpec('fashion_mnist', tfds_data_dir=str(tmp_path / 'tfds'), download=True)
  server.shutdown()


def test_download_and_prepare_runs_or_names_what_is_missing(loopback_fashion_mnist):
  """With TensorFlow (pip install -e '.[tfds-prepare]'), the dataset is downloaded, prepared and
  read; without it, the message names TensorFlow and how to install it, and nothing else is
  missing on the way there (this is where a missing importlib_resources used to fail)."""
  if importlib.util.find_spec('tensorflow') is not None:
    assert len(data.load_split(loopback_fashion_mnist, 'test')) == 12
    return
  with pytest.raises(UserError) as error:
    data.load_split(loopback_fashion_mnist, 'test')
  message = str(error.value)
  assert "TFDS needs TensorFlow to prepare this dataset: pip install -e '.[tfds-prepare]'" in message
  assert 'importlib_resources' not in message and 'download=True if' not in message


def test_the_validation_split_is_held_out_of_train_disjoint_and_fixed_by_its_seed():
  from cnn_jax.data import slicing  # pylint: disable=g-import-not-at-top
  spec = data.DataSpec('digits', validation_fraction=0.1)
  dataset = data.load_dataset(spec, 'train', 'validation', 'test')
  assert (len(dataset.train), len(dataset.eval), len(dataset.test)) == (1293, 144, 360)
  whole = data.load_split(spec, 'train')  # The dataset's own training split, all of it.
  kept, held_out = slicing.holdout(len(whole), 0.1, 0)
  assert not set(kept) & set(held_out) and len(kept) + len(held_out) == len(whole)
  np.testing.assert_array_equal(dataset.eval.images, whole.images[held_out])
  np.testing.assert_array_equal(dataset.train.images, whole.images[kept])
  np.testing.assert_array_equal(data.load_split(spec, 'validation').images, dataset.eval.images)
  np.testing.assert_array_equal(dataset.test.images, data.load_split(spec, 'test').images)
  assert np.array_equal(slicing.holdout(1437, 0.1, 0)[1], held_out)  # The same seed, the same.
  assert not np.array_equal(slicing.holdout(1437, 0.1, 1)[1], held_out)  # Another, another.
  streamed = data.stream_dataset(spec, 'train', 'validation', 'test')
  np.testing.assert_array_equal(streamed.eval.gather(np.arange(144))['image'], dataset.eval.images)


def test_the_lookup_table_normalises_every_pixel_value_bit_for_bit():
  # Training ships uint8 batches and normalises them on the device through this table; it must
  # give exactly what the host's normaliser gives, for every value in every channel.
  norm = data.Normalizer(255.0, (0.2860, 0.4, 0.7), (0.3530, 0.1, 0.02))
  table = norm.lookup_table()
  assert table.shape == (256, 3) and table.dtype == np.float32
  images = np.random.default_rng(0).integers(0, 256, (5, 7, 7, 3), dtype=np.uint8)
  looked_up = table[images.astype(np.int64), np.arange(3)]
  np.testing.assert_array_equal(looked_up, norm(images))
  for channel in range(3):
    np.testing.assert_array_equal(table[:, channel],
                                  norm(np.full((256, 1, 1, 3), 0, np.uint8)
                                       + np.arange(256, dtype=np.uint8)[:, None, None, None])
                                  [:, 0, 0, channel])


def test_digits_split_is_scikit_learns_stratified_split_without_importing_it():
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import digits as digits_source  # pylint: disable=g-import-not-at-top
  reference = datasets.load_digits()
  train, test = model_selection.train_test_split(
      np.arange(len(reference.target)), test_size=0.2, random_state=0, stratify=reference.target)
  images = reference.images.astype(np.uint8)[..., None]
  for split, indices in (('train', train), ('test', test)):
    loaded = digits_source.load_split(split)
    np.testing.assert_array_equal(loaded.images, images[indices])
    np.testing.assert_array_equal(loaded.labels, reference.target[indices])
  # The same draw for other label sets, sizes and seeds.
  rng = np.random.RandomState(0)
  for seed in range(30):
    labels = rng.randint(0, rng.randint(2, 12), size=rng.randint(60, 400))
    labels = labels[np.isin(labels, np.flatnonzero(np.bincount(labels) >= 2))]
    count = rng.randint(12, len(labels) // 2)
    expected = model_selection.train_test_split(np.arange(len(labels)), test_size=count,
                                                random_state=seed, stratify=labels)
    for ours, theirs in zip(digits_source.stratified_split(labels, count, seed), expected):
      np.testing.assert_array_equal(ours, theirs)
