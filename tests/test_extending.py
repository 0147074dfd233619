"""A new model and a new loss, defined and registered outside the package, train through the
command line (experiments/extending/all_conv_focal.py)."""

import json
import os
import subprocess
import sys

from conftest import REPO

EXAMPLE = os.path.join(REPO, 'experiments', 'extending', 'all_conv_focal.py')


def test_a_model_and_a_loss_from_outside_the_package_train_the_digits(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'cnn_jax', 'train', '--config', f'{EXAMPLE}:small', '--workdir',
       str(workdir), '--config.progress_bar=False'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert 'head    Conv   2x2x10' in result.stdout  # The registered model, in the summary.
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['model']['name'] == 'all_conv' and saved['loss'] == 'focal'
  test = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()][-1]
  assert test['split'] == 'test' and test['accuracy'] > 0.6  # 3 epochs; chance is 0.1.
  # The package itself knows neither.
  for directory, _, names in os.walk(os.path.join(REPO, 'cnn_jax')):
    for name in names:
      if name.endswith('.py'):
        with open(os.path.join(directory, name), encoding='utf-8') as f:
          text = f.read()
        assert 'all_conv' not in text and 'focal' not in text, name
