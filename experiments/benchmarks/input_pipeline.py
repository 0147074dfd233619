"""Input-pipeline images/s alone, for 28×28 digits and for cats-vs-dogs-sized JPEGs, read the way
a TFDS dataset is read: ArrayRecord files through `tfds.data_source`, decoded by TFDS.

    python experiments/benchmarks/input_pipeline.py --data_dir /tmp/pipeline_data

Without a download, it first prepares two real TFDS datasets in --data_dir (TFDS writes them; no
TensorFlow needed for images given as files):
  digits28  the UCI digits (scikit-learn), upscaled to 28×28 and stored as PNG, like TFDS 'mnist';
  photos    500×375 JPEGs (quality 90; TFDS 'cats_vs_dogs' photos are about 500×375) cut at random
            from scikit-learn's two sample photographs, resized to 128×128 for training.
Then it times, with cnn_jax's own data code: loading a split into memory, streaming batches with
threads, with worker processes, and from the decoded cache (data.cache), after the cache is built.
Figures are steady-state images/s over --batches batches of --batch_size, after a first batch.
"""

import argparse
import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from cnn_jax import data
from cnn_jax.data import stream

DATASETS = {'digits28': 0, 'photos': 128}  # name → image_size for training (0: native 28 px).


def _digit_pngs(count: int, rng) -> list[tuple[bytes, int]]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  examples = []
  for i in rng.permutation(count) % len(digits.target):
    image = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((28, 28))
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    examples.append((buffer.getvalue(), int(digits.target[i])))
  return examples


def _photo_jpegs(count: int, rng) -> list[tuple[bytes, int]]:
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images  # Two 427×640 RGB photographs.
  examples = []
  for i in range(count):
    photo = photos[i % 2]
    top, left = rng.integers(0, 427 - 375), rng.integers(0, 640 - 500)
    crop = photo[top:top + 375, left:left + 500]
    buffer = io.BytesIO()
    Image.fromarray(crop[:, ::-1] if rng.random() < 0.5 else crop).save(buffer, 'JPEG',
                                                                        quality=90)
    examples.append((buffer.getvalue(), i % 2))
  return examples


def prepare_dataset(data_dir: str, name: str, count: int) -> None:
  """Writes TFDS dataset `name` (one 'train' split of `count` images) into data_dir, if absent."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if os.path.isdir(os.path.join(data_dir, name, '1.0.0')):
    return
  rng = np.random.default_rng(0)
  examples = _digit_pngs(count, rng) if name == 'digits28' else _photo_jpegs(count, rng)
  files = tempfile.mkdtemp()
  for i, (encoded, _) in enumerate(examples):
    with open(os.path.join(files, f'{i}.img'), 'wb') as f:
      f.write(encoded)
  shape = (28, 28, 1) if name == 'digits28' else (None, None, 3)
  classes = [str(d) for d in range(10)] if name == 'digits28' else ['cat', 'dog']

  def info(builder):
    return tfds.core.DatasetInfo(builder=builder, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=shape),
        'label': tfds.features.ClassLabel(names=classes)}))

  def split_generators(builder, dl_manager):
    del dl_manager
    return {'train': builder._generate_examples()}  # pylint: disable=protected-access

  def generate_examples(builder):
    del builder
    for i, (_, label) in enumerate(examples):
      yield i, {'image': os.path.join(files, f'{i}.img'), 'label': label}

  # TFDS names a builder after its class ('Digits28' → 'digits28'), so the class is made by name.
  builder = type(name.title(), (tfds.core.GeneratorBasedBuilder,), {
      'VERSION': tfds.core.Version('1.0.0'), '_info': info,
      '_split_generators': split_generators, '_generate_examples': generate_examples})
  builder(data_dir=data_dir, file_format='array_record').download_and_prepare()


def _stream_rate(dataset, batch_size: int, batches: int, worker_processes: int) -> float:
  iterator = stream.train_batches(dataset.train, dataset.prepare, dataset.normalizer, batch_size,
                                  seed=0, worker_processes=worker_processes)
  next(iterator)  # Worker start-up and the first prefetch are not steady state.
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  iterator.close()
  return batches * batch_size / elapsed


def measure(data_dir: str, name: str, batch_size: int, batches: int,
            worker_processes: int) -> dict[str, float]:
  """Returns images/s of each way of reading dataset `name` from data_dir."""
  spec = data.DataSpec(name, tfds_data_dir=data_dir, image_size=DATASETS[name], cache=False)
  results = {}
  start = time.perf_counter()
  count = len(data.load_split(spec, 'train'))
  results['load_into_memory'] = count / (time.perf_counter() - start)
  streamed = data.stream_dataset(spec, 'train', 'train')
  results['stream_threads'] = _stream_rate(streamed, batch_size, batches, 0)
  if worker_processes:
    results[f'stream_{worker_processes}_processes'] = _stream_rate(streamed, batch_size, batches,
                                                                   worker_processes)
  cached_spec = data.DataSpec(**{**spec.__dict__, 'cache': True})
  shutil.rmtree(os.path.join(data_dir, 'cnn_jax_cache', name), ignore_errors=True)
  start = time.perf_counter()
  cached = data.stream_dataset(cached_spec, 'train', 'train')  # Decodes once, writes the cache.
  results['build_cache'] = count / (time.perf_counter() - start)
  results['stream_from_cache'] = _stream_rate(cached, batch_size, batches, 0)
  start = time.perf_counter()
  count = len(data.load_split(cached_spec, 'train'))
  results['load_from_cache'] = count / (time.perf_counter() - start)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True, help='Where the two datasets are prepared.')
  parser.add_argument('--examples', type=int, default=4000, help='Images per dataset.')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=30, help='Timed batches per measurement.')
  parser.add_argument('--worker_processes', type=int, default=2)
  parser.add_argument('--json', action='store_true', help='One JSON object instead of a table.')
  args = parser.parse_args()
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags; their defaults are wanted here.
  results = {}
  for name in DATASETS:
    prepare_dataset(args.data_dir, name, args.examples)
    results[name] = measure(args.data_dir, name, args.batch_size, args.batches,
                            args.worker_processes)
  if args.json:
    print(json.dumps({name: {k: round(v, 1) for k, v in r.items()} for name, r in results.items()}))
    return
  print(f'images/s on {os.cpu_count()} CPU cores, {args.examples} images, batch {args.batch_size}')
  print(f'{"":20s}' + ''.join(f'{name:>12s}' for name in results))
  for key in results['digits28']:
    print(f'{key:20s}' + ''.join(f'{r[key]:12,.0f}' for r in results.values()))


if __name__ == '__main__':
  main()
