"""Writes the offline digits as a practice problem: labelled PNGs + CSV, and an unlabelled test set.

    python experiments/csv_digits/make_dataset.py --out data/csv_digits

gives
    data/csv_digits/train/0.png ...      1,437 training digits (ids 0..1436)
    data/csv_digits/train.csv            id,label    (ids without extension, as Kaggle writes them)
    data/csv_digits/test/1437.png ...    360 unlabelled test digits
    data/csv_digits/test_labels.csv      id,label    (held back, for cnn_jax.score)

Pixels are the 8×8 UCI digits' 0–16 values scaled to 0–255 grey PNGs.
"""

import argparse
import csv
import os

import numpy as np
from PIL import Image

from cnn_jax import data


def write_split(split: data.Split, directory: str, labels_csv: str, first_id: int) -> None:
  """Writes each image as DIRECTORY/<id>.png and the id,label rows to `labels_csv`."""
  os.makedirs(directory, exist_ok=True)
  with open(labels_csv, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['id', 'label'])
    for offset, (image, label) in enumerate(zip(split.images, split.labels)):
      pixels = np.round(image[..., 0].astype(np.float32) * 255 / 16).astype(np.uint8)
      Image.fromarray(pixels).save(os.path.join(directory, f'{first_id + offset}.png'))
      writer.writerow([first_id + offset, int(label)])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='data/csv_digits', help='Output directory.')
  out = parser.parse_args().out
  spec = data.DataSpec('digits')
  train, test = data.load_split(spec, 'train'), data.load_split(spec, 'test')
  write_split(train, os.path.join(out, 'train'), os.path.join(out, 'train.csv'), 0)
  write_split(test, os.path.join(out, 'test'), os.path.join(out, 'test_labels.csv'), len(train))
  print(f'Wrote {len(train):,} labelled training images and {len(test):,} test images to {out}.')


if __name__ == '__main__':
  main()
