"""A run's report, for `python -m cnn_jax.report`: W/report/index.html with PNG figures beside it.

Training curves, the confusion matrix with per-class precision, recall and F1, the first layer's
filters and the image patches that excite each most, the feature maps of every conv and pooling
layer for one image, one of them pooled three ways (max, average, L2), Grad-CAM maps of where
the evidence for each prediction lies (and, for --image, that image explained), and the most
confidently wrong examples, with the config, the model summary and the final metrics; for a
sweep's workdir, its leaderboard and the metric against each swept value. Everything comes from
the workdir.
"""

import html
import json
import os
import shutil

import flax.linen as nn
import numpy as np

from cnn_jax.errors import UserError
from cnn_jax.models import layers, summary
from cnn_jax.reporting import figures
from cnn_jax.runtime.writers import read_metrics
from cnn_jax.sweeps.leaderboard import OPTUNA_FIGURES, SWEEP_FILE
from cnn_jax.reporting import saliency
from cnn_jax.serving import inference

MAX_FEATURE_LAYERS = 12  # Rows of the feature-map figure; a ResNet has dozens of layers.
NUM_MISTAKES = 12
CAM_CLASSES, CAM_PER_CLASS = 10, 2  # Grad-CAM panels: the first images of the first classes.
PATCH_SEARCH = 2_000  # Images searched for the patches that excite each first-layer filter.
PATCHES_PER_FILTER = 3
PATCH_FILTERS = 16  # Filters shown with their patches: a legible figure.
TOP_CLASSES = 5  # Probabilities shown beside an explained --image.


def _capture(trained, image: np.ndarray, layer_names: list[str]) -> list[tuple[str, np.ndarray]]:
  """Returns (name, activations [H, W, C]) of the named layers for one normalised image."""
  kinds = (nn.Conv, layers.Pool)
  wanted = lambda module, method: method == '__call__' and isinstance(module, kinds)
  _, state = trained.model.apply(trained.variables, image[None], train=False,
                                 capture_intermediates=wanted, mutable=['intermediates'])
  captured = []
  for name in layer_names:
    node = state['intermediates']
    for part in name.split('/'):
      node = node[part]
    captured.append((name, np.asarray(node['__call__'][0][0])))
  return captured


def _feature_map_input(trained, examples, image_path: str | None):
  """Returns (raw image to show, normalised image to run) from --image or the first example."""
  if image_path is None:
    raw = examples.images[0]
    return raw, trained.normalizer(raw)
  arrays, errors = inference.decode_files(trained, [image_path])
  if arrays[0] is None:
    raise UserError(f'--image {image_path!r}: {errors.get(image_path)}')
  return arrays[0], inference.file_normalizer(trained)(arrays[0])


def _mistake_panels(examples, logits: np.ndarray, class_names) -> tuple[np.ndarray, list[str]]:
  probabilities = inference.softmax(logits)
  predicted = probabilities.argmax(-1)
  wrong = np.flatnonzero(predicted != examples.labels)
  worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind='stable')][:NUM_MISTAKES]
  titles = [f'true {class_names[examples.labels[i]]}\npredicted {class_names[predicted[i]]} '
            f'({probabilities[i, predicted[i]]:.0%})' for i in worst]
  return examples.images[worst], titles


def _per_class(labels: np.ndarray, classes: int, per_class: int) -> np.ndarray:
  """Indices of the first `per_class` examples of each of the first `classes` classes."""
  return np.asarray([i for c in range(classes) for i in np.flatnonzero(labels == c)[:per_class]],
                    np.int64)


def _explanations(trained, examples, examples_name, logits, rows, shown, normalised, image_path,
                  path):
  """The report's sections that explain the model: Grad-CAM maps (and --image explained), the
  patches that excite the first layer's filters most, and pooling shown on one feature map."""
  names = trained.info.class_names
  target = saliency.cam_target(trained.model, trained.variables, trained.info.image_shape)
  probabilities = inference.softmax(logits)
  predicted = probabilities.argmax(-1)
  picks = _per_class(examples.labels, min(CAM_CLASSES, len(names)), CAM_PER_CLASS)
  cams = saliency.grad_cam(trained.model, trained.variables,
                           trained.normalizer(examples.images[picks]), predicted[picks], target)
  titles = [f'true {names[examples.labels[i]]}\npredicted {names[predicted[i]]} '
            f'({probabilities[i, predicted[i]]:.0%})' for i in picks]
  sections = [(f'Grad-CAM: where the evidence for the predicted class lies (read at '
               f'{target.description}, {"×".join(map(str, target.shape))}; red: strongest)',
               figures.grad_cam_grid(examples.images[picks], cams, titles, path('grad_cam.png'),
                                     target.description))]
  if image_path:
    image_logits = np.asarray(inference.trained_logits(trained, trained.variables,
                                                       normalised[None]))
    image_probabilities = inference.softmax(image_logits)[0]
    order = np.argsort(-image_probabilities)[:TOP_CLASSES]
    cam = saliency.grad_cam(trained.model, trained.variables, normalised[None], order[:1],
                            target)[0]
    top = [(names[k], float(image_probabilities[k])) for k in order]
    sections.insert(0, (f'{os.path.basename(image_path)}: the prediction and its evidence',
                        figures.image_explained(shown, cam, top, path('image_explained.png'),
                                                target.description)))
  first_conv = next(r for r in rows if r.kind == 'Conv')
  sample = examples.images[:PATCH_SEARCH]
  outputs = saliency.layer_outputs(trained.model, trained.variables,
                                   trained.normalizer(sample), first_conv.name)
  outputs = outputs[..., :PATCH_FILTERS]
  patches = saliency.strongest_patches(sample, outputs, first_conv, PATCHES_PER_FILTER)
  kernel = np.asarray(_params_of(trained, first_conv.name)['kernel'])[..., :PATCH_FILTERS]
  sections.append((f'What the filters of {first_conv.name} look for: each one\'s weights, then '
                   f'the {PATCHES_PER_FILTER} patches of {len(sample):,} {examples_name} images '
                   'that excite it most' + (f' (the first {PATCH_FILTERS} filters)'
                                            if first_conv.output_shape[-1] > PATCH_FILTERS else ''),
                   figures.strongest_patches(kernel, patches, path('patches.png'),
                                             f'{first_conv.name}: filters and their strongest '
                                             'input patches')))
  activation = layers.get_activation(trained.config.model.get('activation', 'relu'))
  maps = np.asarray(activation(_capture(trained, normalised, [first_conv.name])[0][1]))
  channel = int(np.argmax(maps.reshape(-1, maps.shape[-1]).std(0)))  # The most varied map.
  window = 2 if min(maps.shape[:2]) >= 4 else 1
  if window > 1:
    sections.append((f'Pooling one feature map ({first_conv.name}, channel {channel}, after the '
                     'activation) three ways, on one colour scale: max keeps the strongest '
                     'response of each window, average its mean, L2 the root of its sum of '
                     'squares',
                     figures.pooling(maps[..., channel], saliency.pooled_three_ways(
                         maps[..., channel], window), path('pooling.png'),
                         f'{first_conv.name}, channel {channel}', window)))
  return sections


def _params_of(trained, layer: str) -> dict:
  """The parameters of the module at path `layer` ('stage1_block0/conv_0')."""
  node = trained.variables['params']
  for part in layer.split('/'):
    node = node[part]
  return node


def build_sweep_report(workdir: str) -> str:
  """For a sweep's workdir: the search space as written, the leaderboard and Optuna's figures."""
  table = os.path.join(workdir, 'leaderboard.md')
  if not os.path.exists(table):
    raise UserError(f'{workdir} is a sweep without results yet; run its cnn_jax.sweep command '
                    'to the end first.')
  out = os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  with open(table, encoding='utf-8') as f:
    rows = [line.strip().strip('|').split('|') for line in f if line.startswith('|')]
  header, body = rows[0], rows[2:]
  cells = lambda row, tag: ''.join(f'<{tag}>{html.escape(c.strip())}</{tag}>' for c in row)
  figures_html = ''
  for name, title in OPTUNA_FIGURES.items():  # Those the sweep could draw.
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), os.path.join(out, name))
      figures_html += f'<h2>{html.escape(title)}</h2><img src="{name}" alt="{html.escape(title)}">'
  with open(os.path.join(workdir, SWEEP_FILE), encoding='utf-8') as f:
    definition = json.load(f)
  # As written on the command line; sweeps recorded before that was kept show their parsed form.
  swept = definition.get('search_space') or definition['sweep']
  index = os.path.join(out, 'index.html')
  with open(index, 'w', encoding='utf-8') as f:
    f.write(f'''<!doctype html>
<html><head><meta charset="utf-8"><title>cnn_jax sweep: {html.escape(workdir)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
td,th{{padding:0 .8em;text-align:right}}</style></head><body>
<h1>Sweep {html.escape(os.path.basename(os.path.abspath(workdir)))}</h1>
<p>Sampler {html.escape(str(definition["sampler"]))}; search space:
{"".join(f"<br><code>{html.escape(text)}</code>" for text in swept)}</p><p>
Each trial's own report: <code>cnn-jax report --workdir TRIAL_WORKDIR</code>.</p>
<h2>Leaderboard</h2><table><tr>{cells(header, "th")}</tr>
{"".join(f"<tr>{cells(row, 'td')}</tr>" for row in body)}</table>
{figures_html}
</body></html>
''')
  return index


def build_report(workdir: str, which: str = 'best', image_path: str | None = None,
                 split: str | None = None) -> str:
  """Writes workdir/report/ (figures + index.html); returns the path of index.html.

  A sweep's workdir gets the sweep's report instead (see `build_sweep_report`).
  """
  if os.path.exists(os.path.join(workdir, SWEEP_FILE)):
    return build_sweep_report(workdir)
  trained = inference.load_trained(workdir, which)
  # The test split where the run has one: the report describes the model, it chooses nothing.
  split = split or trained.config.data.test_split or trained.config.data.eval_split
  out = os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  path = lambda name: os.path.join(out, name)

  records = read_metrics(workdir)
  examples, logits = inference.split_logits(trained, split)
  metrics = inference.evaluation_report(trained, split, examples.labels, logits)
  rows = summary.summarize(trained.model, trained.info.image_shape, trained.variables)
  first_conv = next(r for r in rows if r.kind == 'Conv')
  kernel = _params_of(trained, first_conv.name)
  filters_shape = (f'{kernel["kernel"].shape[-1]} filters of '
                   f'{"×".join(map(str, kernel["kernel"].shape[:3]))}')  # kh×kw×C_in
  shown, normalised = _feature_map_input(trained, examples, image_path)
  layer_names = [r.name for r in rows if r.kind in ('Conv', 'Pool')][:MAX_FEATURE_LAYERS]
  bad_images, bad_titles = _mistake_panels(examples, logits, trained.info.class_names)

  sections = [
      ('Training curves', figures.training_curves(records, path('curves.png'))),
      (f'Confusion matrix on {split!r}',
       figures.confusion(np.asarray(metrics['confusion_matrix']), metrics['class_names'],
                         path('confusion.png'))),
      (f'Learned filters of {first_conv.name}: {filters_shape}',
       figures.filter_grid(np.asarray(kernel['kernel']), path('filters.png'),
                           f'{first_conv.name}: {filters_shape}')),
      ('Feature maps' + (f' of {os.path.basename(image_path)}' if image_path else
                         f' of the first {split!r} image')
       + ' (conv outputs before the activation; pooling after it)',
       figures.feature_maps(shown, _capture(trained, normalised, layer_names),
                            path('feature_maps.png'))),
      ('Most confidently wrong', figures.mistakes(bad_images, bad_titles, path('mistakes.png'))),
  ]
  sections[3:3] = _explanations(trained, examples, repr(split), logits, rows, shown, normalised,
                                image_path, path)
  index = path('index.html')
  with open(index, 'w', encoding='utf-8') as f:
    f.write(_html(trained, metrics, summary.format_summary(rows), sections,
                  next((r for r in reversed(records) if r['split'] == 'test'), None)))
  return index


def _percent(value: float | None) -> str:
  return '' if value is None else f'{value:.2%}'


def _tested(trained, metrics: dict, test: dict | None) -> str:
  """The run's test result as a paragraph: the split evaluated once, at the end of training (or
  that the headline is that figure: the same checkpoint on the same split)."""
  data = trained.config.data
  if test is None:
    return ''
  if int(test['checkpoint_step']) == trained.step and metrics['split'] == data.test_split:
    return ('<p>The run\'s final figure: the test split evaluated once at the end on the '
            f'checkpoint chosen on {html.escape(data.eval_split)}.</p>')
  return (f'<p>Test split {html.escape(data.test_split)}, evaluated once at the end on the '
          f'checkpoint chosen on {html.escape(data.eval_split)} (step '
          f'{int(test["checkpoint_step"]):,}): accuracy <b>{test["accuracy"]:.2%}</b>, loss '
          f'{test["loss"]:.4f}, {int(test["count"]):,} images.</p>')


def _html(trained, metrics: dict, summary_text: str, sections, test: dict | None = None) -> str:
  esc = html.escape
  per_class = ''.join(
      f'<tr><td>{esc(name)}</td><td>{row["correct"]}/{row["count"]}</td>'
      f"<td>{_percent(row['accuracy'])}</td><td>{_percent(row.get('precision'))}</td>"
      f"<td>{_percent(row.get('f1'))}</td></tr>"
      for name, row in metrics['per_class'].items())
  figures_html = ''.join(f'<h2>{esc(title)}</h2><img src="{os.path.basename(png)}" '
                         f'alt="{esc(title)}">' for title, png in sections)
  return f'''<!doctype html>
<html><head><meta charset="utf-8"><title>cnn_jax report: {esc(trained.workdir)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
pre{{background:#f5f5f5;padding:1em;overflow-x:auto}} td{{padding:0 1em}}</style></head><body>
<h1>{esc(os.path.basename(os.path.abspath(trained.workdir)))}</h1>
<p>Checkpoint {esc(trained.checkpoint)}. On split {esc(metrics["split"])!s}: accuracy
<b>{metrics["accuracy"]:.2%}</b>, loss {metrics["loss"]:.4f}, {metrics["count"]:,} images.</p>
{_tested(trained, metrics, test)}
<table><tr><th>class</th><th>correct</th><th>accuracy (recall)</th><th>precision</th>
<th>F1</th></tr>{per_class}</table>
{figures_html}
<h2>Model</h2><pre>{esc(summary_text)}</pre>
<h2>Config</h2><pre>{esc(json.dumps(trained.config.to_dict(), indent=2, default=str))}</pre>
</body></html>
'''
