//! `seqclust bench`: benchmarks that print JSON lines in the reference peers' result format.

mod allreduce;
mod encoder;
mod ingest;
mod kmeans;
mod measure;
mod merge;
mod ranks;
mod serve;

use anyhow::Result;
use clap::{Args, Subcommand};

/// Run a benchmark on generated data.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// `seqclust gen` → `seqclust ingest` throughput and peak memory, optionally against polars.
    Ingest(ingest::IngestBench),
    /// k-means kernel, Lloyd and mini-batch on the reference peers' data file.
    Kmeans(kmeans::KMeansBench),
    /// Encoder training and inference throughput (the PyTorch peer's configuration).
    Encoder(encoder::EncoderBench),
    /// Ring all-reduce bandwidth between rank processes on loopback (the gloo peer's setup).
    Allreduce(allreduce::AllReduceBench),
    /// `seqclust serve` Assign throughput and p50/p99 latency vs concurrency (loopback gRPC).
    Serve(serve::ServeBench),
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.which {
        Which::Ingest(b) => ingest::run(b),
        Which::Kmeans(b) => kmeans::run(b),
        Which::Encoder(b) => encoder::run(b),
        Which::Allreduce(b) => allreduce::run(b),
        Which::Serve(b) => serve::run(b),
    }
}
