"""Streamed data (config.data.stream): grain's shuffled shards, padded eval, the decoded cache,
worker processes, and training that resumes bit for bit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.training import train
from cnn_jax.data import npy_cache, stream
from cnn_jax.errors import UserError
from cnn_jax.runtime.writers import read_metrics
from conftest import REPO, load_config


N = 1001  # Odd, so no batch size or process count divides it.
IDENTITY = data.Normalizer(1.0, (0.0,), (1.0,))  # Batches hold the raw pixels, as floats.


@pytest.fixture(scope='module')
def indexed_source():
  """N examples whose 2×2 pixels spell their own index, so any batch names its examples."""
  index = np.arange(N)
  images = np.zeros((N, 2, 2, 1), np.uint8)
  images[:, 0, 0, 0], images[:, 0, 1, 0] = index % 256, index // 256
  return stream.ArraySource(data.Split(images, (index % 10).astype(np.int32)))


def _indices(batches) -> list[int]:
  """The example indices in `batches` (all rows, or the real ones where there is a mask)."""
  found = []
  for batch in batches:
    images = batch['image'] if 'mask' not in batch else batch['image'][batch['mask'] > 0]
    found += (images[:, 0, 0, 0] + 256 * images[:, 0, 1, 0]).astype(int).tolist()
  return found


def _take(batches, count):
  taken = [next(batches) for _ in range(count)]
  batches.close()
  return taken


def test_each_epoch_visits_every_example_once_in_a_new_order(indexed_source):
  # 1,001 examples at batch 7: 143 batches an epoch, exactly.
  order = _indices(_take(stream.train_batches(indexed_source, stream.PrepareExample(),
                                              IDENTITY, 7, seed=3), 2 * 143))
  first, second = order[:N], order[N:]
  assert sorted(first) == sorted(second) == list(range(N))
  assert first != second


def test_processes_read_only_their_rows_of_the_same_global_batches(indexed_source):
  one = _take(stream.train_batches(indexed_source, stream.PrepareExample(), IDENTITY, 12,
                                   seed=3), 100)
  rows = [_take(stream.train_batches(indexed_source, stream.PrepareExample(), IDENTITY, 12,
                                     seed=3, shard=(p, 3)), 100) for p in range(3)]
  for k, batch in enumerate(one):
    assert all(part[k]['image'].shape == (4, 2, 2, 1) for part in rows)  # B/P rows each.
    together = np.concatenate([part[k]['image'] for part in rows])
    np.testing.assert_array_equal(together, batch['image'])  # In process order.


def test_nearby_seeds_give_unrelated_orders(indexed_source):
  # grain shuffles epoch e with (seed + e): used as given, seed 1's first epoch would be seed 0's
  # second.
  epochs = {seed: _indices(_take(stream.train_batches(indexed_source, stream.PrepareExample(),
                                                      IDENTITY, 7, seed=seed), 2 * 143))
            for seed in (0, 1)}
  assert epochs[1][:N] != epochs[0][N:]
  matches = sum(a == b for a, b in zip(epochs[1][:N], epochs[0][N:]))
  assert matches < 20  # About 1 expected by chance.


def test_a_stream_started_at_step_s_continues_the_uninterrupted_stream(indexed_source):
  prepare = stream.PrepareExample()
  whole = stream.train_batches(indexed_source, prepare, IDENTITY, 64, seed=5)
  reference = [next(whole) for _ in range(30)]  # Crosses an epoch boundary (15.6 per epoch).
  resumed = stream.train_batches(indexed_source, prepare, IDENTITY, 64, seed=5, start_step=20)
  for expected in reference[20:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], expected['image'])
    np.testing.assert_array_equal(got['label'], expected['label'])
  other_seed = next(stream.train_batches(indexed_source, prepare, IDENTITY, 64, seed=6))
  assert not np.array_equal(other_seed['label'], reference[0]['label'])


@pytest.mark.parametrize('processes, batch_size', [(1, 96), (2, 96), (3, 96), (2, 100)])
def test_eval_stream_covers_every_example_once_with_equal_batch_counts(indexed_source,
                                                                       processes, batch_size):
  # At (2, 100), process 1's 500 examples fill 10 batches and process 0 needs 11: process 1's
  # 11th batch is padding alone.
  shards = [list(stream.eval_shard_batches(indexed_source, stream.PrepareExample(), IDENTITY,
                                           batch_size, (p, processes))) for p in range(processes)]
  assert len({len(batches) for batches in shards}) == 1  # The collective step runs alike.
  assert all(b['image'].shape[0] == b['mask'].shape[0] == batch_size // processes
             for batches in shards for b in batches)
  assert sorted(i for batches in shards for i in _indices(batches)) == list(range(N))


def test_worker_processes_give_the_batches_threads_give(indexed_source):
  prepare = stream.PrepareExample()
  threads = stream.train_batches(indexed_source, prepare, IDENTITY, 32, seed=1, start_step=40)
  workers = stream.train_batches(indexed_source, prepare, IDENTITY, 32, seed=1, start_step=40,
                                 worker_processes=2)
  for _ in range(5):
    np.testing.assert_array_equal(next(workers)['image'], next(threads)['image'])
  workers.close()


def test_tfds_stream_matches_the_in_memory_split_and_caches_decoded_images(tmp_path):
  spec = data.DataSpec('cats_vs_dogs', image_size=20, resize='crop', tfds_data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=30):
    in_memory = data.load_dataset(data.DataSpec(**{**spec.__dict__, 'cache': False}),
                                  'train[:50%]', 'train[50%:]')
    streamed = data.stream_dataset(spec, 'train[:50%]', 'train[50%:]')
    written = os.stat(streamed.train.images_path)
    again = data.stream_dataset(spec, 'train[:50%]', 'train[50%:]')
  assert streamed.normalizer == in_memory.normalizer  # Fitted on the same examples, alike.
  assert isinstance(streamed.train, npy_cache.NpySource)
  cached = sorted(os.listdir(tmp_path / 'cnn_jax_cache' / 'cats_vs_dogs' / '4.0.1'))
  assert len(cached) == 4  # Images and labels of each split, under distinct names; no leftovers.
  reread = os.stat(again.train.images_path)  # The second open read the cache, not rewrote it.
  assert (reread.st_ino, reread.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
  images = np.concatenate([
      b['image'][b['mask'] > 0] for b in stream.eval_shard_batches(
          streamed.eval, streamed.prepare, streamed.normalizer, 8)])
  np.testing.assert_allclose(images, in_memory.normalizer(in_memory.eval.images), atol=1e-6)


def _cache_batches(count, fail_at=None):
  for start in range(0, count, 4):
    if start == fail_at:
      raise OSError('No space left on device')
    stop = min(start + 4, count)
    yield {'image': np.full((stop - start, 3, 3, 1), start, np.uint8),
           'label': np.arange(start, stop, dtype=np.int32)}


def test_a_failed_cache_write_leaves_nothing_and_a_damaged_cache_is_named(tmp_path):
  with pytest.raises(OSError, match='No space'):
    npy_cache.write_or_open(str(tmp_path), 'split', 10, (3, 3, 1),
                            lambda: _cache_batches(10, fail_at=8))
  assert not os.listdir(tmp_path)  # No partial file to pile up or to be trusted later.
  cached = npy_cache.write_or_open(str(tmp_path), 'split', 10, (3, 3, 1),
                                   lambda: _cache_batches(10))
  np.testing.assert_array_equal(cached.gather(np.array([9, 0]))['label'], [9, 0])
  assert cached[5]['image'][0, 0, 0] == 4
  with open(cached.images_path, 'r+b') as f:  # A truncated file, as a full disk might leave.
    f.truncate(100)
  with pytest.raises(UserError, match='damaged.*Delete'):
    npy_cache.write_or_open(str(tmp_path), 'split', 10, (3, 3, 1), lambda: _cache_batches(10))


def _stream_config(num_steps=40):
  config = load_config('digits')
  config.data.stream = True
  config.num_steps = num_steps
  config.eval_every_steps = 15
  config.log_every_steps = 5
  config.checkpoint.every_steps = 10
  config.progress_bar = False
  return config


def test_a_streamed_run_stopped_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
  reference = train.train_and_evaluate(_stream_config(), str(tmp_path / 'whole'))
  assert reference['count'] == 144 and reference['accuracy'] > 0.6  # Chance is 10%.
  assert reference['test']['count'] == 360

  class Stop(Exception):
    pass

  def stop_at_30(step, metrics):
    del metrics
    if step == 30:
      raise Stop  # Before step 30's save: the rerun resumes from step 20's checkpoint.
  with pytest.raises(Stop):
    train.train_and_evaluate(_stream_config(), str(tmp_path / 'stopped'), stop_at_30)
  resumed = train.train_and_evaluate(_stream_config(), str(tmp_path / 'stopped'))
  assert resumed == reference
  strip = lambda d: [{k: v for k, v in r.items() if k != 'time'} for r in read_metrics(d)]
  assert strip(str(tmp_path / 'stopped')) == strip(str(tmp_path / 'whole'))


def test_streaming_refuses_settings_it_cannot_honour(tmp_path):
  config = _stream_config()
  config.data.on_device = True
  with pytest.raises(UserError, match='choose one'):
    train.train_and_evaluate(config, str(tmp_path / 'a'))
  config = load_config('digits')
  config.data.worker_processes = 2
  with pytest.raises(UserError, match='also set config.data.stream=True'):
    train.train_and_evaluate(config, str(tmp_path / 'b'))


def test_real_array_record_files_stream_through_workers_and_the_cache(tmp_path):
  """No mock: the input benchmark prepares two real TFDS datasets (PNG digits, 500×375 JPEGs),
  times every way of reading them, and a streamed run then trains on the JPEGs."""
  script = os.path.join(REPO, 'experiments', 'benchmarks', 'input_pipeline.py')
  out = subprocess.run([sys.executable, script, '--data_dir', str(tmp_path), '--examples', '40',
                        '--batch_size', '8', '--batches', '2', '--json'], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  figures = json.loads(out.strip().splitlines()[-1])
  assert set(figures) == {'digits28', 'photos'}
  assert all(rate > 0 for rates in figures.values() for rate in rates.values())
  config = load_config('cats_vs_dogs', 'small')
  config.data.update(name='photos', tfds_data_dir=str(tmp_path), worker_processes=1,
                     train_split='train[:30]', eval_split='train[30:]', test_split='')
  config.batch_size = config.eval_batch_size = 8
  config.num_steps = 4
  config.progress_bar = False
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert metrics['count'] == 10
  cached = os.listdir(tmp_path / 'cnn_jax_cache' / 'photos' / '1.0.0')
  assert sum(name.endswith('.images.npy') for name in cached) == 3  # 'train' and both splits.
