"""A sweep's results: one row per trial, as CSV and Markdown, the best config, and Optuna's
figures of the study."""

import csv
import json
import os
import warnings

import numpy as np

from cnn_jax.sweeps import space as sweep_space

SWEEP_FILE = 'sweep.json'  # The sweep's definition, beside its study and results.
COLUMNS = ('trial', 'best_eval_accuracy', 'final_eval_accuracy', 'test_accuracy', 'steps',
           'seconds', 'status', 'workdir')


def trial_rows(study, params) -> list[dict]:
  """One dict per trial (superseded retries left out), best first; swept keys are columns too."""
  import optuna  # pylint: disable=g-import-not-at-top
  states = optuna.trial.TrialState
  rows = []
  for trial in study.get_trials(deepcopy=False):
    attrs = trial.user_attrs
    if attrs.get('status') == 'interrupted, retried':
      continue  # Its retry (same parameters, same workdir) carries the result.
    status = trial.state.name.lower() + (f": {attrs['status']}" if 'status' in attrs else '')
    row = {'trial': trial.number, **sweep_space.values_of(params, trial.params),
           'best_eval_accuracy': trial.value if trial.state == states.COMPLETE else None,
           'final_eval_accuracy': attrs.get('final_accuracy'),
           'test_accuracy': attrs.get('test_accuracy'), 'steps': attrs.get('steps'),
           'seconds': attrs.get('seconds'), 'status': status, 'workdir': attrs.get('workdir')}
    rows.append(row)
  order = {states.COMPLETE.name.lower(): 0, states.PRUNED.name.lower(): 1}
  return sorted(rows, key=lambda r: (order.get(r['status'].split(':')[0], 2),
                                     -(r['best_eval_accuracy'] or 0), r['trial']))


def _columns(params) -> list[str]:
  return ['trial', *(p.key for p in params), *COLUMNS[1:]]


def _cell(column: str, value, params) -> str:
  if value is None:
    return ''
  if column in {p.key for p in params}:
    return str(value)  # A swept value exactly as given: 1e-07 stays 1e-07.
  if isinstance(value, float):
    return f'{value:.4f}' if column.endswith('accuracy') else f'{value:g}'
  return str(value)


def write_csv(rows: list[dict], params, path: str) -> None:
  """Writes the leaderboard as CSV."""
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(_columns(params))
    writer.writerows([[_cell(c, row.get(c), params) for c in _columns(params)] for row in rows])


def to_markdown(rows: list[dict], params) -> str:
  """The leaderboard as a Markdown table (without the workdir column)."""
  columns = [c for c in _columns(params) if c != 'workdir']
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_cell(c, row.get(c), params) for c in columns) + ' |'
            for row in rows]
  return '\n'.join(lines)


def write_best_config(row: dict, config, params, path: str) -> None:
  """Writes the best trial's full config as a file that `--config` accepts."""
  best = sweep_space.apply(config, {p.key: row[p.key] for p in params})
  best.progress_bar = True
  text = json.dumps(json.loads(best.to_json_best_effort()), indent=2, sort_keys=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'"""The best trial ({row["trial"]}) of the sweep in {os.path.dirname(path)}: '
            f'best eval accuracy {row["best_eval_accuracy"]:.4f}.\n\n'
            f'    python -m cnn_jax.main --config {path} --workdir runs/best\n"""\n\n'
            'import json\n\nimport ml_collections\n\n\ndef get_config():\n'
            '  """Returns the best trial\'s config."""\n'
            f"  return ml_collections.ConfigDict(json.loads(r'''{text}'''))\n")


# Optuna's own figures of a sweep, in the order the sweep's page shows them: file → title.
OPTUNA_FIGURES = {
    'history.png': 'Optimisation history: each trial\'s best eval accuracy, and the best so far',
    'slice.png': 'Best eval accuracy against each swept value',
    'importances.png': 'Which swept keys mattered (fANOVA importance)',
    'parallel.png': 'Parallel coordinates: every finished trial across the swept keys',
}


def _readable_study(study, params):
  """The study's finished trials in a study in memory, with each list choice as written (the
  study itself stores the index of a choice)."""
  import optuna  # pylint: disable=g-import-not-at-top
  labels = {p.key: [json.dumps(v) if not isinstance(v, str) else v for v in p.values]
            for p in params if p.kind == 'choice'}
  shown = optuna.create_study(direction='maximize')
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
    values, distributions = dict(trial.params), dict(trial.distributions)
    for key, names in labels.items():
      if key in values:
        values[key] = names[values[key]]
        distributions[key] = optuna.distributions.CategoricalDistribution(names)
    shown.add_trial(optuna.trial.create_trial(params=values, distributions=distributions,
                                              value=trial.value))
  return shown


def optuna_figures(study, params, directory: str) -> dict[str, str | None]:
  """Draws OPTUNA_FIGURES into `directory` with Optuna's matplotlib plots; returns, per file,
  None if drawn, else why not (a plot that needs more finished trials than there are)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as plots  # pylint: disable=g-import-not-at-top
  shown = _readable_study(study, params)
  draw = {'history.png': plots.plot_optimization_history, 'slice.png': plots.plot_slice,
          'importances.png': plots.plot_param_importances,
          'parallel.png': plots.plot_parallel_coordinate}
  outcome = {}
  for name, plot in draw.items():
    path = os.path.join(directory, name)
    if os.path.exists(path):
      os.remove(path)  # A figure of earlier results must not outlive them.
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      try:
        axes = plot(shown, target_name='best eval accuracy')
      except (ValueError, RuntimeError) as e:
        outcome[name] = str(e).split('\n', 1)[0]
        continue
    figure = np.asarray(axes).flat[0].figure
    figure.set_size_inches(max(figure.get_size_inches()[0], 7), 4.5)
    figure.tight_layout()
    figure.savefig(path, dpi=80, bbox_inches='tight')
    plt.close(figure)
    outcome[name] = None
  return outcome
