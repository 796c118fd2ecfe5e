"""Training data from webdataset tars and parquet files written by img2dataset, on local disk or object storage
(`gs://`, `s3://`, `https://` through fsspec): shard lists, storage with retries and a local cache, per-shard
sample indexes, a locality-aware exactly resumable order, and the grain stream the trainer reads."""
