"""CSV-labelled images in, a predictions CSV out, and the score of one against held-out labels."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data, score
from cnn_jax.serving import inference
from cnn_jax.training import train
from cnn_jax.data import csv_labels, images
from cnn_jax.errors import UserError
from conftest import REPO, load_config


def _images(directory, names):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in names:
    Image.fromarray(rng.integers(0, 255, (6, 6)).astype(np.uint8)).save(directory / name)


def _csv(path, rows, header=('filename', 'label')):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    csv.writer(f).writerows([header, *rows])


def test_string_labels_ids_without_extension_and_every_row_problem(tmp_path):
  _images(tmp_path / 'img', ['a.png', 'b.png', 'c.jpg', '7.png'])
  _csv(tmp_path / 'train.csv', [('a.png', 'dog'), ('b', 'cat'), ('c', 'dog'), ('gone.png', 'cat'),
                                ('a.png', 'dog'), ('7', 'cow')])
  index, problems = csv_labels.index_csv(str(tmp_path / 'train.csv'), str(tmp_path / 'img'),
                                         class_names=('cat', 'dog'))
  assert index.class_names == ('cat', 'dog')
  assert [os.path.basename(f) for f in index.files] == ['a.png', 'b.png', 'c.jpg']
  assert index.labels == (1, 0, 1)
  where = {w.rsplit(':', 1)[1]: why for w, why in problems}  # Line numbers, header = line 1.
  assert "file 'gone.png' not found" in where['5']
  assert 'repeats line 2' in where['6']
  assert "label 'cow' is not one of the classes" in where['7']


def test_integer_labels_sort_numerically_and_columns_are_found(tmp_path):
  _images(tmp_path / 'img', [f'{i}.png' for i in range(12)])
  _csv(tmp_path / 'labels.csv', [(i, i % 11) for i in range(12)], header=('id', 'target'))
  index, problems = csv_labels.index_csv(str(tmp_path / 'labels.csv'), str(tmp_path / 'img'))
  assert not problems
  assert index.class_names == tuple(str(i) for i in range(11))  # '2' before '10'.
  assert index.labels[10] == 10 and index.labels[11] == 0
  with pytest.raises(UserError, match="no column 'klass'"):
    csv_labels.index_csv(str(tmp_path / 'labels.csv'), str(tmp_path / 'img'),
                         label_column='klass')


def test_too_many_bad_rows_stop_the_run_with_line_numbers(tmp_path):
  _images(tmp_path / 'img', ['a.png', 'b.png'])
  _csv(tmp_path / 'train.csv', [('a.png', 'x'), ('b.png', 'y'), ('nope.png', 'x')])
  spec = data.DataSpec('csv', path=str(tmp_path / 'img'), csv=str(tmp_path / 'train.csv'),
                       image_size=6, channels=1, validation_fraction=0.0, cache=False)
  with pytest.raises(UserError, match=r'1 of 3 rows .*train.csv:4: file .nope.png. not found'):
    data.load_split(spec, 'train')
  loaded = data.load_split(dataclass_replace(spec, max_skip_fraction=0.5), 'train')
  assert len(loaded) == 2 and 'not found' in loaded.skipped[0][1]


def test_one_source_parses_its_csv_once(tmp_path, monkeypatch):
  _images(tmp_path / 'img', [f'{i}.png' for i in range(8)])
  _csv(tmp_path / 'train.csv', [(f'{i}.png', 'ab'[i % 2]) for i in range(8)])
  calls = []
  index_csv = csv_labels.index_csv
  monkeypatch.setattr(csv_labels, 'index_csv',
                      lambda *args: calls.append(args[0]) or index_csv(*args))
  source = data.open_source(data.DataSpec('csv', path=str(tmp_path / 'img'),
                                          csv=str(tmp_path / 'train.csv'), image_size=6))
  source.describe()
  data.load_dataset(source, 'train', 'validation')
  data.stream_dataset(source, 'train', 'validation')
  assert calls == [str(tmp_path / 'train.csv')]


def test_a_cached_csv_split_reports_its_bad_rows_and_unreadable_files(tmp_path, monkeypatch):
  _images(tmp_path / 'img', [f'{i}.png' for i in range(9)])
  (tmp_path / 'img' / '9.png').write_bytes(b'not a png')
  _csv(tmp_path / 'train.csv', [(f'{i}.png', 'ab'[i % 2]) for i in range(10)] + [('x.png', 'a')])
  spec = data.DataSpec('csv', path=str(tmp_path / 'img'), csv=str(tmp_path / 'train.csv'),
                       image_size=6, validation_fraction=0.0, max_skip_fraction=0.2)
  decoded = data.load_split(spec, 'train')
  assert [why.split()[0] for _, why in decoded.skipped] == ['file', 'not']  # Row, then image.
  monkeypatch.setattr(images, 'load_resized', lambda *args: 1 / 0)  # No decoding from here on.
  cached = data.load_split(spec, 'train')
  assert cached.skipped == decoded.skipped and len(cached) == 9
  np.testing.assert_array_equal(cached.images, decoded.images)


def dataclass_replace(spec, **changes):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(spec, **changes)


def test_score_matches_by_file_stem_and_counts_failures_as_wrong(tmp_path):
  _csv(tmp_path / 'pred.csv', [('test/1.png', 'cat', '0.9', ''), ('test/2.png', '', '', 'bad'),
                               ('test/3.png', 'dog', '0.8', ''), ('test/9.png', 'dog', '1', '')],
       header=('file', 'prediction', 'probability', 'error'))
  _csv(tmp_path / 'truth.csv', [(1, 'cat'), (2, 'dog'), (3, 'cat'), (4, 'dog')], ('id', 'label'))
  result = score.score(str(tmp_path / 'pred.csv'), str(tmp_path / 'truth.csv'))
  assert result == {'accuracy': 0.25, 'correct': 1, 'scored': 4, 'missing': 1, 'unreadable': 1,
                    'extra': 1}


@pytest.fixture(scope='module')
def practice_problem(tmp_path_factory):
  """The worked example, as the README runs it: make the data, train from the CSV config."""
  root = tmp_path_factory.mktemp('practice')
  subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'csv_digits',
                                               'make_dataset.py'), '--out', str(root / 'data')],
                 check=True, capture_output=True, timeout=120)
  config = load_config('csv_digits')
  config.data.path, config.data.csv = str(root / 'data' / 'train'), str(root / 'data' /
                                                                         'train.csv')
  config.num_steps, config.progress_bar = 440, False
  metrics = train.train_and_evaluate(config, str(root / 'run'))
  return root, metrics


def test_worked_example_trains_predicts_a_test_folder_and_scores_it(practice_problem):
  root, metrics = practice_problem
  assert metrics['count'] == 216 and metrics['accuracy'] > 0.9  # 15% of 1,437 held out.
  test_dir = root / 'data' / 'test'
  (test_dir / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax.predict', '--workdir', str(root / 'run'), '--csv',
       str(root / 'pred.csv'), '--all_probabilities', str(test_dir)],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert '1 files could not be read' in result.stdout
  with open(root / 'pred.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 361 and len(rows[0]) == 4 + 10
  bad = [r for r in rows if r['file'] == 'corrupt.png'][0]
  assert bad['prediction'] == '' and 'not a readable image' in bad['error']
  good = [r for r in rows if not r['error']]
  assert all(abs(sum(float(r[f'probability_{k}']) for k in range(10)) - 1) < 1e-4 for r in good)
  scored = score.score(str(root / 'pred.csv'), str(root / 'data' / 'test_labels.csv'))
  assert scored['scored'] == 360 and scored['missing'] == 0 and scored['accuracy'] > 0.9


def test_csv_predictions_equal_printed_predictions(practice_problem):
  root, _ = practice_problem
  trained = inference.load_trained(str(root / 'run'))
  files = sorted(str(p) for p in (root / 'data' / 'test').glob('14*.png'))
  batched = inference.predict_files(trained, files, batch_size=7)
  single = [inference.predict_files(trained, [f], batch_size=1)[0] for f in files]
  assert [b.top_k[0][0] for b in batched] == [s.top_k[0][0] for s in single]
  np.testing.assert_allclose([b.probabilities for b in batched],
                             [s.probabilities for s in single], rtol=1e-5, atol=1e-7)
