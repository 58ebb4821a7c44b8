//! `mock-node`: run a mock OpenAI-compatible inference node from the command line.

use std::time::Duration;

use clap::Parser;
use mock_node::{Imitation, MockConfig, MockNode, TlsIdentity};

#[derive(Parser, Debug)]
#[command(about = "A mock OpenAI-compatible inference node for tests, benchmarks and demos")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value = "mock")]
    name: String,
    /// Models served (repeatable).
    #[arg(long = "model", default_values_t = vec!["mock-model".to_string()])]
    models: Vec<String>,
    #[arg(long, default_value_t = 5)]
    chunks: usize,
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Do not report usage.
    #[arg(long)]
    no_usage: bool,
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Threads serving requests. One by default: the mock shares its machine with what
    /// it measures, and with two it woke its idle thread (a futex) for most requests
    /// behind the router: 24 µs of CPU per request instead of 19 behind nginx.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: u16,
    /// The server whose probe routes it answers.
    #[arg(long, value_enum, default_value = "openai")]
    imitate: Imitation,
    /// Serve HTTPS with this PEM certificate (chain) and `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Requests generated at once; more wait inside the node (like llama-server's slots).
    #[arg(long)]
    slots: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_pem(
            &std::fs::read_to_string(cert)?,
            &std::fs::read_to_string(key)?,
        )?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let config = MockConfig {
        name: args.name,
        models: args.models,
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        latency: Duration::from_millis(args.latency_ms),
        usage: !args.no_usage,
        failure_rate: args.failure_rate,
        imitate: args.imitate,
        tls,
        slots: args.slots,
        ..MockConfig::default()
    };
    let node = MockNode::serve(listener, config);
    println!("mock node listening on {}", node.base_url());
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}
