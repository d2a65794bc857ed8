"""Datasets: public benchmarks (`load_benchmark`), WebPerson shards and public layouts, transforms."""
from gadms_model.data.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkFormatError,
    EvalSplit,
    TrainSample,
    load_benchmark,
)
from gadms_model.data.sources import (
    BenchmarkSource,
    DataSourceError,
    JsonImageSource,
    ShardSource,
    public_parquet_source,
    webperson_shard_files,
    webperson_source,
)

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFormatError",
    "BenchmarkSource",
    "DataSourceError",
    "EvalSplit",
    "JsonImageSource",
    "ShardSource",
    "TrainSample",
    "load_benchmark",
    "public_parquet_source",
    "webperson_shard_files",
    "webperson_source",
]
