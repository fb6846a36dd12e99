//! `vigil inspect KEY|--entity TABLE PK|--storms|--incidents`: a cache
//! key's state, a row's entity state, the storms in progress or the
//! incidents open, from a stopped instance's store opened read-only
//! (`--state`) or from a running instance's HTTP server (`--url`).

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use super::ExitStatus;
use crate::cli::{InspectArgs, InspectFormat};
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
    match args.format {
        InspectFormat::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        InspectFormat::Table => print!("{}", table(&view)),
    }
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

/// Lists of records with more columns than this are printed one record at
/// a time (a name and a value a line) instead of as a table.
const MAX_COLUMNS: usize = 7;

/// A view as text for a person (`--format table`): the fields of the view
/// as aligned `name  value` lines (nested objects flattened as
/// `outer.inner`), then each list of records as a table, or record by record
/// when it has too many columns. Times in milliseconds read as RFC 3339,
/// where a record came from as `topic/partition@offset` (`file:line` for a
/// line of a file), a version as `major[.minor]`.
fn table(view: &Value) -> String {
    let mut out = String::new();
    write_record(&mut out, view, "");
    out
}

/// Writes an object's fields, then its lists of records.
fn write_record(out: &mut String, value: &Value, indent: &str) {
    let Value::Object(map) = value else {
        let _ = writeln!(out, "{indent}{}", cell("", value));
        return;
    };
    let mut lines = Vec::new();
    flatten("", map, &mut lines);
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, text) in &lines {
        let _ = writeln!(out, "{indent}{name:width$}  {text}");
    }
    for (name, rows) in map.iter().filter_map(|(name, v)| Some((name, records(v)?))) {
        if rows.is_empty() {
            let _ = writeln!(out, "{indent}{name}: none");
            continue;
        }
        let _ = writeln!(out, "{indent}{name} ({}):", rows.len());
        write_rows(out, &rows, &format!("{indent}  "));
    }
}

/// The records of a list of objects (`None` for anything else).
fn records(value: &Value) -> Option<Vec<&Map<String, Value>>> {
    let Value::Array(items) = value else {
        return None;
    };
    items.iter().map(Value::as_object).collect()
}

/// Writes records as a table, or one by one when they have many columns.
fn write_rows(out: &mut String, rows: &[&Map<String, Value>], indent: &str) {
    let rows: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|row| {
            let mut cells = Vec::new();
            flatten("", row, &mut cells);
            cells
        })
        .collect();
    let mut columns: Vec<&str> = Vec::new();
    for (name, _) in rows.iter().flatten() {
        if !columns.contains(&name.as_str()) {
            columns.push(name);
        }
    }
    if columns.len() > MAX_COLUMNS {
        let width = columns.iter().map(|c| c.len()).max().unwrap_or(0);
        for (i, row) in rows.iter().enumerate() {
            let _ = writeln!(out, "{indent}#{}", i + 1);
            for (name, text) in row {
                let _ = writeln!(out, "{indent}  {name:width$}  {text}");
            }
        }
        return;
    }
    let lookup = |row: &[(String, String)], column: &str| {
        row.iter()
            .find(|(name, _)| name == column)
            .map_or_else(|| "-".to_string(), |(_, text)| text.clone())
    };
    let grid: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| lookup(row, c)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            grid.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(text, width)| format!("{text:width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{indent}{}", line(&mut columns.iter().copied()));
    for row in &grid {
        let _ = writeln!(out, "{indent}{}", line(&mut row.iter().map(String::as_str)));
    }
}

/// The fields of `map` as `(name, text)`, nested objects flattened under
/// `prefix.`, lists of records left out (they get a table of their own at
/// the top level, and read as compact JSON inside a record).
fn flatten(prefix: &str, map: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (name, value) in map {
        let name = format!("{prefix}{name}");
        match value {
            Value::Object(inner) if !is_leaf(inner) => flatten(&format!("{name}."), inner, out),
            Value::Array(_) if prefix.is_empty() && records(value).is_some() => {}
            _ => out.push((name.clone(), cell(&name, value))),
        }
    }
}

/// Objects printed as one value: where a record came from, a version.
fn is_leaf(map: &Map<String, Value>) -> bool {
    provenance(map).is_some() || version(map).is_some()
}

/// `topic/partition@offset`, or `file:line` for a line of a file.
fn provenance(map: &Map<String, Value>) -> Option<String> {
    let topic = map.get("topic")?.as_str()?;
    let offset = map.get("offset")?.as_i64()?;
    let partition = map.get("partition")?.as_i64()?;
    Some(
        if map.get("from_file").and_then(Value::as_bool) == Some(true) {
            format!("{topic}:{offset}")
        } else {
            format!("{topic}/{partition}@{offset}")
        },
    )
}

/// `major`, or `major.minor` when the minor part is not zero.
fn version(map: &Map<String, Value>) -> Option<String> {
    if map.len() != 2 {
        return None;
    }
    let major = map.get("major")?.as_u64()?;
    let minor = map.get("minor")?.as_u64()?;
    Some(if minor == 0 {
        major.to_string()
    } else {
        format!("{major}.{minor}")
    })
}

/// One value as text; `name` tells times (`ts`, `*_ms`) from other numbers.
fn cell(name: &str, value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_i64() {
            Some(ms) if is_time(name, ms) => {
                let at = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
                humantime::format_rfc3339_millis(at).to_string()
            }
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Object(map) => provenance(map)
            .or_else(|| version(map))
            .unwrap_or_else(|| value.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| cell(name, item))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Whether a field holds a time in milliseconds since the epoch (named so,
/// and after 1973, so that durations in milliseconds stay numbers).
fn is_time(name: &str, ms: i64) -> bool {
    let field = name.rsplit('.').next().unwrap_or(name);
    (field == "ts" || field.ends_with("_ms")) && ms > 100_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_view_reads_as_fields_then_tables() {
        let view = serde_json::json!({
            "key": "user:42",
            "scope": 0,
            "armed_deadline_ms": null,
            "touched_ms": 1_700_000_000_628_i64,
            "changes": [{
                "op": "Update", "status": "Decided", "table": "public.users",
                "pk": "{\"id\":42}", "ts": 1_700_000_000_300_i64, "deadline_ms": 1000,
                "version": {"major": 2, "minor": 0},
                "evidence": {"topic": "db.users", "partition": 3, "offset": 17, "from_file": false},
                "cover": {"ts": 1_700_000_000_332_i64, "service": "svc",
                          "evidence": {"topic": "cache.ndjson", "partition": 0, "offset": 5, "from_file": true}}
            }],
            "invalidations": [
                {"ts": 1_700_000_000_332_i64, "version": 2, "service": "svc"},
                {"ts": 1_700_000_000_400_i64, "version": null, "service": "other"}
            ],
            "pending_fills": []
        });
        let text = table(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"key                user:42"), "{text}");
        assert!(lines.contains(&"armed_deadline_ms  -"), "{text}");
        assert!(
            lines.contains(&"touched_ms         2023-11-14T22:13:20.628Z"),
            "{text}"
        );
        assert!(lines.contains(&"pending_fills: none"), "{text}");
        // Eleven columns: the change is printed a field a line.
        assert!(lines.contains(&"changes (1):"), "{text}");
        assert!(
            lines.contains(&"    evidence        db.users/3@17"),
            "{text}"
        );
        assert!(
            lines.contains(&"    cover.evidence  cache.ndjson:5"),
            "{text}"
        );
        assert!(lines.contains(&"    version         2"), "{text}");
        assert!(lines.contains(&"    deadline_ms     1000"), "{text}");
        // Three columns: a table, a missing version as `-`.
        assert!(lines.contains(&"invalidations (2):"), "{text}");
        assert!(
            lines.contains(&"  service  ts                        version"),
            "{text}"
        );
        assert!(
            lines.contains(&"  other    2023-11-14T22:13:20.400Z  -"),
            "{text}"
        );
    }

    #[test]
    fn keys_are_encoded_for_the_path() {
        assert_eq!(encode_path("user:42"), "user:42");
        assert_eq!(encode_path("a b?c#d%e/f"), "a%20b%3Fc%23d%25e/f");
        assert_eq!(encode_path("é"), "%C3%A9");
    }
}
