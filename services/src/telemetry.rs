//! Logging set up once per process: JSON lines on stderr, quiet (`warn`) unless `RUST_LOG` asks.

pub fn init(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let json = std::env::var("APQ_LOG_FORMAT").map(|v| v != "text").unwrap_or(true);
    // Colours only on a terminal: the harness keeps these logs as files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
