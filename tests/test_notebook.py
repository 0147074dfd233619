"""docs/from_python.ipynb runs top to bottom, as a user runs it, and says what its text says."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO

NOTEBOOK = os.path.join(REPO, 'docs', 'from_python.ipynb')


def test_the_notebook_runs_top_to_bottom(tmp_path):
  with open(NOTEBOOK, encoding='utf-8') as f:
    cells = json.load(f)['cells']
  code = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
  assert len(code) >= 5
  # Each cell in order in one interpreter, as a kernel runs them, from a directory of its own.
  script = '\n\n'.join(f'# ---- cell {i}\n{text}' for i, text in enumerate(code, 1))
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  trained = re.search(r'^test accuracy: ([\d.]+)% on 360 digits$', out, re.M)
  evaluated = re.search(r'^accuracy ([\d.]+)%, loss', out, re.M)
  assert trained and evaluated and trained[1] == evaluated[1]  # The same checkpoint, tested.
  difference = re.search(r'ONNX and cnn_jax probabilities: (\S+)$', out, re.M)
  assert difference and float(difference[1]) <= 1e-5
  assert (tmp_path / 'runs' / 'notebook_digits' / 'onnx' / 'model.onnx').exists()
