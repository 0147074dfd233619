"""Every config field, defined once with the reason for its default.

Other configs import this file and change a few fields. Any field can be overridden on the command
line, e.g. `--config.optimizer.learning_rate=3e-3`; a misspelled key is an error.
"""

import ml_collections
from ml_collections import config_dict

# A config's variants follow its path after a colon: `configs/mnist.py:small`. Every shipped
# config has `:small`, a quick end-to-end check; `fashion_mnist:long` is its 30-minute recipe.
# `:small` of a TFDS dataset with a 'train' and a 'test' split: 2% of the one (a tenth of which
# is the validation split), 10% of the other.
SMALL_SPLITS = {'data.train_split': 'train[:2%]', 'data.test_split': 'test[:10%]',
                'num_epochs': 1.0, 'log_every_steps': 5}
# `:small` of a photo dataset with one 'train' split: 1% to train, another 1% held out, 64 px.
SMALL_PHOTOS = {'data.train_split': 'train[:1%]', 'data.test_split': 'train[99%:]',
                'data.image_size': 64, 'num_epochs': 1.0, 'log_every_steps': 2}


def variant(config: ml_collections.ConfigDict, arg: str | None,
            **variants: dict) -> ml_collections.ConfigDict:
  """Returns `config` as the variant `arg` asks for: None, the config itself; the name of one of
  `variants` (e.g. small={'dotted.key': value, ...}), with its settings applied.

  Raises:
    ValueError: another argument (the command line reports it as a config that cannot load).
  """
  if arg is None:
    return config
  if arg not in variants:
    raise ValueError(f'unknown config variant {arg!r}; the variants are: {", ".join(variants)}')
  for key, value in variants[arg].items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _true_false_or_auto() -> config_dict.FieldReference:
  """'auto', which may be overridden by True or False (a plain field would keep its type, str)."""
  return config_dict.FieldReference('auto', field_type=object)


def get_config():
  """Returns the default config: a small ConvNet on the offline digits data."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds initialisation, shuffling and dropout; same seed → same metrics.
  config.shuffle_seed = config_dict.placeholder(int)  # Batch order alone; None = `seed`.

  # ---- data ---------------------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # 'digits' (ships offline); 'image_folder', 'csv' or 'idx' (files under data.path); or a TFDS name.
  config.data.name = 'digits'
  config.data.tfds_data_dir = config_dict.placeholder(str)  # TFDS data dir; None = TFDS's default.
  config.data.download = False  # Let TFDS download and prepare a missing dataset (needs internet).
  # Three splits: training; `eval_split`, evaluated during training, where every choice is made
  # (best checkpoint, pruning, sweep and population rankings); `test_split`, evaluated once at the
  # end on the checkpoint chosen on eval_split ('' = none). TFDS slicing syntax allowed.
  config.data.train_split = 'train'
  # 'validation' where the dataset has none: `validation_fraction` of train_split, held out.
  config.data.eval_split = 'validation'
  config.data.test_split = 'test'
  config.data.path = config_dict.placeholder(str)  # Directory of 'image_folder' / 'idx' files.
  config.data.image_size = 0  # Resize images to this square size; 0 keeps the dataset's own size.
  config.data.channels = 0  # Image folders: 1 = grey, 3 = RGB; 0 = the source's own (RGB).
  config.data.resize = 'squash'  # 'squash' the whole image, or 'crop' the centre square.
  config.data.validation_fraction = 0.1  # Share of train_split held out as 'validation'.
  config.data.split_seed = 0  # Fixes which examples are held out; independent of `seed`.
  config.data.max_skip_fraction = 0.05  # Stop if more files than this are unreadable.
  config.data.workers = 0  # Image-decoding threads; 0 = one per CPU core.
  # Keep decoded, resized images: folders in PATH/.cnn_jax_cache, TFDS in DATA_DIR/cnn_jax_cache.
  config.data.cache = True
  # Read batches through grain as training goes instead of loading whole splits into memory
  # (TFDS datasets: from their files, or from the decoded cache as a memory map).
  config.data.stream = False
  # Streaming: read in this many processes, each with `workers` threads (0 = one); 0 = read in
  # threads of the training process only.
  config.data.worker_processes = 0
  # Batches ahead of the running step: read ahead by a stream (at least one per thread, per
  # process); transferred ahead to the devices from a split in memory.
  config.data.prefetch = 4
  config.data.on_device = False  # Hold the whole training split on the device (digits, MNIST).
  config.data.csv = config_dict.placeholder(str)  # 'csv' source: CSV of file and label columns.
  config.data.csv_file_column = ''  # '' = the first of filename, file, image, image_id, id, path.
  config.data.csv_label_column = ''  # '' = the first of label, class, category, target.
  # A CSV's classes and their order (() = its labels, sorted); the class names of IDX files.
  config.data.class_names = ()

  # ---- augmentation (on the device; training's deterministic given the seed) ----------------------
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_padding = 0  # Pad by this many pixels, then crop back at a random offset.
  config.augment.horizontal_flip = False  # Mirror half the images (refused for digit datasets).
  config.augment.rotation_degrees = 0.0  # Rotate by a random angle within ± this.
  # Replace a random rectangle (2-40% of the image) with noise in this share of training images:
  # random erasing, +0.4 points for a ResNet-20 on Fashion-MNIST in Zhong et al.'s table.
  config.augment.erase_probability = 0.0
  # Evaluate, predict and export on each image and its mirror, averaging the two predictions:
  # test-time augmentation, for datasets trained with horizontal_flip (2x the evaluation work).
  config.augment.test_flip = False

  # ---- model --------------------------------------------------------------------------------------
  # `name` picks an entry of cnn_jax.models.MODELS; the other fields are that model's keyword
  # arguments (a config that picks another model replaces this whole block).
  config.model = ml_collections.ConfigDict()
  config.model.name = 'convnet'
  config.model.features = (32, 64)  # Filters per conv block; one block per entry.
  config.model.kernel_size = 3  # Filter size F (one value for all blocks, or one per block).
  config.model.strides = 1  # Convolution stride S.
  config.model.padding = 'SAME'  # 'SAME' keeps W (at stride 1); 'VALID' gives W − F + 1.
  config.model.activation = 'relu'
  config.model.pool = 'max'  # 'max', 'avg', 'l2' or 'none' after each block.
  config.model.pool_window = 2
  config.model.pool_stride = 2  # Window 2, stride 2 halves each spatial side.
  config.model.batch_norm = False
  config.model.conv_dropout = 0.0  # Dropout after each conv block.
  config.model.dense = (128,)  # Hidden dense layers between the conv blocks and the classifier.
  config.model.dense_dropout = 0.0  # Dropout before each dense layer, the classifier included.
  config.model.initializer = 'he'  # Kernel init: 'he' for ReLU nets, 'xavier' or 'lecun'.

  # ---- optimisation -------------------------------------------------------------------------------
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'  # 'sgd' (with momentum), 'adam' or 'adamw'.
  config.optimizer.learning_rate = 1e-3  # Peak learning rate (Adam's usual default).
  config.optimizer.schedule = 'constant'  # 'constant', 'cosine' (with warmup) or 'onecycle'.
  config.optimizer.warmup_steps = 0  # Linear warmup length for 'cosine'.
  config.optimizer.momentum = 0.9  # SGD only.
  config.optimizer.nesterov = False  # SGD only.
  config.optimizer.weight_decay = 0.0  # Decoupled for adamw; added to the gradient (L2) otherwise.
  config.optimizer.grad_clip_norm = 0.0  # Clip the global gradient norm to this; 0 = no clipping.
  # What training minimises: a name in cnn_jax.training.losses.LOSSES ('cross_entropy', softmax
  # cross-entropy on integer labels, what the textbook's classifiers use), or one registered.
  config.loss = 'cross_entropy'
  config.label_smoothing = 0.0  # Mass spread uniformly over all classes in the targets.

  config.batch_size = 128  # Global training batch; must divide by the number of devices.
  config.eval_batch_size = 256  # Evaluation batch; the last one is padded and masked, never dropped.
  config.num_epochs = 10.0  # Training length in passes over the training split (may be fractional).
  config.num_steps = 0  # If > 0, the training length in steps instead of epochs.
  # A training loss that is nan or infinite stops the run at the next log or save, keeping the
  # last checkpoint saved before it (a population marks the member and trains the others on).
  config.stop_on_nan = True
  config.dtype = 'float32'  # Computation dtype; parameters are always float32.
  # Float32 convolutions and matrix products: 'default' = the platform's fastest (float32 on
  # CPU; TF32 on NVIDIA GPUs since Ampere, as PyTorch's and Keras's convolutions; one bfloat16
  # pass on TPU); 'high' (TPU: 3 passes); 'highest' = float32 everywhere, CPU's numbers.
  config.precision = 'default'
  # Compiled programs kept between runs (cnn_jax/runtime/compilation_cache.py): 'auto' =
  # $XDG_CACHE_HOME/cnn_jax/jax or ~/.cache/cnn_jax/jax; a directory; '' = compile every time.
  config.compilation_cache = 'auto'

  # ---- speed: ways to compute the same numbers faster (cnn_jax/speed), none changes a result ---
  # 'auto' settings are decided for the run's platform by cnn_jax.speed.resolve, in one place.
  config.speed = ml_collections.ConfigDict()
  # CPU only: 'ynnpack' hands XLA's matrix products to YNNPACK (2-4x faster train steps on
  # CPU, see cnn_jax/speed/cpu_kernels.py); 'xla' keeps XLA:CPU's own kernels.
  config.speed.cpu_kernels = 'ynnpack'
  # Three ways to compute the same numbers faster, each True, False or 'auto' (where it was
  # measured to win: on CPU). ConvNet training computes conv → max pool → bias → activation,
  # the textbook conv → bias → activation → max pool's numbers for monotone activations, on a
  # tensor 4× smaller.
  config.speed.pool_first = _true_false_or_auto()
  # Non-overlapping pooling (window = stride, VALID) by crop + reshape + reduce, with a
  # hand-written max-pool gradient, instead of XLA's reduce_window (a slow loop on XLA:CPU).
  config.speed.pool_by_reshape = _true_false_or_auto()
  # Batch norm's per-channel sums over batch and space as matrix products with a vector of ones,
  # with a hand-written gradient, instead of XLA's reductions (slow loops on XLA:CPU).
  config.speed.batch_norm_by_matmul = _true_false_or_auto()
  # Freed host memory kept in the process for the next step instead of returned to the OS and
  # faulted back in (cnn_jax/speed/host_memory.py): True, False or 'auto' (on CPU, where it
  # made the Fashion-MNIST ConvNet train 1.26-1.74x faster). The process keeps its peak memory.
  config.speed.keep_freed_memory = _true_false_or_auto()
  # CPU: run each step on a worker thread while Python prepares the next batch (True, JAX's
  # default), or on the calling thread (False), whose heap keeps a step's working memory over
  # 64 MiB for the next step (the benchmark prints it): 1.25-1.40x faster for the Fashion-MNIST
  # ConvNet at batch 256, slower for small steps (speed/host_memory.py).
  config.speed.cpu_async_dispatch = True
  # Steps per compiled call with data.on_device (lax.scan over steps): 1 = one call per step;
  # 0 = auto: on GPU/TPU an epoch, or the steps between logs, evaluations or saves if fewer;
  # 1 on CPU, where scanned convolutions run slower.
  config.speed.steps_per_dispatch = 0
  # How one program steps a population's members: 'vmap' (one batched step: grouped
  # convolutions that fill a GPU or TPU), 'loop' (the members' steps one after another inside
  # the program, each a single model's step; compiling takes longer with more members), or
  # 'auto' (loop on CPU, vmap elsewhere).
  config.speed.population_vectorize = 'auto'

  # ---- population: several models trained at once in one program (training/population.py) ------
  # Members share every batch and differ in the values listed below; each list has one value per
  # member, or is () to give every member the value set above. Each member is written as an
  # ordinary run in WORKDIR/member_XX, which evaluate, predict and report accept.
  config.population = ml_collections.ConfigDict()
  config.population.size = 0  # Members; 0 or 1 trains a single model.
  # Initialisation and dropout seeds; () = `seed` for every member, which then differ only in
  # the values compared below.
  config.population.seeds = ()
  config.population.learning_rates = ()  # optimizer.learning_rate per member.
  config.population.weight_decays = ()  # optimizer.weight_decay per member.
  config.population.label_smoothings = ()  # label_smoothing per member.
  config.population.dense_dropouts = ()  # model.dense_dropout per member (ConvNet models).
  config.population.conv_dropouts = ()  # model.conv_dropout per member (ConvNet models).

  # ---- checkpoints --------------------------------------------------------------------------------
  # Re-running the same command resumes from the latest checkpoint in the workdir.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 0  # Save this often; 0 = at each evaluation (always at the end).
  config.checkpoint.every_minutes = 10.0  # Also save when this much time passed; 0 = never by time.
  config.checkpoint.keep_last = 2  # Newest checkpoints kept.
  config.checkpoint.keep_best = 1  # Best checkpoints kept, ranked by best_metric on eval_split.
  config.checkpoint.best_metric = 'accuracy'  # 'accuracy' (higher is better) or 'loss' (lower).
  config.init_from = config_dict.placeholder(str)  # Warm start: a workdir or checkpoint to load.
  config.init_layers = 'all'  # 'all' layers of init_from, or 'matching' (same name and shape).

  # ---- seeing progress ----------------------------------------------------------------------------
  config.log_every_steps = 50  # Train metrics (averaged since the last log) go to the metrics file.
  config.eval_every_steps = 0  # Evaluate on eval_split this often; 0 = once per epoch.
  # tqdm bar on a terminal; without one (a file, a pipe, CI, SLURM) a plain line per train log.
  config.progress_bar = True
  return config
