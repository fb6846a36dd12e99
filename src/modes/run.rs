//! `vigil run`: the Kafka daemon. Consumes the CDC and cache topics in one
//! consumer group, runs the engine, produces violations and dead letters,
//! serves HTTP (metrics, health, readiness), and stops cleanly on SIGINT or
//! SIGTERM. With `--stage one` or `--stage two` it runs one stage of two,
//! through the repartition topic (see [`crate::io::kafka::repartition`]).

use std::sync::Arc;

use super::ExitStatus;
use super::assemble::{open_store, runtime, serve_stage};
use super::shutdown::Control;
use crate::cli::RunArgs;
use crate::config::Config;
use crate::http;
use crate::io::kafka::reach_brokers;
use crate::io::kafka::repartition::Stage;
use crate::telemetry::{self, Stats};

pub fn run(args: &RunArgs) -> anyhow::Result<ExitStatus> {
    let config = Config::load(args.config.as_deref())?;
    config.validate_for_run()?;
    if args.stage != Stage::Both {
        config.validate_for_stages(args.stage == Stage::One)?;
    }
    reach_brokers(&config, args.broker_timeout.0)?;
    let runtime = runtime()?;
    // The recorder first: the histograms of `Stats` register with it.
    let recorder = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(telemetry::install_recorder()?)
    };
    let stats = Arc::new(Stats::default());
    let store = open_store(&config.state.path, config.state.cache_size)?;
    if let Some(recorder) = recorder {
        let listen = config
            .metrics
            .listen
            .parse()
            .expect("validated with the configuration");
        let bound = http::start(
            runtime.handle(),
            listen,
            &config.metrics,
            recorder,
            Arc::clone(&stats),
            Arc::clone(&store),
        )?;
        tracing::info!(%bound, "serving http://{bound}/metrics, /healthz, /readyz, /v1/keys/");
    }
    let control = Control::default();
    control.on_signals(runtime.handle());
    let report = serve_stage(&config, args.stage, store, stats, &control)?;
    tracing::info!(checkpoints = report.checkpoints, "stopped");
    Ok(ExitStatus::Ok)
}
