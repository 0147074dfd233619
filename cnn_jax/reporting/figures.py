"""The pictures of a run: curves, confusion matrix, first-layer filters and the patches that excite
them, feature maps, pooling, Grad-CAM maps, mistakes.

Each function takes plain arrays, draws with matplotlib's Agg backend (no display needed) and
saves a PNG. `cnn_jax.report` gathers the arrays from a workdir and calls these.
"""

import math

import matplotlib

matplotlib.use('Agg')  # Files only: works on servers and in CI without a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

DPI = 80  # Small files: a report's PNGs total a few hundred KB.


def _save(figure, path: str) -> str:
  figure.tight_layout()
  figure.savefig(path, dpi=DPI, bbox_inches='tight')  # Titles of several lines are kept whole.
  plt.close(figure)
  return path


def _show(axis, image: np.ndarray, title: str = '') -> None:
  """Draws one image [H, W, C] (C = 1 grey or 3 RGB, values scaled to its own range)."""
  image = np.asarray(image, np.float32)
  low, high = float(image.min()), float(image.max())
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  if image.shape[-1] == 1:
    axis.imshow(image[..., 0], cmap='gray', vmin=0, vmax=1, interpolation='nearest')
  else:
    axis.imshow(image, interpolation='nearest')
  axis.set_xticks([])
  axis.set_yticks([])
  if title:
    axis.set_title(title, fontsize=8)


# The metrics file's splits, in the words the training log prints: its 'eval' split is the
# validation split, where every choice is made; 'test' is scored once, at the end.
CURVES = (('train', 'train', '-'), ('eval', 'validation', 'o-'), ('test', 'test', '*'))


def training_curves(records: list[dict], path: str) -> str:
  """Train, validation and test loss and accuracy against step (top) and wall time in seconds
  (bottom); the test split is one point, scored at the end, drawn where its checkpoint (the one
  chosen on validation) was saved.

  The splits share the axes; the loss is on a log scale, so that the end of training, where it
  falls from 0.05 to 0.01, is as visible as the start, where it falls from 2.3 to 0.3.
  """
  saved_at = {r['step']: r for r in records if r['split'] == 'eval'}
  records = [{**r, **{k: saved_at[r['checkpoint_step']][k] for k in ('step', 'time')}}
             if r['split'] == 'test' and r.get('checkpoint_step') in saved_at else r
             for r in records]
  figure, axes = plt.subplots(2, 2, figsize=(10, 7))
  for row, x_key in enumerate(('step', 'time')):
    for col, metric in enumerate(('loss', 'accuracy')):
      axis = axes[row, col]
      for split, label, style in CURVES:
        points = [(r[x_key], r[metric]) for r in records if r['split'] == split and metric in r]
        if points:
          xs, ys = zip(*points)
          axis.plot(xs, ys, style, label=label, markersize=10 if split == 'test' else 3)
      axis.set_xlabel('step' if x_key == 'step' else 'seconds of training')
      axis.set_ylabel(metric + (' (log scale)' if metric == 'loss' else ''))
      if metric == 'loss' and axis.has_data():
        axis.set_yscale('log')
      axis.grid(alpha=0.3)
      axis.legend()
  return _save(figure, path)


def confusion(matrix: np.ndarray, class_names: list[str], path: str) -> str:
  """The confusion matrix as a heat map with counts, beside per-class accuracy bars."""
  matrix = np.asarray(matrix)
  k = len(class_names)
  figure, (left, right) = plt.subplots(1, 2, figsize=(min(4 + 0.6 * k, 16), 4 + 0.2 * k),
                                       gridspec_kw={'width_ratios': [3, 2]})
  left.imshow(matrix, cmap='Blues')
  left.set_xticks(range(k), class_names, rotation=90 if k > 10 else 0, fontsize=8)
  left.set_yticks(range(k), class_names, fontsize=8)
  left.set_xlabel('predicted class')
  left.set_ylabel('true class')
  if k <= 20:  # Counts stay legible up to 20 classes.
    for i in range(k):
      for j in range(k):
        left.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=7,
                  color='white' if matrix[i, j] > matrix.max() / 2 else 'black')
  totals = matrix.sum(axis=1)
  accuracy = np.divide(np.diag(matrix), totals, out=np.zeros(k), where=totals > 0)
  bars = right.barh(range(k), accuracy, color='tab:blue')
  right.bar_label(bars, [f'{a:.1%}' for a in accuracy], padding=2, fontsize=7)
  right.set_yticks(range(k), class_names, fontsize=8)
  right.invert_yaxis()
  # From a little below the worst class, so that 86% and 100% look different; room on the
  # right for the labels.
  low = max(0.0, float(accuracy.min()) - 0.1 * max(1 - float(accuracy.min()), 0.05))
  right.set_xlim(np.floor(low * 20) / 20, 1.08)
  right.set_xlabel('accuracy per class (recall)')
  right.grid(axis='x', alpha=0.3)
  return _save(figure, path)


def filter_grid(kernel: np.ndarray, path: str, title: str) -> str:
  """A conv kernel [kh, kw, C_in, C_out] as one small image per filter (RGB when C_in = 3)."""
  kernel = np.asarray(kernel, np.float32)
  count = kernel.shape[-1]
  columns = min(count, 8)
  rows = math.ceil(count / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.2 * rows + 0.4),
                              squeeze=False)
  for i, axis in enumerate(axes.flat):
    if i < count:
      weights = kernel[..., i]  # [kh, kw, C_in]
      _show(axis, weights if weights.shape[-1] in (1, 3) else weights.mean(-1, keepdims=True))
    else:
      axis.axis('off')
  figure.suptitle(title, fontsize=9)
  return _save(figure, path)


def feature_maps(image: np.ndarray, layers: list[tuple[str, np.ndarray]], path: str,
                 max_channels: int = 8) -> str:
  """The input, then for each layer its first `max_channels` activation maps; shapes in titles.

  The maps of one layer share one colour scale, drawn as a colour bar at the end of the row: an
  all-zero map (a filter that found nothing, or a dead ReLU) is then the scale's dark end, not
  stretched to look like a pattern, and maps of one layer compare at a glance.

  Args:
    image: the input image [H, W, C] (raw or normalised: it is scaled to its own range).
    layers: (name, activations [H', W', C']) per conv or pooling layer, in forward order.
    path: where to save the PNG.
    max_channels: maps shown per layer.
  """
  rows = len(layers)
  figure, axes = plt.subplots(rows, max_channels + 2, squeeze=False,
                              figsize=(1.3 * (max_channels + 1) + 0.6, 1.4 * rows + 0.3),
                              gridspec_kw={'width_ratios': [1] * (max_channels + 1) + [0.12]})
  for row, (name, maps) in enumerate(layers):
    input_axis = axes[row, 0]
    if row == 0:
      _show(input_axis, image, f'input {"×".join(map(str, image.shape))}')
    else:
      input_axis.axis('off')
    shown = np.asarray(maps[..., :max_channels], np.float32)
    low, high = float(shown.min()), float(shown.max())
    high = high if high > low else low + 1.0  # A constant layer: one colour, still on a scale.
    drawn = None
    for channel in range(max_channels):
      axis = axes[row, channel + 1]
      if channel < maps.shape[-1]:
        drawn = axis.imshow(shown[..., channel], cmap='viridis', vmin=low, vmax=high,
                            interpolation='nearest')
        axis.set_xticks([])
        axis.set_yticks([])
        title = f'{name} {"×".join(map(str, maps.shape))}' if channel == 0 else f'#{channel}'
        axis.set_title(title, fontsize=8)
      else:
        axis.axis('off')
    colorbar = figure.colorbar(drawn, cax=axes[row, -1])
    colorbar.ax.tick_params(labelsize=6)
  return _save(figure, path)


def mistakes(images: np.ndarray, titles: list[str], path: str) -> str:
  """A grid of images (the most confidently wrong predictions) with one title each."""
  count = max(1, len(images))
  columns = min(count, 6)
  rows = math.ceil(count / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.7 * rows), squeeze=False)
  for i, axis in enumerate(axes.flat):
    if i < len(images):
      _show(axis, images[i], titles[i])
    else:
      axis.axis('off')
  if not len(images):
    axes[0, 0].text(0.5, 0.5, 'no mistakes on this split', ha='center', va='center')
  return _save(figure, path)


def _grey(image: np.ndarray) -> np.ndarray:
  """An image [H, W, C] as [H, W] grey or [H, W, 3] colour in [0, 1], for drawing under a map."""
  image = np.asarray(image, np.float32)
  low, high = float(image.min()), float(image.max())
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return image[..., 0] if image.shape[-1] == 1 else image


def _overlay(axis, image: np.ndarray, cam: np.ndarray, title: str = ''):
  """Draws `image` in grey with a Grad-CAM map [H, W] in [0, 1] over it; returns what imshow
  drew for the map (for a colour bar)."""
  picture = _grey(image)
  axis.imshow(picture, cmap='gray' if picture.ndim == 2 else None, interpolation='nearest')
  drawn = axis.imshow(cam, cmap='jet', alpha=0.45, vmin=0, vmax=1, interpolation='bilinear')
  axis.set_xticks([])
  axis.set_yticks([])
  if title:
    axis.set_title(title, fontsize=8)
  return drawn


def grad_cam_grid(images: np.ndarray, cams: np.ndarray, titles: list[str], path: str,
                  read_at: str) -> str:
  """Test images with the Grad-CAM map of their predicted class over each, on one colour scale;
  `read_at` says which feature maps the maps were computed from."""
  count = max(1, len(images))
  columns = min(count, 8)
  rows = math.ceil(count / columns)
  figure, axes = plt.subplots(rows, columns + 1, squeeze=False,
                              figsize=(1.6 * columns + 0.5, 1.9 * rows + 0.4),
                              gridspec_kw={'width_ratios': [1] * columns + [0.08]})
  drawn = None
  for i, axis in enumerate(axes[:, :columns].flat):
    if i < len(images):
      drawn = _overlay(axis, images[i], cams[i], titles[i])
    else:
      axis.axis('off')
  middle = rows // 2  # The colour bar takes the last column of the middle row.
  for row in range(rows):
    if row != middle or drawn is None:
      axes[row, -1].axis('off')
  if drawn is not None:
    colorbar = figure.colorbar(drawn, cax=axes[middle, -1])
    colorbar.set_label('evidence (per image max = 1)', fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
  figure.suptitle(f'Where the evidence for the predicted class lies (Grad-CAM of {read_at})',
                  fontsize=9)
  return _save(figure, path)


def image_explained(image: np.ndarray, cam: np.ndarray, top: list[tuple[str, float]], path: str,
                    read_at: str) -> str:
  """One image, the Grad-CAM map of its predicted class over it (computed from the feature maps
  `read_at` names), and its top probabilities."""
  figure, (left, middle, right) = plt.subplots(1, 3, figsize=(9, 3),
                                               gridspec_kw={'width_ratios': [1, 1, 1.3]})
  _show(left, image, 'the image')
  drawn = _overlay(middle, image, cam, f'evidence for {top[0][0]!r}\n(Grad-CAM of {read_at})')
  figure.colorbar(drawn, ax=middle, fraction=0.046).ax.tick_params(labelsize=6)
  names, probabilities = zip(*top)
  right.barh(range(len(top)), probabilities, color='tab:blue')
  right.set_yticks(range(len(top)), names, fontsize=8)
  right.invert_yaxis()
  right.set_xlim(0, 1)
  right.set_xlabel('probability')
  right.set_title(f'predicted {names[0]!r} ({probabilities[0]:.1%})', fontsize=9)
  for y, p in enumerate(probabilities):
    right.text(min(p + 0.02, 0.8), y, f'{p:.1%}', va='center', fontsize=7)
  return _save(figure, path)


def strongest_patches(kernel: np.ndarray, patches: np.ndarray, path: str, title: str) -> str:
  """Per first-layer filter: its weights, then the input patches that excite it most.

  Args:
    kernel: [k, k, C_in, F].
    patches: [F, count, k, k, C_in] raw input windows, strongest first.
  """
  filters, count = patches.shape[:2]
  groups = min(filters, 4)  # Filters side by side, each (1 + count) panels wide.
  rows = math.ceil(filters / groups)
  width = 1 + count
  figure, axes = plt.subplots(rows, groups * width, squeeze=False,
                              figsize=(0.95 * groups * width, 1.05 * rows + 0.5))
  for f in range(rows * groups):
    row, group = divmod(f, groups)
    panels = axes[row, group * width:(group + 1) * width]
    if f >= filters:
      for axis in panels:
        axis.axis('off')
      continue
    weights = kernel[..., f]
    _show(panels[0], weights if weights.shape[-1] in (1, 3) else weights.mean(-1, keepdims=True),
          f'filter {f}')
    for j in range(count):
      _show(panels[1 + j], patches[f, j], 'strongest' if j == 0 else f'#{j + 1}')
  figure.suptitle(title, fontsize=9)
  return _save(figure, path)


def pooling(before: np.ndarray, pooled: dict[str, np.ndarray], path: str, title: str,
            window: int = 2) -> str:
  """One feature map (`title` names it), then max, average and L2 pooling of it, on one stated
  colour scale."""
  maps = [(f'{title}\nbefore pooling', before)] + [
      (f'{name} pool {window}×{window}/{window}', values) for name, values in pooled.items()]
  low = min(float(m.min()) for _, m in maps)
  high = max(float(m.max()) for _, m in maps)
  high = high if high > low else low + 1.0
  figure, axes = plt.subplots(1, len(maps) + 1, figsize=(2.3 * len(maps) + 0.6, 2.8),
                              gridspec_kw={'width_ratios': [1] * len(maps) + [0.07]})
  drawn = None
  for axis, (name, values) in zip(axes, maps):
    drawn = axis.imshow(values, cmap='viridis', vmin=low, vmax=high, interpolation='nearest')
    axis.set_title(f'{name}\n{"×".join(map(str, values.shape))}', fontsize=8)
    axis.set_xticks([])
    axis.set_yticks([])
  figure.colorbar(drawn, cax=axes[-1]).ax.tick_params(labelsize=6)
  return _save(figure, path)
