//! What the command line gives operators besides the modes: the
//! configuration named by `VIGIL_CONFIG` among Kubernetes' service-link
//! variables, shell completions, manual pages.

use std::fs;

use crate::support::*;

#[test]
fn vigil_config_names_the_file_and_service_links_are_not_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(
        &config,
        "[[tables]]\ntable = \"public.users\"\npk = [\"id\"]\nkeys = [\"user:{id}\"]\nversion = \"column:version\"\n",
    )
    .unwrap();
    let cdc = dir.path().join("cdc.ndjson");
    fs::write(
        &cdc,
        r#"{"op":"u","ts_ms":1700000000000,"source":{"table":"users","schema":"public","ts_ms":1700000000000},"before":{"id":1,"version":1},"after":{"id":1,"version":2}}"#,
    )
    .unwrap();
    let output = run(vigil()
        .args(["check", "--quiet", "--cdc"])
        .arg(&cdc)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("VIGIL_CONFIG", &config)
        // What Kubernetes gives every pod of a namespace with a Service
        // named vigil.
        .env("VIGIL_SERVICE_HOST", "10.0.0.7")
        .env("VIGIL_SERVICE_PORT", "9464")
        .env("VIGIL_PORT", "tcp://10.0.0.7:9464")
        .env("VIGIL_PORT_9464_TCP_PROTO", "tcp"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        summary["violations"]["missing_invalidation"], 1,
        "the table of VIGIL_CONFIG is mapped: {summary}"
    );
}

#[test]
fn completions_and_manual_pages_cover_every_subcommand() {
    let bash = run(vigil().args(["completions", "bash"]));
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("_vigil()"), "{script}");
    for sub in ["check", "run", "replay", "gen", "demo", "man"] {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }

    let man = run(vigil().arg("man"));
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH vigil 1"),
        "{page}"
    );
    assert!(page.contains("consistency watchdog"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let written = run(vigil().arg("man").arg("--out").arg(&out));
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    for page in ["vigil.1", "vigil-run.1", "vigil-check.1"] {
        let text = fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}
