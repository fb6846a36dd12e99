//! The `vigil` binary: parse the command line, start logging, run a mode,
//! map the outcome to an exit status.

use std::process::ExitCode;

use clap::Parser;

use vigil::cli::{Cli, Command};
use vigil::config::ConfigError;
use vigil::io::kafka::source::SourceError;
use vigil::modes::{self, FAILURE_EXIT, FENCED_EXIT, USAGE_EXIT, UsageError};
use vigil::registry::SetupError;
use vigil::telemetry;

/// mimalloc instead of the system allocator: state is allocated on the
/// workers and freed on other threads, where glibc's malloc spends about a
/// fifth of the CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. mimalloc asks the kernel
/// for huge pages where it may; when free memory is fragmented (a machine
/// whose page cache is full), the kernel then compacts memory on the page
/// fault, in the process's time: a `vigil check` of a million records spent
/// from 0.1 to 1.8 s of system time that way, run to run, and peaked 10 %
/// higher; with 4 KiB pages it takes a steady 0.3 s (see BENCHMARKS.md).
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes no pointer; it sets a flag of the
    // calling process. A kernel without it returns an error, which leaves
    // things as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format, &cli.log_level);
    let result = match &cli.command {
        Command::Check(args) => modes::check::run(args),
        Command::Gen(args) => modes::generate::run(args),
        Command::Run(args) => modes::run::run(args),
        Command::Demo(args) => modes::demo::run(args),
        Command::Bench(args) => modes::bench::run(args),
        Command::Replay(args) => modes::replay::run(args),
        Command::Inspect(args) => modes::inspect::run(args),
        Command::Torture(args) => modes::torture::run(args),
        Command::Completions(args) => modes::docs::completions(args),
        Command::Man(args) => modes::docs::man(args),
    };
    match result {
        Ok(status) => ExitCode::from(status.code()),
        Err(e) => {
            eprintln!("vigil: error: {e:#}");
            let usage = e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<SetupError>().is_some();
            let fenced = matches!(
                e.downcast_ref::<SourceError>(),
                Some(SourceError::Fenced { .. })
            );
            ExitCode::from(if usage {
                USAGE_EXIT
            } else if fenced {
                FENCED_EXIT
            } else {
                FAILURE_EXIT
            })
        }
    }
}
