//! A stand-in Schema Registry for tests: a real HTTP server on loopback
//! serving the registry's documented endpoints from a table of answers. (A
//! real Schema Registry, a JVM service, cannot run on this machine.)

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Path -> HTTP status and body.
    routes: HashMap<String, (u16, String)>,
    /// Requests per path.
    hits: HashMap<String, usize>,
    /// `Authorization` headers received.
    authorizations: Vec<String>,
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

    /// While `down`, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.state.lock().unwrap().down = down;
    }

    pub fn hits(&self, path: &str) -> usize {
        let state = self.shared.state.lock().unwrap();
        state.hits.get(path).copied().unwrap_or(0)
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

/// Answers one request and closes the connection.
fn serve(shared: &Shared, stream: TcpStream) {
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut authorization = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    authorization = Some(value.trim().to_string());
                }
            }
        }
    }
    let (status, body) = {
        let mut state = shared.state.lock().unwrap();
        *state.hits.entry(path.clone()).or_default() += 1;
        state.authorizations.extend(authorization);
        shared.requested.notify_all();
        if state.down {
            (
                503,
                r#"{"error_code":50301,"message":"unavailable"}"#.to_string(),
            )
        } else {
            state.routes.get(&path).cloned().unwrap_or((
                404,
                r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
            ))
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&stream).write_all(response.as_bytes());
}
