"""The user's own files: IDX directories and image folders, with every kind of bad file."""

import dataclasses
import gzip
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.training import train
from cnn_jax.data import idx, image_folder, images
from cnn_jax.errors import UserError
from conftest import load_config

BAD_FILES = {'truncated.jpg', 'empty.jpg', 'notes.jpg'}


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, '>i4').tobytes()
  payload = header + array.astype(np.uint8).tobytes()
  with (gzip.open(path + '.gz', 'wb') if compress else open(path, 'wb')) as f:
    f.write(payload)


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  """The digits data written as MNIST-format IDX files (train gzipped, test not)."""
  root = tmp_path_factory.mktemp('idx')
  for split, prefix, compress in (('train', 'train', True), ('test', 't10k', False)):
    part = data.load_split(data.DataSpec('digits'), split)
    _write_idx(str(root / f'{prefix}-images-idx3-ubyte'), part.images[..., 0] * 15, compress)
    _write_idx(str(root / f'{prefix}-labels-idx1-ubyte'), part.labels, compress)
  return root


def _colour_image(rng, label, size):
  """A photo-sized stand-in: class 0 ('cat') is reddish, class 1 ('dog') bluish, with noise."""
  image = rng.integers(0, 120, (*size, 3))
  image[..., 0 if label == 0 else 2] += 120
  return Image.fromarray(image.astype(np.uint8))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """cat/ and dog/: 30 images each in assorted sizes and modes, a grey one, three unreadable."""
  root = tmp_path_factory.mktemp('pets')
  rng = np.random.default_rng(0)
  for label, name in enumerate(('cat', 'dog')):
    os.makedirs(root / name)
    for i in range(30):
      image = _colour_image(rng, label, (int(rng.integers(20, 60)), int(rng.integers(20, 60))))
      if i % 5 == 1:
        image = image.convert('RGBA')
        image.save(root / name / f'{i}.png')
      elif i % 5 == 2:
        image.convert('CMYK').save(root / name / f'{i}.jpg')
      elif i % 5 == 3:
        image.save(root / name / f'{i}.jpg', format='PNG')  # A PNG named .jpg.
      else:
        image.save(root / name / f'{i}.jpg', quality=90)
  Image.fromarray(rng.integers(0, 255, (25, 25)).astype(np.uint8), 'L').save(root / 'cat' /
                                                                             'grey.png')
  good = (root / 'dog' / '0.jpg').read_bytes()
  (root / 'dog' / 'truncated.jpg').write_bytes(good[:len(good) // 3])
  (root / 'cat' / 'empty.jpg').write_bytes(b'')
  (root / 'dog' / 'notes.jpg').write_text('this is not an image')
  return root


def test_idx_files_load_and_validate(idx_dir, tmp_path):
  spec = data.DataSpec('idx', path=str(idx_dir))
  info = data.describe_dataset(spec)
  assert info.num_classes == 10 and info.image_shape == (8, 8, 1)
  assert len(data.load_split(spec, 'train')) == 1437 and len(data.load_split(spec, 'test')) == 360
  (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'\x08\x03\x00\x00')
  with pytest.raises(UserError, match='not an IDX file'):
    idx.read_idx(str(tmp_path / 'train-images-idx3-ubyte'))
  full = (idx_dir / 't10k-images-idx3-ubyte').read_bytes()
  (tmp_path / 'short').write_bytes(full[:-10])
  with pytest.raises(UserError, match='truncated'):
    idx.read_idx(str(tmp_path / 'short'))
  with pytest.raises(UserError, match='no train-images-idx3-ubyte'):
    os.makedirs(tmp_path / 'empty')
    data.describe_dataset(data.DataSpec('idx', path=str(tmp_path / 'empty')))


def test_training_on_idx_files_learns(idx_dir, tmp_path):
  config = load_config('digits')
  config.data.name, config.data.path = 'idx', str(idx_dir)
  config.num_steps, config.progress_bar = 220, False
  assert train.train_and_evaluate(config, str(tmp_path))['accuracy'] > 0.8


def _lookalike(root, first_labels, count=60_000):
  """IDX files shaped like a 60,000-image set whose training labels start with `first_labels`
  (2×2 images keep them small; describing a set reads only the labels and a header)."""
  root.mkdir(parents=True, exist_ok=True)
  labels = np.resize(np.asarray(first_labels, np.uint8), count)
  labels[-1] = 9  # Ten classes, whatever the first labels are.
  for prefix, n in (('train', count), ('t10k', 100)):
    _write_idx(str(root / f'{prefix}-labels-idx1-ubyte'), labels[:n], compress=True)
    _write_idx(str(root / f'{prefix}-images-idx3-ubyte'), np.zeros((n, 2, 2), np.uint8), True)
  return root


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_known_idx_sets_are_recognised_by_content_and_named(tmp_path, name):
  _, first, class_names = idx.KNOWN[name]
  info = data.describe_dataset(data.DataSpec('idx', path=str(_lookalike(tmp_path, first))))
  assert info.name == name and info.class_names == class_names
  assert info.class_names[0] == ('0' if name == 'mnist' else 'T-shirt/top')


def test_an_unknown_idx_set_has_numbered_classes_unless_named(idx_dir, tmp_path):
  spec = data.DataSpec('idx', path=str(idx_dir))
  assert data.describe_dataset(spec).class_names == tuple('0123456789')
  assert data.describe_dataset(spec).name == 'idx'  # 1,437 digits: not MNIST.
  names = tuple('zero one two three four five six seven eight nine'.split())
  named = data.DataSpec('idx', path=str(idx_dir), class_names=names)
  assert data.describe_dataset(named).class_names == names
  with pytest.raises(UserError, match=r'class_names has 2 name\(s\), but the IDX .* hold 10'):
    data.describe_dataset(data.DataSpec('idx', path=str(idx_dir), class_names=('a', 'b')))


def test_mirroring_is_refused_for_digit_sets_only(tmp_path):
  config = load_config('digits')
  config.data.name, config.augment.horizontal_flip = 'idx', True
  config.data.path = str(_lookalike(tmp_path / 'mnist', idx.KNOWN['mnist'][1]))
  with pytest.raises(UserError, match="mirrors images, which changes what a 'mnist' image means"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')  # Refused before any work.
  both = {'horizontal_flip': True, 'test_flip': True}
  assert data.flip_problems('fashion_mnist', both) == [] and data.flip_problems('idx', both) == []
  assert [m.split('=')[0] for m in data.flip_problems('mnist', both)] == [
      'config.augment.horizontal_flip', 'config.augment.test_flip']


def test_local_splits_take_tfds_slices():
  whole = data.load_split(data.DataSpec('digits'), 'train')
  for split, expected in (('train[:10%]', whole.labels[:144]), ('train[-5:]', whole.labels[-5:]),
                          ('train[100:110]', whole.labels[100:110]),
                          ('train[50%:]', whole.labels[718:])):
    np.testing.assert_array_equal(data.load_split(data.DataSpec('digits'), split).labels,
                                  expected)
  for bad in ('train[:10', 'train[1:2:3]', 'train[a:]'):
    with pytest.raises(UserError, match='NAME\\[START:STOP\\]'):
      data.load_split(data.DataSpec('digits'), bad)


def test_a_system_copy_serves_a_tfds_name_that_tfds_has_not_prepared(idx_dir, monkeypatch,
                                                                      capsys):
  from cnn_jax.data import sources, tfds_source  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sources.SYSTEM_COPIES, 'fashion_mnist',
                      (sources.Idx, str(idx_dir), 'a test package'))
  monkeypatch.setattr(tfds_source, 'is_prepared', lambda name, data_dir: False)
  monkeypatch.setattr(sources, '_SAID_WHERE_FROM', set())
  source = data.open_source(data.DataSpec('fashion_mnist'))
  assert isinstance(source, sources.Idx) and len(source.load_split('test')) == 360
  assert f'reading the files of a test package in {idx_dir}' in capsys.readouterr().out
  data.open_source(data.DataSpec('fashion_mnist'))
  assert 'reading the files' not in capsys.readouterr().out  # Said once a process.
  monkeypatch.setattr(tfds_source, 'is_prepared', lambda name, data_dir: True)  # TFDS's own.
  assert isinstance(data.open_source(data.DataSpec('fashion_mnist')), sources.Tfds)
  assert isinstance(data.open_source(data.DataSpec('fashion_mnist', download=True)),
                    sources.Tfds)


def test_image_folder_reads_every_odd_file_and_reports_the_bad_ones(folder, tmp_path):
  config = load_config('digits')
  config.data.update(name='image_folder', path=str(folder), image_size=16,
                     validation_fraction=0.25, max_skip_fraction=0.1, cache=False, test_split='')
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.augment.update(crop_padding=2, horizontal_flip=True)  # Through the real training step.
  config.model.update(features=(8,), dense=())
  config.num_steps, config.eval_every_steps, config.progress_bar = 60, 30, False
  config.batch_size = 32  # Of 46 training images.
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics['accuracy'] >= 0.9  # Reddish vs bluish: any working pipeline separates them.
  listed = (tmp_path / 'skipped_files.txt').read_text().splitlines()
  assert {os.path.basename(line.split('\t')[1]) for line in listed} == BAD_FILES
  assert metrics['count'] + sum(line.startswith('eval') for line in listed) == 16  # 64 × 0.25


def test_too_many_bad_files_stop_the_run(folder):
  spec = data.DataSpec('image_folder', path=str(folder), image_size=16, max_skip_fraction=0.01,
                       cache=False, validation_fraction=0.0)
  with pytest.raises(UserError, match=r'3 of 64 files .*max_skip_fraction=0.01'):
    data.load_split(spec, 'train')


def test_the_skip_limit_counts_the_whole_dataset_and_names_each_split(tmp_path):
  """3 bad files of 95 (3.2%) pass a 5% limit even when one falls in the 19-file validation split
  (5.3% of it); a 2.5% limit stops the run, counting each split's share."""
  rng = np.random.default_rng(2)
  for i in range(95):
    label = i % 2
    os.makedirs(tmp_path / ('cat', 'dog')[label], exist_ok=True)
    _colour_image(rng, label, (20, 20)).save(tmp_path / ('cat', 'dog')[label] / f'{i}.png')
  index = image_folder.index_folder(str(tmp_path))
  validation = image_folder.split_files(index, 'validation', 0.2, 0)[0]
  train_files = image_folder.split_files(index, 'train', 0.2, 0)[0]
  assert len(validation) == 19
  for path in (validation[0], train_files[0], train_files[1]):
    with open(path, 'wb') as f:
      f.write(b'not an image')
  spec = data.DataSpec('image_folder', path=str(tmp_path), image_size=12, cache=False,
                       validation_fraction=0.2)
  dataset = data.load_dataset(spec, 'train', 'validation')
  assert (len(dataset.train.skipped), len(dataset.eval.skipped)) == (2, 1)
  assert (len(dataset.train), len(dataset.eval)) == (74, 18)
  strict = dataclasses.replace(spec, max_skip_fraction=0.025)
  with pytest.raises(UserError, match=r'3 of 95 files \(3.2%\) could not be read '
                                      r'\(train: 2, validation: 1\).*max_skip_fraction=0.025'):
    data.load_dataset(strict, 'train', 'validation')


def test_a_class_too_small_for_the_validation_split_is_named(tmp_path, capsys):
  rng = np.random.default_rng(3)
  for label, (name, count) in enumerate((('cat', 40), ('dog', 40), ('fox', 2))):
    os.makedirs(tmp_path / name)
    for i in range(count):
      _colour_image(rng, label % 2, (20, 20)).save(tmp_path / name / f'{i}.png')
  index = image_folder.index_folder(str(tmp_path))
  assert image_folder.classes_missing(
      index, image_folder.split_files(index, 'validation', 0.1, 0)[1]) == ['fox']
  spec = data.DataSpec('image_folder', path=str(tmp_path), image_size=12, cache=False,
                       validation_fraction=0.1)
  data.load_dataset(spec, 'train', 'validation')
  out = capsys.readouterr().out
  assert "the validation split (8 images) has no image of 'fox'" in out
  assert 'raise config.data.validation_fraction' in out


def test_validation_split_is_disjoint_complete_and_fixed_by_its_seed(folder):
  index = image_folder.index_folder(str(folder))
  assert index.class_names == ('cat', 'dog') and len(index.files) == 64
  def split(name, seed):
    return set(image_folder.split_files(index, name, 0.2, seed)[0])
  train_files, validation_files = split('train', 0), split('validation', 0)
  assert not train_files & validation_files
  assert len(train_files | validation_files) == 64 and len(validation_files) == 13
  assert split('validation', 0) == validation_files and split('validation', 1) != validation_files


def test_kaggle_and_petimages_layouts(tmp_path):
  rng = np.random.default_rng(1)
  kaggle = tmp_path / 'train'
  pet = tmp_path / 'kagglecatsanddogs' / 'PetImages'
  os.makedirs(kaggle)
  for label, name in enumerate(('cat', 'dog')):
    os.makedirs(pet / name.capitalize())
    for i in range(3):
      _colour_image(rng, label, (20, 30)).save(kaggle / f'{name}.{i}.jpg')
      _colour_image(rng, label, (20, 30)).save(pet / name.capitalize() / f'{i}.jpg')
  kaggle_index = image_folder.index_folder(str(kaggle))
  assert kaggle_index.class_names == ('cat', 'dog') and kaggle_index.labels == (0, 0, 0, 1, 1, 1)
  pet_index = image_folder.index_folder(str(tmp_path / 'kagglecatsanddogs'))
  assert pet_index.class_names == ('Cat', 'Dog') and len(pet_index.files) == 6


@pytest.fixture
def own_folder(folder, tmp_path):
  """A copy of `folder` that a test may cache into, touch and damage."""
  return shutil.copytree(folder, tmp_path / 'pets', ignore=shutil.ignore_patterns('.cnn_jax_cache'))


def _refuse_to_decode(*args, **kwargs):
  raise AssertionError(f'decoded {args[0]} instead of reading the cache')


def _folder_spec(path, **changes):
  return data.DataSpec('image_folder', path=str(path), image_size=12, max_skip_fraction=0.1,
                       **changes)


def test_decoded_cache_is_reused_and_invalidated(own_folder, monkeypatch):
  spec = _folder_spec(own_folder)
  first = data.load_split(spec, 'train')
  cache_dir = own_folder / '.cnn_jax_cache'
  assert len(list(cache_dir.glob('train-*.images.npy'))) == 1
  with monkeypatch.context() as patch:
    patch.setattr(images, 'load_resized', _refuse_to_decode)
    again = data.load_split(spec, 'train')  # From the cache alone: no file is decoded.
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.labels, first.labels)
  assert again.skipped == first.skipped and len(first.skipped) >= 1
  files, _ = image_folder.split_files(image_folder.index_folder(str(own_folder)), 'train', 0.2, 0)
  os.utime(files[0], ns=(1, 1))  # Touching a file changes the key: no stale cache is read.
  data.load_split(spec, 'train')
  assert len(list(cache_dir.glob('train-*.images.npy'))) == 2
  assert not list(cache_dir.glob('.*'))  # No temporary file left behind.


def test_a_cached_folder_split_keeps_its_skipped_files(own_folder, monkeypatch):
  spec = _folder_spec(own_folder)
  decoded = data.load_dataset(spec, 'train', 'validation')
  monkeypatch.setattr(images, 'load_resized', _refuse_to_decode)
  cached = data.load_dataset(spec, 'train', 'validation')
  skipped = decoded.train.skipped + decoded.eval.skipped
  assert {os.path.basename(name) for name, _ in skipped} == BAD_FILES  # All three, either split.
  assert (cached.train.skipped, cached.eval.skipped) == (decoded.train.skipped,
                                                         decoded.eval.skipped)
  assert cached.normalizer == decoded.normalizer


def test_a_damaged_folder_cache_is_named(own_folder):
  spec = _folder_spec(own_folder, validation_fraction=0.0)
  data.load_split(spec, 'train')
  cache_dir = own_folder / '.cnn_jax_cache'
  (images_path,) = cache_dir.glob('train-*.images.npy')
  (skipped_path,) = cache_dir.glob('train-*.skipped.json')
  skipped_path.unlink()  # The cache now holds three images fewer than its files less its skips.
  with pytest.raises(UserError, match=re.escape(str(images_path)) + '.*damaged.*61 images.*not 64'):
    data.load_split(spec, 'train')
  with open(images_path, 'r+b') as f:  # A truncated file, as a full disk might leave.
    f.truncate(100)
  with pytest.raises(UserError, match=re.escape(str(images_path)) + '.*damaged.*Delete'):
    data.load_split(spec, 'train')


def test_one_source_indexes_its_folder_once(folder, monkeypatch):
  calls = []
  index_folder = image_folder.index_folder
  monkeypatch.setattr(image_folder, 'index_folder',
                      lambda path: calls.append(path) or index_folder(path))
  source = data.open_source(_folder_spec(folder, cache=False))
  info = source.describe()
  loaded = data.load_dataset(source, 'train', 'validation')
  streamed = data.stream_dataset(source, 'train', 'validation')
  assert calls == [str(folder)]  # Described, both splits loaded, and streamed: one index.
  assert loaded.info == info == streamed.info and len(loaded.train) == len(streamed.train)


def test_crop_keeps_the_centre_and_squash_the_whole_image(tmp_path):
  from cnn_jax.data import images  # pylint: disable=g-import-not-at-top
  wide = np.zeros((10, 30, 3), np.uint8)
  wide[:, 10:20] = 255  # A white centre square between black sides.
  Image.fromarray(wide).save(tmp_path / 'wide.png')
  assert images.load_resized(str(tmp_path / 'wide.png'), 10, 3, 'crop').min() == 255
  assert images.load_resized(str(tmp_path / 'wide.png'), 10, 3, 'squash').min() == 0


def _images_in(directory, count, rng):
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    _colour_image(rng, i % 2, (12, 12)).save(directory / f'{directory.name}.{i}.png')


def test_a_folder_with_one_class_folder_is_refused_not_split_per_file(tmp_path):
  rng = np.random.default_rng(0)
  _images_in(tmp_path / 'one' / 'dog', 6, rng)  # Used to become six classes, dog.0 ... dog.5.
  with pytest.raises(UserError, match="holds one class folder, 'dog'"):
    image_folder.index_folder(str(tmp_path / 'one'))
  _images_in(tmp_path / 'unique', 0, rng)
  for i in range(4):
    _colour_image(rng, 0, (12, 12)).save(tmp_path / 'unique' / f'photo_{i}.png')
  with pytest.raises(UserError, match='every one of its 4 images would be a class of its own'):
    image_folder.index_folder(str(tmp_path / 'unique'))
  _images_in(tmp_path / 'nested' / 'a' / 'b' / 'cat', 3, rng)  # Wrappers inside wrappers.
  _images_in(tmp_path / 'nested' / 'a' / 'b' / 'dog', 3, rng)
  assert image_folder.index_folder(str(tmp_path / 'nested')).class_names == ('cat', 'dog')


def test_an_empty_class_folder_is_named(tmp_path):
  rng = np.random.default_rng(0)
  _images_in(tmp_path / 'pets' / 'dog', 4, rng)
  (tmp_path / 'pets' / 'cat').mkdir()
  with pytest.raises(UserError, match="class folder\\(s\\) 'cat' in .* hold no image file"):
    image_folder.index_folder(str(tmp_path / 'pets'))


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
  grey = np.random.default_rng(0).integers(100, 190, (20, 30))
  Image.fromarray((grey * 257).astype(np.uint16)).save(tmp_path / 'deep.png')
  Image.fromarray((grey / 255).astype(np.float32), 'F').save(tmp_path / 'float.tiff')
  for name in ('deep.png', 'float.tiff'):
    for channels in (1, 3):
      decoded = images.read_image(str(tmp_path / name), channels)
      assert abs(decoded.mean() - grey.mean()) < 0.6, (name, channels)  # Not ~255: scaled.


def test_folder_entries_that_are_no_readable_file_are_skipped_and_listed(own_folder):
  """A broken link, a link that loops and a directory named like an image, in a class folder:
  each is listed among the skipped files with what it is, like a corrupt image."""
  class_dir = own_folder / sorted(p.name for p in own_folder.iterdir() if p.is_dir())[0]
  os.symlink(str(class_dir / 'gone.png'), class_dir / 'dangling.png')
  os.symlink(str(class_dir / 'loop.png'), class_dir / 'loop.png')
  (class_dir / 'folder.png').mkdir()
  spec = _folder_spec(own_folder, validation_fraction=0.0)
  split = data.load_split(spec, 'train')  # Decoded, then again from the cache.
  reasons = {os.path.basename(name): reason for name, reason in split.skipped}
  assert set(reasons) == BAD_FILES | {'dangling.png', 'loop.png', 'folder.png'}
  assert 'broken symbolic link' in reasons['dangling.png']
  assert 'loops' in reasons['loop.png'] and 'a directory' in reasons['folder.png']
  assert data.load_split(spec, 'train').skipped == split.skipped
