//! The HTTP server of `vigil run` over real HTTP, against the embedded
//! broker: health at once, readiness only once partitions are assigned and
//! read to their ends, metrics behind the bearer token, a key's state (and
//! the same from `vigil inspect` once stopped).

use std::time::Duration;

use serde_json::Value;

use crate::broker::*;
use crate::support::*;

const CDC: &str = "http-cdc";
const CACHE: &str = "http-cache";
const WAIT: Duration = Duration::from_secs(60);

fn json(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

#[test]
fn readiness_waits_for_assignment_and_catch_up_and_the_token_guards_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // The input topics do not exist yet: no partition can be assigned.
    let broker = Broker::new(&[]);
    let port = free_port();
    let text = |s: &str| toml::Value::String(s.to_string());
    let config = run_config(
        dir.path(),
        "",
        &broker.bootstrap,
        &[CDC],
        &[CACHE],
        &[
            ("metrics", "listen", text(&format!("127.0.0.1:{port}"))),
            ("metrics", "ready_lag", toml::Value::Integer(0)),
            ("metrics", "bearer_token", text("s3cret")),
            ("kafka", "topic.metadata.refresh.interval.ms", text("200")),
        ],
    );
    let daemon = Daemon::start(&config);
    assert!(
        wait_until(WAIT, || http_get(port, "/healthz", None)
            .is_some_and(|r| r.status == 200)),
        "/healthz answers once the process serves:\n{}",
        daemon.log()
    );
    let before = http_get(port, "/readyz", None).unwrap();
    assert_eq!(before.status, 503, "{}", before.body);
    let body = json(&before);
    assert_eq!(body["ready"], false);
    assert_eq!(body["assigned"], 0);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("no input partition"),
        "{body}"
    );

    for token in [None, Some("wrong")] {
        let refused = http_get(port, "/metrics", token).unwrap();
        assert_eq!(refused.status, 401, "{token:?}: {}", refused.body);
    }
    // Published once a second.
    let mut metrics = String::new();
    assert!(
        wait_until(WAIT, || {
            let response = http_get(port, "/metrics", Some("s3cret")).unwrap();
            assert_eq!(response.status, 200);
            metrics = response.body;
            metrics.contains("# HELP vigil_build_info ")
        }),
        "{metrics}"
    );

    broker.cluster().create_topic(CDC, 2, 1).unwrap();
    broker.cluster().create_topic(CACHE, 2, 1).unwrap();
    let records = 500;
    for i in 0..records {
        let value = format!(
            r#"{{"operation":"invalidate","cache_key":"user:{i}","timestamp":{}}}"#,
            1_700_000_000_000i64 + i
        );
        broker.produce(&Out {
            topic: CACHE,
            partition: (i % 2) as i32,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
            ts_ms: None,
        });
    }
    broker.flush();
    let mut last = before;
    let ready = wait_until(WAIT, || {
        last = http_get(port, "/readyz", None).unwrap();
        last.status == 200
    });
    assert!(
        ready,
        "ready once caught up: {}\n{}",
        last.body,
        daemon.log()
    );
    let body = json(&last);
    assert_eq!(body["ready"], true);
    assert_eq!(body["assigned"], 4, "{body}");
    assert_eq!(body["lag_known"], 4, "{body}");
    assert_eq!(body["lag"], 0, "{body}");
    let consumed = |m: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with("vigil_records_consumed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        wait_until(WAIT, || consumed(
            &http_get(port, "/metrics", Some("s3cret")).unwrap().body
        ) == records as u64),
        "a ready instance has read every record"
    );

    daemon.terminate();
}

/// A Debezium update of `public.users` row `id` to `version`, committed at
/// `ts_ms`.
fn user_update(id: u64, version: u64, ts_ms: i64) -> String {
    format!(
        r#"{{"op":"u","ts_ms":{ts_ms},"source":{{"table":"users","schema":"public","ts_ms":{ts_ms}}},"before":{{"id":{id},"version":{}}},"after":{{"id":{id},"version":{version}}}}}"#,
        version - 1
    )
}

#[test]
fn a_key_s_story_is_served_while_running_and_inspected_once_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (cdc, cache) = ("keys-cdc", "keys-cache");
    let broker = Broker::new(&[(cdc, 1), (cache, 1)]);
    let port = free_port();
    let tables = "[detect]\ndeadline = \"1s\"\n\n[[tables]]\ntable = \"public.users\"\npk = [\"id\"]\nkeys = [\"user:{id}\"]\nversion = \"column:version\"\n";
    let config = run_config(
        dir.path(),
        tables,
        &broker.bootstrap,
        &[cdc],
        &[cache],
        &[
            (
                "metrics",
                "listen",
                toml::Value::String(format!("127.0.0.1:{port}")),
            ),
            // Two decided changes are enough to open an incident here.
            ("incidents", "min_changes", toml::Value::Integer(2)),
        ],
    );
    // user:1 changes and is never invalidated; user:2 is invalidated in time.
    // A minute ago: once the inputs are idle the watermark follows the wall
    // clock, and an incident opened then stays open for the window (5
    // minutes) and the hold after it, beyond the end of the test.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = now_ms / 1000 * 1000 - 60_000;
    let invalidation = format!(
        r#"{{"operation":"invalidate","cache_key":"user:2","version":5,"timestamp":{}}}"#,
        ts + 10
    );
    for (topic, value) in [
        (cdc, user_update(1, 3, ts)),
        (cdc, user_update(2, 5, ts)),
        (cache, invalidation),
    ] {
        broker.produce(&Out {
            topic,
            partition: 0,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
            ts_ms: Some(ts),
        });
    }
    broker.flush();
    let daemon = Daemon::start(&config);
    let violations = json_values(&broker.read_until(VIOLATIONS, 3, WAIT, |m| !m.is_empty()));
    assert_eq!(violations.len(), 1, "{violations:?}\n{}", daemon.log());
    let reported = &violations[0]["data"];
    assert_eq!(reported["kind"], "missing_invalidation");
    assert_eq!(reported["key"], "user:1");

    // The daemon's view, once a checkpoint holds the verdict.
    let mut missed = Value::Null;
    assert!(
        wait_until(WAIT, || {
            let response = http_get(port, "/v1/keys/user:1", None).unwrap();
            missed = json(&response);
            response.status == 200 && missed["changes"][0]["status"] != "Pending"
        }),
        "{missed}\n{}",
        daemon.log()
    );
    let change = &missed["changes"][0];
    assert_eq!(change["table"], "public.users");
    assert_eq!(change["version"]["major"], reported["version"]);
    assert_eq!(change["cover"], Value::Null, "nothing covered it: {missed}");
    let covered = json(&http_get(port, "/v1/keys/user:2", None).unwrap());
    assert_eq!(covered["changes"][0]["cover"]["ts"], ts + 10, "{covered}");
    assert_eq!(covered["invalidations"][0]["version"], 5, "{covered}");
    let asked = run(vigil().args([
        "inspect",
        "--url",
        &format!("http://127.0.0.1:{port}/"),
        "user:1",
    ]));
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    let asked: Value = serde_json::from_slice(&asked.stdout).unwrap();
    assert_eq!(
        asked["changes"], missed["changes"],
        "inspect --url asks the same"
    );
    let unknown = http_get(port, "/v1/keys/user:404", None).unwrap();
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    // The row behind user:1: its entity holds the version the change brought.
    let row = json(&http_get(port, "/v1/entities/public.users/%7B%22id%22:1%7D", None).unwrap());
    assert_eq!(row["pk"], reported["pk"], "{row}");
    assert_eq!(row["state"]["highest"]["major"], 3, "{row}");
    assert_eq!(row["touched_ms"], ts, "{row}");
    let asked_row = run(vigil().args([
        "inspect",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--entity",
        "public.users",
        r#"{"id":1}"#,
    ]));
    assert!(
        asked_row.status.success(),
        "{}",
        String::from_utf8_lossy(&asked_row.stderr)
    );
    let asked_row: Value = serde_json::from_slice(&asked_row.stdout).unwrap();
    assert_eq!(asked_row, row, "inspect --url --entity asks the same");
    let no_row = http_get(port, "/v1/entities/public.users/%7B%22id%22:404%7D", None).unwrap();
    assert_eq!(no_row.status, 404, "{}", no_row.body);
    let storms = json(&http_get(port, "/v1/storms", None).unwrap());
    assert_eq!(
        storms,
        serde_json::json!({"storms": []}),
        "three records are no storm"
    );
    // One change of two invalidated in time: below the SLO, an incident is
    // open on the table, as of a checkpoint after it opened. (Records of
    // long ago would open and resolve it at once: the watermark jumps to
    // the wall clock.)
    let mut incidents = Value::Null;
    assert!(
        wait_until(WAIT, || {
            incidents = json(&http_get(port, "/v1/incidents", None).unwrap());
            incidents["incidents"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        }),
        "{incidents}\n{}",
        daemon.log()
    );
    let open = &incidents["incidents"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{incidents}");
    let opened = open[0].clone();
    let open = &opened;
    assert_eq!(open["table"], "public.users", "{open}");
    assert_eq!(
        (open["decided"].as_u64(), open["in_time"].as_u64()),
        (Some(2), Some(1)),
        "{open}"
    );
    assert_eq!(open["violations"]["missing_invalidation"], 1, "{open}");
    assert_eq!(open["top_keys"][0][0], "user:1", "{open}");

    daemon.terminate();
    let inspected = run(vigil()
        .args(["inspect", "--state"])
        .arg(dir.path().join("state"))
        .arg("user:1"));
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let stopped: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(stopped["changes"], missed["changes"], "the same story");
    let as_table = run(vigil()
        .args(["inspect", "--format", "table", "--state"])
        .arg(dir.path().join("state"))
        .arg("user:1"));
    let as_table = String::from_utf8_lossy(&as_table.stdout);
    let status = stopped["changes"][0]["status"].as_str().unwrap();
    assert!(
        as_table
            .lines()
            .any(|l| l.starts_with("key ") && l.ends_with(" user:1"))
            && as_table.contains(&format!(
                "changes ({}):",
                stopped["changes"].as_array().unwrap().len()
            ))
            && as_table
                .lines()
                .any(|l| l.trim_start().starts_with("status") && l.ends_with(status)),
        "{as_table}"
    );
    let entity = run(vigil()
        .args(["inspect", "--entity", "public.users", "--state"])
        .arg(dir.path().join("state"))
        .arg(r#"{"id":1}"#));
    assert!(
        entity.status.success(),
        "{}",
        String::from_utf8_lossy(&entity.stderr)
    );
    let entity: Value = serde_json::from_slice(&entity.stdout).unwrap();
    assert_eq!(entity["state"], row["state"], "the same row");
    let absent = run(vigil()
        .args(["inspect", "--state"])
        .arg(dir.path().join("state"))
        .arg("user:404"));
    assert_eq!(absent.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&absent.stderr).contains("no state for key"));
    let storms = run(vigil()
        .args(["inspect", "--storms", "--state"])
        .arg(dir.path().join("state")));
    assert!(storms.status.success());
    let storms: Value = serde_json::from_slice(&storms.stdout).unwrap();
    assert_eq!(storms, serde_json::json!({"storms": []}));
    let incidents = run(vigil()
        .args(["inspect", "--incidents", "--state"])
        .arg(dir.path().join("state")));
    assert!(incidents.status.success());
    let stopped: Value = serde_json::from_slice(&incidents.stdout).unwrap();
    let stopped = stopped["incidents"].as_array().unwrap();
    assert_eq!(stopped.len(), 1, "the incident is still open: {stopped:?}");
    assert_eq!(
        (&stopped[0]["table"], &stopped[0]["start_ms"]),
        (&opened["table"], &opened["start_ms"]),
        "the same incident: {stopped:?}"
    );
}
