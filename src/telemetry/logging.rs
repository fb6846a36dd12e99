//! Logs on stderr, as text or JSON.

/// Starts logging to stderr in the chosen format. `RUST_LOG` overrides
/// `level`.
pub fn init_logging(format: crate::cli::LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        crate::cli::LogFormat::Text => builder.try_init(),
        crate::cli::LogFormat::Json => builder.json().try_init(),
    };
}
