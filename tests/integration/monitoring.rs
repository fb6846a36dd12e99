//! The alert rules and the dashboard under `monitoring/`: the rules pass
//! their promtool unit tests, and rules and dashboard name only metrics
//! that vigil exports (checked against a live scrape by the run tests).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::support::promtool;

fn monitoring(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("monitoring")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(monitoring(file)).unwrap()
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let rules = monitoring("vigil-rules.yaml");
    promtool(&["check", "rules", rules.to_str().unwrap()], None);
    let tests = monitoring("vigil-rules.test.yaml");
    promtool(&["test", "rules", tests.to_str().unwrap()], None);
    // Every alert of the rules has a test case.
    let rules_text = read("vigil-rules.yaml");
    let alerts: BTreeSet<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let test_text = read("vigil-rules.test.yaml");
    for alert in &alerts {
        assert!(
            test_text.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test"
        );
    }
    assert_eq!(alerts.len(), 9, "{alerts:?}");
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/vigil-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let exprs: Vec<String> = panels
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let targets = p["targets"].as_array().expect("a panel has targets");
            assert!(!targets.is_empty(), "panel {} shows nothing", p["title"]);
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(exprs.len() >= 15, "the dashboard has its panels");
    exprs
}

/// Asserts that every vigil metric the rules and the dashboard use is in
/// `scrape` (a live `/metrics`), and every recorded series they use is
/// recorded by the rules.
pub fn assert_monitoring_uses_exported_metrics(scrape: &str) {
    let rules = read("vigil-rules.yaml");
    let text = [rules.clone(), dashboard_exprs().join("\n")].join("\n");
    let metric = regex::Regex::new(r"(?:^|[^:a-z_])(vigil_[a-z_]+)").unwrap();
    let used: BTreeSet<&str> = metric
        .captures_iter(&text)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the monitoring files use {name}, which vigil does not export:\n{scrape}"
        );
    }
    let recorded: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .collect();
    let series = regex::Regex::new(r"[a-z_]+:vigil_[a-z_]+:[a-z0-9_]+").unwrap();
    for m in series.find_iter(&text) {
        assert!(
            recorded.contains(m.as_str()),
            "{} is not recorded",
            m.as_str()
        );
    }
}
