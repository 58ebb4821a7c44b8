//! The `llm-router` binary: parses the command line and runs `serve` or `demo`.

use clap::Parser;
use llm_router::config::{Cli, Command, LogFormat, ServeArgs};

/// The proxy path makes many small short-lived allocations per request and per SSE
/// chunk; glibc's allocator spent about 9 % of the router's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LLM_ROUTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let router = llm_router::app::start(args).await?;
    if router.generated_admin_key {
        println!(
            "Generated an admin key (stored in the data directory, shown only now): {}",
            router.state.admin_key.expose()
        );
    }
    println!(
        "llm-router listening on {} (dashboard: {}/dashboard)",
        router.base_url(),
        router.base_url()
    );
    router.run_until_signal().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (args, demo) = match cli.command {
        None => (cli.serve, false),
        Some(Command::Serve(a)) => (a, false),
        Some(Command::Demo(a)) => (a, true),
    };
    init_tracing(args.log_format);
    let result = if demo {
        llm_router::demo::run(args).await
    } else {
        serve(args).await
    };
    if let Err(e) = result {
        eprintln!("llm-router: {e}");
        std::process::exit(1);
    }
}
