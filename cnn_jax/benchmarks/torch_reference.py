"""A plain PyTorch version of the ConvNet family, to put cnn_jax's speed figures in context.

`python -m cnn_jax.benchmark --against torch` times the same network, batches and optimizer in
PyTorch eager mode (float32, NCHW, one thread per CPU core), the way a PyTorch user would write it.

What matches cnn_jax: the layers and their shapes (so the parameter count), the initialiser
family, the optimizer and its weight decay, the learning-rate schedule, label smoothing, gradient
clipping, the order of the training batches, and the augmentations (crop, flip and random erasing
of each training batch, as tensor operations on the batch; the test-time flip in evaluation).
What does not: the random draws (another generator: the initial weights, dropout and the
augmentations' crops, flips and rectangles); the 'truncated normal' initialisers, drawn here from
a plain normal; the flatten order (C, H, W here, H, W, C in Flax: same count, different layout);
`config.dtype`, always float32 here; and the batch-norm running variance, which PyTorch updates
with the unbiased estimate. Rotation has no counterpart here.

PyTorch is optional and imported only when one of these functions runs.
"""

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import data, models
from cnn_jax.benchmarks import time_to_accuracy
from cnn_jax.training import augment, optim, setup
from cnn_jax.training.augment import Augmentation
from cnn_jax.errors import UserError
from cnn_jax.models.convnet import BN_EPSILON, BN_MOMENTUM, ConvNet, block_settings
from cnn_jax.models.shapes import conv_output_size

INSTALL_HINT = ('the PyTorch reference needs PyTorch; install its CPU build with\n'
                '    pip install torch --index-url https://download.pytorch.org/whl/cpu\n'
                '(plain `pip install torch` also pulls several GB of CUDA packages).')

# Flax's nn.gelu is the tanh approximation by default; PyTorch's GELU is exact unless told.
_ACTIVATIONS = {
  'relu': lambda nn: nn.ReLU(),
  'tanh': lambda nn: nn.Tanh(),
  'sigmoid': lambda nn: nn.Sigmoid(),
  'gelu': lambda nn: nn.GELU(approximate='tanh'),
  'elu': lambda nn: nn.ELU(),
  'leaky_relu': lambda nn: nn.LeakyReLU(0.01),
  'swish': lambda nn: nn.SiLU(),
}

_POOLS = {
  'max': lambda nn, w, s: nn.MaxPool2d(w, s),
  'avg': lambda nn, w, s: nn.AvgPool2d(w, s),
  'l2': lambda nn, w, s: nn.LPPool2d(2, w, s),
}


# (torch.nn.init, weight, fan_in) -> None, for each name of cnn_jax.models.layers.INITIALIZERS.
# LeCun's variants have variance 1/fan_in; uniform on [-a, a] has variance a²/3.
_INITIALIZERS = {
  **dict.fromkeys(('xavier', 'glorot', 'glorot_uniform'),
                  lambda init, w, _: init.xavier_uniform_(w)),
  'glorot_normal': lambda init, w, _: init.xavier_normal_(w),
  **dict.fromkeys(('he', 'kaiming', 'he_normal'),
                  lambda init, w, _: init.kaiming_normal_(w, mode='fan_in', nonlinearity='relu')),
  'he_uniform': lambda init, w, _: init.kaiming_uniform_(w, mode='fan_in', nonlinearity='relu'),
  **dict.fromkeys(('lecun', 'lecun_normal'),
                  lambda init, w, fan_in: init.normal_(w, 0.0, math.sqrt(1.0 / fan_in))),
  'lecun_uniform': lambda init, w, fan_in: init.uniform_(w, -math.sqrt(3.0 / fan_in),
                                                         math.sqrt(3.0 / fan_in)),
}


def import_torch():
  """Returns the torch module, or raises UserError with the install command if it is missing."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(INSTALL_HINT) from None
  return torch


def check_config(config) -> None:
  """Raises UserError now if `config` cannot be measured in PyTorch: no torch, no ConvNet, a
  loss other than cross-entropy, or rotation."""
  _convnet(config.model.name, setup.model_kwargs(config.model), 2)
  if config.loss != 'cross_entropy':
    raise UserError(f'the PyTorch reference trains with cross-entropy; config.loss={config.loss!r} '
                    'has no PyTorch counterpart there.')
  if config.augment.rotation_degrees:
    raise UserError('the PyTorch reference does not rotate images; set '
                    '--config.augment.rotation_degrees=0 to compare the two.')
  import_torch()


def _convnet(model_name: str, model_kwargs: dict, num_classes: int) -> ConvNet:
  """Returns the Flax ConvNet `create_model` builds, or raises UserError for another family."""
  net = models.create_model(model_name, num_classes, **model_kwargs)
  if not isinstance(net, ConvNet):
    convnets = [name for name in models.MODELS
                if isinstance(models.create_model(name, 2), ConvNet)]
    raise UserError(f'the PyTorch reference covers the ConvNet family only '
                    f'({", ".join(convnets)}); {model_name!r} is not one of them.')
  return net


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's (and Flax's) SAME padding of one side: the odd pixel goes after, not before."""
  total = max((conv_output_size(size, kernel, stride, 'SAME') - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def build_torch_convnet(model_name: str, model_kwargs: dict, image_shape: tuple[int, int, int],
                        num_classes: int):
  """Returns a `torch.nn.Sequential` equivalent to `cnn_jax.models.create_model(model_name, ...)`.

  Args:
    model_name: a ConvNet-family name of `cnn_jax.models.MODELS` ('convnet', 'keras_mnist', ...).
    model_kwargs: the model's field overrides, as `create_model` takes them.
    image_shape: (H, W, C) of the input images.
    num_classes: number of logits.

  Raises:
    UserError: torch is missing, the model is not a ConvNet, or it does not fit the images.
  """
  net = _convnet(model_name, model_kwargs, num_classes)
  models.check_fits(net, image_shape)
  nn = import_torch().nn
  h, w, channels = image_shape
  act = lambda: _ACTIVATIONS[net.activation](nn)
  layers = []
  for width, b in zip(net.features, block_settings(net)):
    k, s = b['kernel_size'], b['strides']
    padding = 0
    if b['padding'] == 'SAME' and s == 1:
      padding = 'same'
    elif b['padding'] == 'SAME':  # PyTorch refuses padding='same' with a stride: pad explicitly.
      (top, bottom), (left, right) = _same_padding(h, k, s), _same_padding(w, k, s)
      layers.append(nn.ZeroPad2d((left, right, top, bottom)))
    layers.append(nn.Conv2d(channels, width, k, s, padding=padding,
                            bias=net.use_bias and not net.batch_norm))
    h, w = conv_output_size(h, k, s, b['padding']), conv_output_size(w, k, s, b['padding'])
    if net.batch_norm:  # PyTorch's momentum weighs the new batch; Flax's weighs the old average.
      layers.append(nn.BatchNorm2d(width, eps=BN_EPSILON, momentum=1.0 - BN_MOMENTUM))
    layers.append(act())
    if b['pool'] != 'none':
      win, stride = b['pool_window'], b['pool_stride']
      layers.append(_POOLS[b['pool']](nn, win, stride))
      h, w = conv_output_size(h, win, stride, 'VALID'), conv_output_size(w, win, stride, 'VALID')
    if net.conv_dropout > 0:
      layers.append(nn.Dropout(net.conv_dropout))
    channels = width
  layers.append(nn.Flatten())
  size = channels * h * w
  for width in (*net.dense, num_classes):
    if net.dense_dropout > 0:
      layers.append(nn.Dropout(net.dense_dropout))
    layers.append(nn.Linear(size, width, bias=net.use_bias))
    size = width
    layers.append(act())
  layers.pop()  # The classifier has no activation: it returns logits.

  for layer in layers:
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      _INITIALIZERS[net.initializer](nn.init, layer.weight, layer.weight[0].numel())
      if layer.bias is not None:
        nn.init.zeros_(layer.bias)
  nn.init.zeros_(layers[-1].weight)  # The classifier starts at zero, as models.layers.HEAD_INIT.
  return nn.Sequential(*layers)


@functools.lru_cache(maxsize=4)
def _lr_factors(schedule: str, learning_rate: float, total_steps: int,
                warmup_steps: int) -> np.ndarray:
  """cnn_jax's learning rate at steps 0..total_steps, as multiples of `learning_rate`.

  Tabulated once, so the timed steps pay nothing for it. It is computed with JAX, which a
  PyTorch user would not pay for (their own scheduler costs microseconds): the time-to-accuracy
  run calls this before starting PyTorch's clock, and the cache serves the optimizer.
  """
  values = jax.vmap(optim.create_schedule(schedule, learning_rate, total_steps, warmup_steps))
  return np.asarray(values(jnp.arange(total_steps + 1))) / learning_rate


def torch_optimizer(params, optimizer_config, total_steps: int = 1):
  """Returns (optimizer, scheduler) doing what `cnn_jax.training.optim` builds from
  `optimizer_config`.

  Weight decay means what it means in cnn_jax: L2 added to the gradient for 'sgd' and 'adam'
  (the `weight_decay` of torch's SGD and Adam), decoupled for 'adamw' (torch's AdamW).
  `scheduler` is None for a constant learning rate; otherwise a LambdaLR, to step after each
  optimizer step, giving cnn_jax's schedule over `total_steps`. Gradient clipping is not the
  optimizer's job in PyTorch: the caller clips (see `_train_step`).
  """
  torch = import_torch()
  opt = optimizer_config
  if opt.name not in optim.OPTIMIZERS:
    raise UserError(f'unknown optimizer {opt.name!r}; choose one of {", ".join(optim.OPTIMIZERS)}')
  lr, decay = opt.learning_rate, opt.weight_decay
  if opt.name == 'sgd':
    # optax drops momentum (and so Nesterov) at 0; torch would refuse nesterov without momentum.
    optimizer = torch.optim.SGD(params, lr, momentum=opt.momentum,
                                nesterov=bool(opt.nesterov and opt.momentum), weight_decay=decay)
  elif opt.name == 'adam':
    optimizer = torch.optim.Adam(params, lr, weight_decay=decay)
  else:
    optimizer = torch.optim.AdamW(params, lr, weight_decay=decay)
  if opt.schedule == 'constant':
    return optimizer, None
  table = _lr_factors(opt.schedule, lr, total_steps, opt.warmup_steps)
  factor = lambda step: float(table[min(step, total_steps)])  # Past the end it stays put.
  return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def augment_batch(torch, images, augmentation: Augmentation, generator):
  """Returns NCHW `images` augmented as cnn_jax's train step augments them
  (`cnn_jax.training.augment`), drawing from the torch.Generator `generator`: random crop from
  the zero-padded batch, mirror of half the images, random erasing with normal noise."""
  batch, _, height, width = images.shape
  uniform = lambda *shape: torch.rand(shape, generator=generator)
  if augmentation.crop_padding:
    p = augmentation.crop_padding
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    top, left = torch.randint(0, 2 * p + 1, (2, batch, 1), generator=generator)
    rows, cols = top + torch.arange(height), left + torch.arange(width)  # [B, H], [B, W]
    index = torch.arange(batch)[:, None, None]
    # Indexed by [B, H, W] on both sides of the channel axis: the result is [B, H, W, C].
    images = padded[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
  if augmentation.horizontal_flip:
    images = torch.where((uniform(batch) < 0.5)[:, None, None, None], images.flip(3), images)
  if augmentation.erase_probability:  # Zhong et al.'s rectangle, drawn as augment.random_erase.
    low, high = augment.ERASE_AREA
    area = (low + (high - low) * uniform(batch)) * height * width
    log_low, log_high = math.log(augment.ERASE_ASPECT[0]), math.log(augment.ERASE_ASPECT[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniform(batch))
    rect_h = torch.round(torch.sqrt(area * aspect)).clamp(1, height)
    rect_w = torch.round(torch.sqrt(area / aspect)).clamp(1, width)
    top = torch.floor(uniform(batch) * (height - rect_h + 1))
    left = torch.floor(uniform(batch) * (width - rect_w + 1))
    rows = torch.arange(height)[None, :, None]
    cols = torch.arange(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + rect_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + rect_w)[:, None, None]))
    erased = uniform(batch) < augmentation.erase_probability
    mask = (inside & erased[:, None, None])[:, None]  # [B, 1, H, W]
    images = torch.where(mask, torch.randn(images.shape, generator=generator), images)
  return images.contiguous()


def _train_step(model, optimizer, scheduler, label_smoothing, clip_norm, augment, images, labels):
  """One update on a batch, as cnn_jax's train step: [augment], cross-entropy, [clip], step,
  schedule."""
  torch = import_torch()  # Already imported by then: a dictionary lookup.
  optimizer.zero_grad(set_to_none=True)
  if augment is not None:
    images = augment(images)
  logits = model(images)
  loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
  loss.backward()
  if clip_norm > 0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
  optimizer.step()
  if scheduler is not None:
    scheduler.step()
  return loss


def _correct(model, test_flip, images, labels, mask) -> float:
  """Number of correctly classified real (mask = 1) examples, as cnn_jax's eval step counts
  (with `test_flip`, by the mean of the image's and its mirror's predicted distributions)."""
  if test_flip:  # One call on the images and their mirrors, as cnn_jax's evaluation batches them.
    both = model(import_torch().cat([images, images.flip(3)]))
    scores, mirrored = both.softmax(1).chunk(2)
    scores = scores + mirrored
  else:
    scores = model(images)
  return float(((scores.argmax(1) == labels).float() * mask).sum())


def _to_torch(torch, batch: dict) -> tuple:
  """Host NHWC float32 batch → NCHW float32 tensor, int64 labels (and the float mask, if any)."""
  images = torch.from_numpy(np.ascontiguousarray(batch['image'].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch['label'].astype(np.int64))
  return (images, labels) + ((torch.from_numpy(batch['mask']),) if 'mask' in batch else ())


def _setup(config, image_shape, num_classes, total_steps, compiled: bool = False):
  """Returns (torch, model, step) for `config`, seeded and using every CPU core; with `compiled`,
  the step runs the model through `torch.compile`. The step augments its batch as
  config.augment says."""
  torch = import_torch()
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(config.seed)
  model = build_torch_convnet(config.model.name, setup.model_kwargs(config.model), image_shape,
                              num_classes)
  optimizer, scheduler = torch_optimizer(model.parameters(), config.optimizer, total_steps)
  augmentation = Augmentation(**config.augment)
  augment = None
  if augmentation.active:
    generator = torch.Generator().manual_seed(config.seed)
    augment = lambda images: augment_batch(torch, images, augmentation, generator)
  step = functools.partial(_train_step, torch.compile(model) if compiled else model, optimizer,
                           scheduler, config.label_smoothing, config.optimizer.grad_clip_norm,
                           augment)
  return torch, model, step


def measure_torch(config, num_steps: int, warmup: int, synthetic_batches: list[dict],
                  compiled: bool = False) -> dict[str, float]:
  """Returns the PyTorch reference's train and eval images/s on the benchmark's own batches.

  Args:
    config: the cnn_jax config; its model, optimizer, batch sizes and seed are used.
    num_steps: timed steps, after `warmup` untimed ones (of which the first is timed alone).
    synthetic_batches: host batches {'image': float32 [B, H, W, C], 'label': int [B]}, cycled
      through as `cnn_jax.benchmarks.throughput.measure` does.
    compiled: train through `torch.compile` (train figures only; its first step compiles).

  Returns:
    {'train_first_step_s', 'train_images_per_s', 'eval_first_step_s', 'eval_images_per_s'}.
  """
  image_shape = synthetic_batches[0]['image'].shape[1:]
  num_classes = data.describe_dataset(setup.data_spec(config)).num_classes
  torch, model, step = _setup(config, image_shape, num_classes, num_steps + warmup, compiled)
  batches = [_to_torch(torch, b) for b in synthetic_batches]  # Converted before any timing.
  results = {}

  def timed(fn, count):
    start = time.perf_counter()
    for i in range(count):
      fn(i)
    return time.perf_counter() - start

  model.train()
  train_on = lambda i: step(*batches[i % len(batches)])
  results['train_first_step_s'] = timed(train_on, 1)  # Eager: no compilation, but first calls.
  timed(lambda i: train_on(i + 1), warmup - 1)
  results['train_images_per_s'] = num_steps * config.batch_size / timed(train_on, num_steps)
  if compiled:
    return results

  size = config.eval_batch_size
  images = torch.zeros((size, image_shape[2], *image_shape[:2]))
  labels, mask = torch.zeros(size, dtype=torch.int64), torch.ones(size)
  evaluate = lambda i: _correct(model, config.augment.test_flip, images, labels, mask)
  model.eval()
  with torch.no_grad():
    results['eval_first_step_s'] = timed(evaluate, 1)
    timed(evaluate, warmup - 1)
    results['eval_images_per_s'] = num_steps * size / timed(evaluate, num_steps)
  return results


def time_to_accuracy_torch(config, dataset: data.Dataset, target: float, max_epochs: int
                           ) -> dict[str, float | int | None]:
  """Trains the PyTorch reference on `dataset` until its eval accuracy reaches `target`.

  Batches come in cnn_jax's order (`data.train_batch`), the schedule spans the config's training
  length as in a real run, and the whole eval split is evaluated after every epoch.

  Returns:
    {'seconds': wall time from building the model to the first evaluation at or above `target`
    (None if no epoch up to `max_epochs` got there), 'epochs', 'accuracy' (of that epoch, or of
    the last one)}.
  """
  plan = setup.make_plan(config, len(dataset.train))
  per_epoch, num_steps = plan.steps_per_epoch, plan.num_steps
  opt = config.optimizer
  _lr_factors(opt.schedule, opt.learning_rate, num_steps, opt.warmup_steps)  # Off the clock.
  start = time.perf_counter()
  torch, model, step = _setup(config, dataset.info.image_shape, dataset.info.num_classes,
                              num_steps)
  seed = plan.shuffle_seed

  def train_epoch(epoch: int) -> None:
    model.train()
    for i in range(epoch * per_epoch, (epoch + 1) * per_epoch):
      step(*_to_torch(torch, data.train_batch(dataset.train, dataset.normalizer,
                                              config.batch_size, seed, i)))

  def evaluate() -> float:
    model.eval()
    with torch.no_grad():
      batches = data.eval_batches(dataset.eval, dataset.normalizer, config.eval_batch_size)
      correct = sum(_correct(model, config.augment.test_flip, *_to_torch(torch, batch))
                    for batch in batches)
    return correct / len(dataset.eval)

  return time_to_accuracy.train_until(train_epoch, evaluate, target, max_epochs, start)
