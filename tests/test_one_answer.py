"""One run, one answer: the final line, `evaluate`, `cnn_jax.load(...).evaluate` and the report's
headline name the same checkpoint and the same test accuracy by default."""

import re
import subprocess
import sys

import pytest

import cnn_jax
from conftest import REPO


def test_every_reader_of_a_workdir_gives_the_final_lines_checkpoint_and_accuracy(tmp_path):
  pytest.importorskip('matplotlib')
  workdir = str(tmp_path / 'digits')
  command = lambda *args: subprocess.run([sys.executable, '-m', 'cnn_jax', *args], cwd=REPO,
                                         capture_output=True, text=True, timeout=300, check=True)
  trained = command('train', '--config', 'digits', '--workdir', workdir,
                    '--config.progress_bar=False')
  final = re.search(r'Final test accuracy: ([\d.]+)% \((\d+)/360\) of the checkpoint at step '
                    r'(\d+), chosen on validation', trained.stdout)
  accuracy, step = final[1], int(final[3])
  evaluated = command('evaluate', '--workdir', workdir, '--split', 'test').stdout
  assert f'at step {step:,}, the one the run chose on validation' in evaluated
  assert f'accuracy {accuracy}%' in evaluated
  classifier = cnn_jax.load(workdir)
  assert classifier.step == step and 'chose on validation' in classifier.checkpoint
  assert f'{classifier.evaluate("test")["accuracy"]:.2%}' == f'{accuracy}%'
  command('report', '--workdir', workdir)
  page = (tmp_path / 'digits' / 'report' / 'index.html').read_text(encoding='utf-8')
  headline = re.search(r'<p>Checkpoint step ([\d,]+), the one the run chose on validation\. On '
                       r'split test: accuracy\s*<b>([\d.]+)%</b>', page)
  assert headline and int(headline[1].replace(',', '')) == step and headline[2] == accuracy
  latest = command('evaluate', '--workdir', workdir, '--split', 'test', '--checkpoint',
                   'latest').stdout
  assert 'at step 900' in latest  # Another checkpoint, when asked for.
