//! `vigil inspect --state DIR KEY|--storms`: a cache key's state, or the
//! storms in progress, in a stopped instance's store, opened read-only.

use anyhow::{Context, bail};

use super::ExitStatus;
use crate::cli::InspectArgs;
use crate::inspect::{key_view, storms_view};
use crate::state::RocksStore;

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitStatus> {
    let store = RocksStore::open_read_only(&args.state)
        .with_context(|| format!("opening the state in {} read-only", args.state.display()))?;
    let Some(key) = &args.key else {
        let storms = serde_json::json!({ "storms": storms_view(&store)? });
        println!("{}", serde_json::to_string_pretty(&storms)?);
        return Ok(ExitStatus::Ok);
    };
    let Some(view) = key_view(&store, key)? else {
        bail!(
            "no state for key {key:?} in {} (is it the state.path of the instance, and the key as services name it?)",
            args.state.display()
        );
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(ExitStatus::Ok)
}
