"""Data layer: emoji concepts, TFDS dataset, tokenizer, image ops, grain pipeline, Fashion-MNIST."""
