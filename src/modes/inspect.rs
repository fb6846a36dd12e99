//! `vigil inspect --state DIR KEY`: a cache key's state in a stopped
//! instance's store, opened read-only.

use anyhow::{Context, bail};

use super::ExitStatus;
use crate::cli::InspectArgs;
use crate::inspect::key_view;
use crate::state::RocksStore;

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitStatus> {
    let store = RocksStore::open_read_only(&args.state)
        .with_context(|| format!("opening the state in {} read-only", args.state.display()))?;
    let Some(view) = key_view(&store, &args.key)? else {
        bail!(
            "no state for key {:?} in {} (is it the state.path of the instance, and the key as services name it?)",
            args.key,
            args.state.display()
        );
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(ExitStatus::Ok)
}
