//! The HTTP server of `vigil run` over real HTTP, against the embedded
//! broker: health at once, readiness only once partitions are assigned and
//! read to their ends, metrics behind the bearer token.

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

    broker.cluster.create_topic(CDC, 2, 1).unwrap();
    broker.cluster.create_topic(CACHE, 2, 1).unwrap();
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

    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
}
