"""The README's main job as a plain PyTorch script, for whole_job.py to time against cnn_jax.

What a user would write by hand for `cnn-jax train --config digits`: scikit-learn's 8×8 digits
with the same stratified 80/20 test split and 10% of the training digits held out for validation,
normalised by the training split's mean and std; the same network (conv 3×3 32 → ReLU → max pool
→ conv 3×3 64 → ReLU → max pool → dropout 0.3 → dense 128 → ReLU → dropout 0.3 → dense 10, He
initialised, the classifier starting at zero: 53,002 parameters); Adam at 2e-3 with 50 warm-up
steps and a cosine decay over 900 steps of 64; validation every 220 steps, the best checkpoint
tested once at the end. It imports neither JAX nor cnn_jax.

    python experiments/benchmarks/digits_torch.py [--seed 0]
"""

import argparse
import copy
import math
import time

import numpy as np
import torch
from sklearn import datasets, model_selection
from torch import nn

STEPS, BATCH, EVAL_EVERY, WARMUP, LEARNING_RATE = 900, 64, 220, 50, 2e-3


def splits(seed: int):
  digits = datasets.load_digits()
  images = digits.images.astype(np.float32)[:, None] / 16.0  # [N, 1, 8, 8], in [0, 1]
  labels = digits.target.astype(np.int64)
  train, test = model_selection.train_test_split(np.arange(len(labels)), test_size=0.2,
                                                 random_state=0, stratify=labels)
  train, validation = model_selection.train_test_split(train, test_size=0.1, random_state=seed,
                                                       stratify=labels[train])
  mean, std = images[train].mean(), images[train].std()
  as_tensors = lambda idx: (torch.from_numpy((images[idx] - mean) / std),
                            torch.from_numpy(labels[idx]))
  return as_tensors(train), as_tensors(validation), as_tensors(test)


def network() -> nn.Module:
  model = nn.Sequential(
      nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.3),
      nn.Linear(128, 10))
  for layer in model:
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(layer.weight)
      nn.init.zeros_(layer.bias)
  nn.init.zeros_(model[-1].weight)
  return model


def accuracy(model: nn.Module, images, labels) -> float:
  model.eval()
  with torch.no_grad():
    return float((model(images).argmax(1) == labels).float().mean())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  started = time.time()
  torch.manual_seed(args.seed)
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits(args.seed)
  model = network()
  optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
  schedule = lambda step: (step + 1) / WARMUP if step < WARMUP else 0.5 * (
      1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
  generator = torch.Generator().manual_seed(args.seed)
  order, best, best_state = torch.empty(0, dtype=torch.long), -1.0, None
  for step in range(1, STEPS + 1):
    if len(order) < BATCH:
      order = torch.cat([order, torch.randperm(len(train_y), generator=generator)])
    take, order = order[:BATCH], order[BATCH:]
    model.train()
    loss = nn.functional.cross_entropy(model(train_x[take]), train_y[take])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step % EVAL_EVERY == 0 or step == STEPS:
      validation = accuracy(model, val_x, val_y)
      print(f'step {step}: validation accuracy {validation:.2%}', flush=True)
      if validation > best:
        best, best_state = validation, copy.deepcopy(model.state_dict())
  model.load_state_dict(best_state)
  print(f'Final test accuracy: {accuracy(model, test_x, test_y):.2%} after {STEPS} steps in '
        f'{time.time() - started:.1f} s')


if __name__ == '__main__':
  main()
