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
    # A retried trial keeps the number it was started under (and its workdir and time).
    row = {'trial': attrs.get('retry_of', trial.number),
           **sweep_space.values_of(params, trial.params),
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


# The figures of a sweep, in the order the sweep's page shows them: file → title.
OPTUNA_FIGURES = {
    'history.png': 'Optimisation history: each trial\'s best eval accuracy, and the best so far',
    'slice.png': 'Best eval accuracy against each swept value (colour: trial number)',
    'importances.png': 'Which swept keys mattered (fANOVA importance)',
    'parallel.png': 'Parallel coordinates: every finished trial across the swept keys (colour: '
                    'its best eval accuracy)',
}
# A colour map with no white end: on a white page every trial stays visible.
_COLOURS = 'viridis'


def _axis_values(param, trials) -> tuple[list, list[str] | None]:
  """Each trial's value of `param` as a number to plot, and the tick labels of a choice (its
  values in the order written; None for a range)."""
  if param.kind == 'choice':
    labels = [json.dumps(v) if not isinstance(v, str) else v for v in param.values]
    return [labels.index(t.params[param.key]) for t in trials], labels
  return [float(t.params[param.key]) for t in trials], None


def _slice_figure(trials, params, plt):
  """Best eval accuracy against each swept key's value, one panel a key, coloured by trial."""
  figure, axes = plt.subplots(1, len(params), figsize=(max(7, 3.5 * len(params)), 4.2),
                              sharey=True, squeeze=False, layout='constrained')
  accuracy = [t.value for t in trials]
  numbers = [t.number for t in trials]
  for axis, param in zip(axes[0], params):
    xs, labels = _axis_values(param, trials)
    drawn = axis.scatter(xs, accuracy, c=numbers, cmap=_COLOURS, edgecolors='black',
                         linewidths=0.5, s=40, zorder=3)
    if labels is not None:
      axis.set_xticks(range(len(labels)), labels, fontsize=8)
      axis.set_xlim(-0.5, len(labels) - 0.5)
    elif param.kind == 'loguniform':
      axis.set_xscale('log')
    axis.set_xlabel(param.key)
    axis.grid(alpha=0.3)
  axes[0, 0].set_ylabel('best eval accuracy')
  figure.colorbar(drawn, ax=list(axes[0]), label='trial')
  return figure


def _parallel_figure(trials, params, plt):
  """One line per finished trial through its value of each swept key and its accuracy."""
  columns = [(p.key, *_axis_values(p, trials)) for p in params]
  columns.append(('best eval accuracy', [t.value for t in trials], None))
  figure, axis = plt.subplots(figsize=(max(7, 2.2 * len(columns)), 4.2), layout='constrained')
  scaled = []
  for _, values, labels in columns:
    low, high = (0, max(len(labels) - 1, 1)) if labels is not None else (min(values),
                                                                         max(values))
    scaled.append([(v - low) / (high - low) if high > low else 0.5 for v in values])
  colours = plt.get_cmap(_COLOURS)
  accuracy = np.asarray(columns[-1][1])
  span = float(accuracy.max() - accuracy.min()) or 1.0
  for i in np.argsort(accuracy):  # The best drawn last, on top.
    axis.plot(range(len(columns)), [s[i] for s in scaled], '-o', markersize=3, linewidth=1.5,
              color=colours((accuracy[i] - accuracy.min()) / span))
  for x, (name, values, labels) in enumerate(columns):
    axis.axvline(x, color='grey', linewidth=0.8)
    shown = labels if labels is not None else [f'{min(values):.4g}', f'{max(values):.4g}']
    for label, y in zip(shown, np.linspace(0, 1, len(shown)) if len(shown) > 1 else [0.5]):
      axis.annotate(label, (x, y), xytext=(4, 0), textcoords='offset points', fontsize=7,
                    va='center')
  axis.set_xticks(range(len(columns)), [c[0] for c in columns], fontsize=8)
  axis.set_yticks([])
  axis.set_xlim(-0.2, len(columns) - 0.5)
  scale = plt.cm.ScalarMappable(plt.Normalize(accuracy.min(), accuracy.min() + span), colours)
  figure.colorbar(scale, ax=axis, label='best eval accuracy')
  return figure


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
  trials = shown.get_trials(deepcopy=False)
  ours = {'slice.png': _slice_figure, 'parallel.png': _parallel_figure}
  draw = {'history.png': plots.plot_optimization_history, 'slice.png': None,
          'importances.png': plots.plot_param_importances, 'parallel.png': None}
  outcome = {}
  for name, plot in draw.items():
    path = os.path.join(directory, name)
    if os.path.exists(path):
      os.remove(path)  # A figure of earlier results must not outlive them.
    if name in ours:
      if len(trials) < 2:
        outcome[name] = 'needs two finished trials'
        continue
      figure = ours[name](trials, params, plt)
    else:
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
