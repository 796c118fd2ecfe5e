"""Data layer: datasets by name (`base`: registry, data folder, read-only mode), emoji concepts and their TFDS
dataset (`emoji`, `emoji_tfds`, "emoji" in `image_text`), the Tux Paint stamps (`tuxpaint/`), the multi-task
mixture, random stand-in data, tokenizers, image ops and augmentation, the grain pipeline (bad examples skipped
and counted by `robust`), Fashion-MNIST. Imports nothing from models, training or objectives."""
