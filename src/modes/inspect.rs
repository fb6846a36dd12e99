//! `vigil inspect KEY|--entity TABLE PK|--storms|--incidents`: a cache
//! key's state, a row's entity state, the storms in progress or the
//! incidents open, from a stopped instance's store opened read-only
//! (`--state`) or from a running instance's HTTP server (`--url`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::ExitStatus;
use crate::cli::InspectArgs;
use crate::inspect::{entity_view, incidents_view, key_view, storms_view};
use crate::state::RocksStore;

/// How long a running instance may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitStatus> {
    let view = match (&args.url, &args.state) {
        (Some(url), _) => ask(url, args)?,
        (None, Some(dir)) => read(dir, args)?,
        (None, None) => bail!("give --state DIR or --url URL"),
    };
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(ExitStatus::Ok)
}

/// From a stopped instance's state directory.
fn read(dir: &Path, args: &InspectArgs) -> anyhow::Result<Value> {
    let store = RocksStore::open_read_only(dir)
        .with_context(|| format!("opening the state in {} read-only", dir.display()))?;
    if args.incidents {
        return Ok(serde_json::json!({ "incidents": incidents_view(&store)? }));
    }
    let Some(key) = args.key.as_deref() else {
        return Ok(serde_json::json!({ "storms": storms_view(&store)? }));
    };
    if let Some(table) = &args.entity {
        let Some(view) = entity_view(&store, table, key)? else {
            bail!(
                "no state for row {key} of {table:?} in {} (the table as [[tables]] names it, the primary key as violations name it?)",
                dir.display()
            );
        };
        return Ok(serde_json::to_value(view)?);
    }
    let Some(view) = key_view(&store, key)? else {
        bail!(
            "no state for key {key:?} in {} (is it the state.path of the instance, and the key as services name it?)",
            dir.display()
        );
    };
    Ok(serde_json::to_value(view)?)
}

/// From a running instance's HTTP server.
fn ask(base: &str, args: &InspectArgs) -> anyhow::Result<Value> {
    let path = match (&args.entity, &args.key) {
        (Some(table), Some(pk)) => format!(
            "/v1/entities/{}/{}",
            encode_path(table).replace('/', "%2F"),
            encode_path(pk)
        ),
        (None, Some(key)) => format!("/v1/keys/{}", encode_path(key)),
        _ if args.incidents => "/v1/incidents".to_string(),
        _ => "/v1/storms".to_string(),
    };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(ASK_TIMEOUT))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(token) = &args.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().with_context(|| format!("asking {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    if status != 200 {
        bail!("{url} answered HTTP {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{url} answered no JSON"))
}

/// A cache key as a URL path: what is not allowed in a path segment (and
/// `%`) percent-encoded; `/` stays, the route takes the rest of the path.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_the_path() {
        assert_eq!(encode_path("user:42"), "user:42");
        assert_eq!(encode_path("a b?c#d%e/f"), "a%20b%3Fc%23d%25e/f");
        assert_eq!(encode_path("é"), "%C3%A9");
    }
}
