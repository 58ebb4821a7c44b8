//! The `llm-router` binary: parses the command line and runs `serve`, `demo` or
//! `migrate-store`.

use llm_router::config::{self, ConfigError, Invocation, LogFormat, MigrateStoreArgs, ServeArgs};

/// The proxy path makes many small short-lived allocations per request and per SSE
/// chunk; glibc's allocator spent about 9 % of the router's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives freed memory back to the system when a proxy thread goes idle, at most once a
/// second per thread. mimalloc purges the pages a thread freed only when that thread
/// calls it again, so a router that fell quiet after thousands of streams kept them.
/// Forced (`mi_collect(true)`: every delayed purge done now): 30 s after 4,000 slow
/// streams, 106 → 64 MB where the unforced collect left it; no cost found at 32
/// connections (A/B, medians of 5: 24,623 → 24,584 plain req/s, 16,001 → 16,721
/// streamed).
fn collect_freed_memory_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            // SAFETY: mi_collect only walks and purges the calling thread's own heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}

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
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    println!(
        "llm-router listening on {} with {workers} worker thread{} (dashboard: {}/dashboard)",
        router.base_url(),
        if workers == 1 { "" } else { "s" },
        router.base_url()
    );
    router.run_until_signal().await;
    Ok(())
}

/// Copies one store into another; exits 1 when it cannot (a non-empty target without
/// `--force`, an unreachable database…).
fn migrate_store(m: MigrateStoreArgs) {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(llm_router::store::migrate::migrate_store(&m.from, &m.to, m.force))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(report) => {
            for (table, rows) in report.tables {
                println!("{table}: {rows} rows");
            }
            println!("migration done");
        }
        Err(e) => {
            eprintln!("llm-router migrate-store: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let (args, demo) = match config::parse_invocation(std::env::args_os()) {
        Ok(Invocation::Router(args, demo)) => (*args, demo),
        Ok(Invocation::MigrateStore(m)) => return migrate_store(m),
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("llm-router: {e}");
            std::process::exit(2);
        }
    };
    init_tracing(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads())
        .on_thread_park(collect_freed_memory_when_idle)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) if demo => rt.block_on(llm_router::demo::run(args)),
        Ok(rt) => rt.block_on(serve(args)),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        eprintln!("llm-router: {e}");
        std::process::exit(1);
    }
}
