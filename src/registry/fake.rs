//! A stand-in Schema Registry for tests: a real HTTP server on loopback
//! serving the registry's documented endpoints from a table of answers, and
//! registering schemas as the registry does (`POST
//! /subjects/{subject}/versions` gives the schema an id, the same text the
//! same id, and serves it under `GET /schemas/ids/{id}`). (A real Schema
//! Registry, a JVM service, cannot run on this machine.) The integration
//! tests include this file too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Path -> HTTP status and body.
    routes: HashMap<String, (u16, String)>,
    /// Path -> the `X-Registry-ArtifactType` header of its answer.
    artifact_types: HashMap<String, String>,
    /// Requests per path.
    hits: HashMap<String, usize>,
    /// `Authorization` headers received.
    authorizations: Vec<String>,
    /// Schemas registered, by text: their ids.
    registered: HashMap<String, u32>,
    /// Subjects registered, in order.
    subjects: Vec<String>,
    /// While set, every request is answered 503.
    down: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every request.
    requested: Condvar,
    stop: AtomicBool,
}

pub struct FakeRegistry {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            requested: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let serving = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(&serving, stream);
                }
            }
        });
        FakeRegistry {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves a schema under `GET /schemas/ids/{id}` (Avro: no `schemaType`).
    pub fn add_schema(&self, id: u32, schema: &str) {
        let body = serde_json::json!({ "schema": schema }).to_string();
        self.answer(&format!("/schemas/ids/{id}"), 200, &body);
    }

    /// Answers a path with a status and a body.
    pub fn answer(&self, path: &str, status: u16, body: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.routes.insert(path.into(), (status, body.into()));
    }

    /// Serves a schema's text as Apicurio does under `{prefix}/ids/globalIds/{id}`
    /// (`prefix` like `/apis/registry/v3`), with its kind in the
    /// `X-Registry-ArtifactType` header when given.
    pub fn add_apicurio(&self, prefix: &str, id: u32, kind: Option<&str>, text: &str) {
        let path = format!("{prefix}/ids/globalIds/{id}");
        let mut state = self.shared.state.lock().unwrap();
        state.routes.insert(path.clone(), (200, text.into()));
        if let Some(kind) = kind {
            state.artifact_types.insert(path, kind.into());
        }
    }

    /// While `down`, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.state.lock().unwrap().down = down;
    }

    pub fn hits(&self, path: &str) -> usize {
        let state = self.shared.state.lock().unwrap();
        state.hits.get(path).copied().unwrap_or(0)
    }

    /// The subjects schemas were registered under, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().subjects.clone()
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().authorizations.clone()
    }

    /// Waits until `path` has been requested at least `n` times; panics
    /// after 30 s.
    pub fn wait_for_hits(&self, path: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut state = self.shared.state.lock().unwrap();
        while state.hits.get(path).copied().unwrap_or(0) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{path} was not requested {n} times");
            state = self.shared.requested.wait_timeout(state, left).unwrap().0;
        }
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Registers the schema of a `POST /subjects/{subject}/versions`.
fn register(state: &mut State, path: &str, request: &[u8]) -> (u16, String) {
    let subject = path
        .strip_prefix("/subjects/")
        .and_then(|rest| rest.strip_suffix("/versions"));
    let request = serde_json::from_slice::<serde_json::Value>(request).ok();
    let schema = request
        .as_ref()
        .and_then(|v| v["schema"].as_str().map(str::to_string));
    let schema_type = request.as_ref().and_then(|v| v.get("schemaType").cloned());
    let (Some(subject), Some(schema)) = (subject, schema) else {
        return (
            422,
            r#"{"error_code":42201,"message":"Invalid schema"}"#.to_string(),
        );
    };
    let next = state.registered.len() as u32 + 1;
    let id = *state.registered.entry(schema.clone()).or_insert(next);
    let mut body = serde_json::json!({ "schema": schema });
    if let Some(schema_type) = schema_type {
        body["schemaType"] = schema_type;
    }
    let body = body.to_string();
    state
        .routes
        .insert(format!("/schemas/ids/{id}"), (200, body));
    state.subjects.push(subject.to_string());
    (200, serde_json::json!({ "id": id }).to_string())
}

/// Answers one request and closes the connection.
fn serve(shared: &Shared, stream: TcpStream) {
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    // Routed by path: a query (`?deleted=true`, which some clients send)
    // changes nothing here.
    let target = words.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut authorization = None;
    let mut length = 0;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("authorization") {
                        authorization = Some(value.trim().to_string());
                    } else if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
        }
    }
    let mut request = vec![0; length];
    if reader.read_exact(&mut request).is_err() {
        return;
    }
    let (status, body, artifact_type) = {
        let mut state = shared.state.lock().unwrap();
        let artifact_type = state
            .artifact_types
            .get(&path)
            .map(|kind| format!("X-Registry-ArtifactType: {kind}\r\n"))
            .unwrap_or_default();
        *state.hits.entry(path.clone()).or_default() += 1;
        state.authorizations.extend(authorization);
        shared.requested.notify_all();
        let (status, body) = if state.down {
            (
                503,
                r#"{"error_code":50301,"message":"unavailable"}"#.to_string(),
            )
        } else if method == "POST" {
            register(&mut state, &path, &request)
        } else {
            state.routes.get(&path).cloned().unwrap_or((
                404,
                r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
            ))
        };
        (status, body, artifact_type)
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n{artifact_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&stream).write_all(response.as_bytes());
}
