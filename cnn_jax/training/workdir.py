"""What a workdir records about its run: the resolved config, library versions and git commit.

With these beside the metrics, a result can be reproduced and later tools need only `--workdir`.
"""

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import subprocess

import ml_collections

from cnn_jax.configs import default
from cnn_jax.data import DatasetInfo, Normalizer
from cnn_jax.errors import UserError

CONFIG_FILE = 'config.json'
VERSIONS_FILE = 'versions.json'
DATASET_FILE = 'dataset.json'
POPULATION_FILE = 'population.json'  # Written by a population beside its members' workdirs.
# The version of config.json's layout, written into it as SCHEMA_KEY; a file without it is 1.
# 2: the speed settings moved from the top level (and population.vectorize) into config.speed.
SCHEMA = 2
SCHEMA_KEY = 'config_schema'
_PACKAGES = ('cnn_jax', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections',
             'tensorflow-datasets', 'numpy')


def library_versions() -> dict[str, str]:
  """Returns {package: version} for the libraries a result depends on, plus Python and git."""
  versions = {'python': platform.python_version()}
  for package in _PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = 'not installed'
  versions['git_commit'] = _git_commit()
  return versions


def _git_commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True,
                         timeout=5, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                           capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    return out + ('-dirty' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'  # Installed from a wheel, or git missing.


def check_workdir(path: str) -> None:
  """Checks that `path` is a directory, or can be made one, that this process may write in.

  Raises:
    UserError: `path` is a file, lies under a file, or under a directory that is not writable.
  """
  if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', path):
    raise UserError(f'--workdir {path!r}: cnn_jax writes its workdir through the local '
                    'filesystem; mount the bucket or share (e.g. gcsfuse, s3fs, NFS) and give '
                    'the mounted path.')
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'--workdir {path!r} is a file; give a directory (it is created if missing).')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f'--workdir {path!r} lies under {existing!r}, which is a file, not a '
                    'directory.')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f'--workdir {path!r}: {existing!r} is not writable by this user; choose a '
                    'directory you can write to.')


def save_run_record(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config and the library versions into `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  record = {**json.loads(config.to_json_best_effort()), SCHEMA_KEY: SCHEMA}
  with open(os.path.join(workdir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    f.write(json.dumps(record, indent=2, sort_keys=True) + '\n')
  with open(os.path.join(workdir, VERSIONS_FILE), 'w', encoding='utf-8') as f:
    json.dump(library_versions(), f, indent=2)
    f.write('\n')


def save_dataset_record(workdir: str, info: DatasetInfo, normalizer: Normalizer) -> None:
  """Writes what inference needs to know of the data: classes, image shape, normalisation."""
  record = {'info': dataclasses.asdict(info), 'normalizer': dataclasses.asdict(normalizer)}
  with open(os.path.join(workdir, DATASET_FILE), 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
    f.write('\n')


def load_dataset_record(workdir: str) -> tuple[DatasetInfo, Normalizer]:
  """Returns the (info, normalizer) saved by `save_dataset_record`.

  Raises:
    UserError: `workdir` has no dataset record (not a cnn_jax training workdir).
  """
  path = os.path.join(workdir, DATASET_FILE)
  if os.path.exists(os.path.join(workdir, POPULATION_FILE)):
    raise UserError(f'{workdir!r} holds a population of models; pass one member\'s directory, '
                    f'e.g. {os.path.join(workdir, "member_00")!r} (population.json ranks them).')
  if not os.path.exists(path):
    raise UserError(f'{workdir!r} is not a cnn_jax training workdir (no {DATASET_FILE}); '
                    'pass the --workdir of a run of cnn-jax train.')
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  info = record['info']
  info = DatasetInfo(info['name'], info['num_classes'], tuple(info['class_names']),
                     tuple(info['image_shape']))
  norm = record['normalizer']
  return info, Normalizer(norm['max_value'], tuple(norm['mean']), tuple(norm['std']))


def load_run_config(workdir: str) -> ml_collections.ConfigDict | None:
  """Returns the config saved in `workdir` by `save_run_record`, brought up to today's layout
  (`upgrade_config`), or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(upgrade_config(json.load(f)))


def upgrade_config(record: dict) -> dict:
  """Returns a saved config (config.json's contents) in today's layout: the one place that knows
  older workdirs, so no reader needs a fallback.

  Settings moved since are moved; settings added since take their default, except those whose
  absence meant something else: a run saved before `data.test_split` existed had no test split.
  Model settings are left as saved (a config that picks a model gives its whole block).
  """
  record = json.loads(json.dumps(record))  # A deep copy.
  defaults = json.loads(default.get_config().to_json_best_effort())
  if record.pop(SCHEMA_KEY, 1) < 2:  # Schema 1 kept config.speed's settings at the top level.
    speed = record.setdefault('speed', {})
    for key in defaults['speed']:
      if key in record:
        speed[key] = record.pop(key)
    if 'vectorize' in record.get('population', {}):
      speed['population_vectorize'] = record['population'].pop('vectorize')
    record.setdefault('data', {}).setdefault('test_split', '')
  _add_missing(record, defaults)
  return record


def _add_missing(record: dict, defaults: dict) -> None:
  """Adds to `record` each key of `defaults` it lacks, group by group, except config.model's."""
  for key, value in defaults.items():
    if key not in record:
      record[key] = value
    elif isinstance(value, dict) and isinstance(record[key], dict) and key != 'model':
      _add_missing(record[key], value)


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = tuple(value) if isinstance(value, list) else value
  return flat


def config_differences(old: ml_collections.ConfigDict,
                       new: ml_collections.ConfigDict) -> dict[str, str]:
  """Returns {dotted key: 'key: old → new'} for every leaf that differs (JSON round-trip makes
  lists tuples), in key order."""
  old_flat = _flatten(json.loads(old.to_json_best_effort()))
  new_flat = _flatten(json.loads(new.to_json_best_effort()))
  return {key: f'{key}: {old_flat.get(key, "(absent)")!r} → {new_flat.get(key, "(absent)")!r}'
          for key in sorted(set(old_flat) | set(new_flat))
          if old_flat.get(key) != new_flat.get(key)}


# What may change when a run resumes: how long it trains, how it logs, evaluates and saves, and
# where and how the data is read. Anything else (model, optimizer, learning rate, augmentation,
# batch size, seeds, data splits) changes the numbers, and the run's config.json could then no
# longer say how its model was trained.
RESUMABLE_CHANGES = (
    'num_epochs', 'num_steps', 'log_every_steps', 'eval_every_steps', 'progress_bar',
    'stop_on_nan', 'checkpoint.', 'init_from', 'init_layers', 'eval_batch_size', 'speed.', 'compilation_cache',
    'data.test_split', 'data.tfds_data_dir', 'data.download', 'data.path', 'data.csv',
    'data.cache', 'data.stream', 'data.on_device', 'data.workers', 'data.worker_processes',
    'data.prefetch', 'precision',
)


def resumable(key: str) -> bool:
  """Whether a change of config `key` (dotted) may resume a run (see RESUMABLE_CHANGES)."""
  return any(key == k or (k.endswith('.') and key.startswith(k)) for k in RESUMABLE_CHANGES)
