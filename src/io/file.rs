//! Files as inputs and outputs: one record a line, either a bare message
//! value or a `kcat -J` line (DESIGN.md section 2), read with bounded memory
//! whatever the line length; violations and dead letters written as NDJSON.
//! An input is a regular file, a named pipe, or standard input (`-`), read
//! front to back as a stream either way.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::dead_letter::{DeadLetter, KEPT_PREFIX_BYTES, KafkaRecord, Origin, Reason, RecordError};
use crate::detect::incident::IncidentEvent;
use crate::detect::storm::StormEvent;
use crate::events::Violation;
use crate::formats::KcatBuffers;
use crate::ingest::{Ingest, Payload, RawInput, Record, Stream};
use crate::model::{Millis, Name, Provenance};
use crate::pipeline::{Acknowledgement, OutputError, Outputs, PartitionBatch, Position, SourceMsg};
use crate::telemetry::{RecordsRead, Stage, StageTimed, Stats};

/// One line of a file, or the start of a line that exceeded the limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a [u8]),
    /// The first [`KEPT_PREFIX_BYTES`] of a line of `len` bytes.
    TooLong {
        prefix: &'a [u8],
        len: usize,
    },
}

/// Reads lines without ever holding more than `max` bytes of one.
pub struct LineReader<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
    /// Bytes of the inner reader's buffer lent as the last line, consumed
    /// when the next is read.
    lent: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            buf: Vec::with_capacity(4096),
            lent: 0,
        }
    }

    /// The next line without its `\n` (and `\r\n`), or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.inner.consume(std::mem::take(&mut self.lent));
        // Most lines lie whole in the inner reader's buffer: they are lent
        // from it, not copied.
        let whole = match self.inner.fill_buf() {
            Ok(chunk) => memchr::memchr(b'\n', chunk).filter(|&i| i <= self.max),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => return Err(e),
        };
        if let Some(end) = whole {
            self.lent = end + 1;
            let line = &self.inner.fill_buf()?[..end];
            return Ok(Some(Line::Text(line.strip_suffix(b"\r").unwrap_or(line))));
        }
        self.buf.clear();
        let mut len = 0usize;
        let mut seen_any = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            seen_any = true;
            let (take, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            let room = if len <= self.max {
                (self.max + 1 - len).min(take)
            } else {
                0
            };
            self.buf.extend_from_slice(&chunk[..room]);
            len += take;
            let consumed = if done { take + 1 } else { take };
            self.inner.consume(consumed);
            if done {
                break;
            }
        }
        if !seen_any {
            return Ok(None);
        }
        if len > self.max {
            self.buf.truncate(KEPT_PREFIX_BYTES.min(self.max));
            return Ok(Some(Line::TooLong {
                prefix: &self.buf,
                len,
            }));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some(Line::Text(&self.buf)))
    }
}

/// An input file and the stream it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInput {
    pub path: PathBuf,
    pub stream: Stream,
}

/// The paths that name the standard input of the process: `-`, and the
/// device files that stand for descriptor 0.
const STDIN_PATHS: [&str; 4] = ["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];

/// Whether `path` names the standard input of the process.
pub fn is_stdin(path: &Path) -> bool {
    STDIN_PATHS.iter().any(|p| path == Path::new(p))
}

/// The name records read from `path` are counted and dead-lettered under:
/// `stdin` for standard input, else the path as given.
pub fn input_name(path: &Path) -> String {
    if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    }
}

/// Opens an input for reading front to back: `-` is standard input; any
/// other path is opened as a file (a regular file, a named pipe, or a device
/// such as `/dev/stdin`).
pub fn open_input(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    if path == Path::new("-") {
        Ok(Box::new(io::stdin()))
    } else {
        Ok(Box::new(File::open(path)?))
    }
}

/// Why a set of inputs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {path} is not readable: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "input {path} is not a readable file or pipe (give a regular file, a named pipe, or - for standard input)"
    )]
    NotAFile { path: PathBuf },
    #[error(
        "inputs {first} and {second} both read standard input: at most one input can be standard input"
    )]
    StdinTwice { first: PathBuf, second: PathBuf },
}

/// Checks before a run that every input can be opened as a stream of lines:
/// a regular file, a named pipe (FIFO) or character device, or standard
/// input, which at most one input may be (two readers would split its
/// lines between them).
pub fn check_inputs<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Result<(), InputError> {
    let mut stdin: Option<&Path> = None;
    for path in paths {
        if is_stdin(path) {
            if let Some(first) = stdin {
                return Err(InputError::StdinTwice {
                    first: first.to_path_buf(),
                    second: path.to_path_buf(),
                });
            }
            stdin = Some(path);
            if path == Path::new("-") {
                continue;
            }
        }
        let kind = std::fs::metadata(path)
            .map_err(|source| InputError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?
            .file_type();
        if !(kind.is_file() || kind.is_fifo() || kind.is_char_device()) {
            return Err(InputError::NotAFile {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Settings of a file reader.
pub struct ReadOptions<'a> {
    pub ingest: &'a Ingest,
    pub stats: &'a Stats,
    pub max_record_bytes: usize,
    pub batch_size: usize,
    pub alignment: &'a Alignment,
}

/// Keeps the readers of several files in step by event time: a reader
/// sends a batch only once every other reader still reading has sent
/// records up to the batch's latest time, so the files are merged by event
/// time a batch at a time (a reader that waits has its batch decoded,
/// ready to send, while the others read on). The watermark is the minimum
/// over the files, so a reader ahead would only fill memory with state
/// waiting for it: the keys of changes whose invalidations, in the other
/// file, are not read yet, which a shard over its budget writes out and
/// reads back. Storm detection (which counts each second once the
/// watermark has passed it) would also see a different split of traffic on
/// every run. In step, a file run is deterministic and its memory bounded.
pub struct Alignment {
    /// Per reader, the highest event time it has sent ([`Millis::MAX`] once
    /// it has finished).
    progress: Mutex<Vec<Millis>>,
    moved: Condvar,
}

/// How often a waiting reader looks again, whatever it was told.
const ALIGNMENT_POLL: Duration = Duration::from_millis(100);

impl Alignment {
    pub fn new(readers: usize) -> Self {
        Alignment {
            progress: Mutex::new(vec![Millis::MIN; readers]),
            moved: Condvar::new(),
        }
    }

    /// Reader `reader` is about to send records up to event time `ts`:
    /// records its progress and waits while it is ahead of the slowest
    /// reader still reading.
    fn advance(&self, reader: usize, ts: Millis) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress[reader] = progress[reader].max(ts);
        self.moved.notify_all();
        loop {
            let slowest = progress.iter().copied().min().unwrap_or(Millis::MAX);
            if progress[reader] <= slowest {
                return;
            }
            progress = self
                .moved
                .wait_timeout(progress, ALIGNMENT_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Reader `reader` has finished (or stopped): it holds no one back.
    fn finish(&self, reader: usize) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress[reader] = Millis::MAX;
        self.moved.notify_all();
    }
}

/// Finishes a reader's alignment however it returns.
struct Finished<'a>(&'a Alignment, usize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// Reads one input into the pipeline as watermark partition `partition`,
/// then sends its end. Returns early without error if the pipeline has
/// stopped (its own error is what matters then).
pub fn read_file(
    input: &FileInput,
    partition: usize,
    opts: &ReadOptions<'_>,
    tx: &Sender<SourceMsg>,
) -> Result<(), FileError> {
    let file_err = |source| FileError {
        path: input.path.clone(),
        source,
    };
    let _finished = Finished(opts.alignment, partition);
    let file = open_input(&input.path).map_err(file_err)?;
    let mut reader = LineReader::new(
        BufReader::with_capacity(1 << 20, file),
        opts.max_record_bytes,
    );
    let name: Arc<str> = Arc::from(input_name(&input.path));
    let topic = Name::new(&name);
    let mut decoder = LineDecoder::default();
    let mut records = Vec::with_capacity(opts.batch_size);
    let mut dead = Vec::new();
    let mut read = 0u64;
    let mut line_no = 0u64;
    let mut started = Instant::now();
    loop {
        let line = reader.next_line().map_err(file_err)?;
        let Some(line) = line else { break };
        line_no += 1;
        match line {
            Line::Text(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(bytes) => {
                read += 1;
                if let Err((error, kafka)) = decoder.decode(
                    bytes,
                    line_no,
                    &topic,
                    input.stream,
                    opts.ingest,
                    &mut records,
                ) {
                    dead.push(DeadLetter {
                        error,
                        origin: Origin::Line {
                            file: Arc::clone(&name),
                            line: line_no,
                            text: bytes.to_vec(),
                            len: bytes.len(),
                            kafka,
                        },
                    });
                }
            }
            Line::TooLong { prefix, len } => {
                read += 1;
                dead.push(DeadLetter {
                    error: RecordError::new(
                        Reason::RecordTooLarge,
                        format!(
                            "line of {len} bytes exceeds inputs.max_record_bytes ({} bytes)",
                            opts.max_record_bytes
                        ),
                    ),
                    origin: Origin::Line {
                        file: Arc::clone(&name),
                        line: line_no,
                        text: prefix.to_vec(),
                        len,
                        kafka: None,
                    },
                });
            }
        }
        if records.len() >= opts.batch_size || dead.len() >= opts.batch_size {
            opts.stats.emit(RecordsRead {
                input: &name,
                count: std::mem::take(&mut read),
            });
            opts.stats
                .emit(StageTimed(Stage::Ingest, started.elapsed()));
            if let Some(ts) = records.iter().map(Record::event_time).max() {
                opts.alignment.advance(partition, ts);
            }
            if !send_batch(tx, partition, &mut records, &mut dead, &topic, line_no) {
                return Ok(());
            }
            started = Instant::now();
        }
    }
    opts.stats.emit(RecordsRead {
        input: &name,
        count: read,
    });
    opts.stats
        .emit(StageTimed(Stage::Ingest, started.elapsed()));
    if send_batch(tx, partition, &mut records, &mut dead, &topic, line_no) {
        let _ = tx.send(SourceMsg::End {
            partitions: vec![partition],
        });
    }
    Ok(())
}

fn send_batch(
    tx: &Sender<SourceMsg>,
    partition: usize,
    records: &mut Vec<Record>,
    dead: &mut Vec<DeadLetter>,
    source: &Name,
    line_no: u64,
) -> bool {
    let msg = SourceMsg::Batch(vec![PartitionBatch {
        partition,
        records: std::mem::replace(records, Vec::with_capacity(records.capacity())),
        dead: std::mem::take(dead),
        position: Some(Position {
            source: source.clone(),
            partition: 0,
            next_offset: line_no as i64 + 1,
            event_time: None,
        }),
        keyed: None,
    }]);
    tx.send(msg).is_ok()
}

/// What a file reader keeps from one line to the next so that decoding a
/// line allocates nothing of its own: the buffers a `kcat -J` line's key and
/// payload are unescaped into.
#[derive(Default)]
pub struct LineDecoder {
    kcat: KcatBuffers,
}

impl LineDecoder {
    /// Decodes and ingests one non-empty line, line `line_no` of `file`.
    /// On failure, returns the error and, for a `kcat` line, the Kafka
    /// record it carried.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        line_no: u64,
        file: &Name,
        stream: Stream,
        ingest: &Ingest,
        out: &mut Vec<Record>,
    ) -> Result<(), (RecordError, Option<Box<KafkaRecord>>)> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let error = RecordError::new(
                Reason::InvalidUtf8,
                format!(
                    "line is not valid UTF-8 (first bad byte at offset {})",
                    e.valid_up_to()
                ),
            );
            (error, None)
        })?;
        match self.kcat.parse(text) {
            Some(Ok(k)) => {
                let provenance = Provenance {
                    topic: Name::new(k.topic),
                    partition: k.partition,
                    offset: k.offset,
                    from_file: false,
                };
                let input = RawInput {
                    stream,
                    key: k.key.map(str::as_bytes),
                    value: k.payload.map(Payload::Text),
                    timestamp_ms: k.ts_ms,
                };
                ingest
                    .ingest(input, &provenance, out)
                    .map_err(|e| (e, Some(Box::new(KafkaRecord::from(k.to_record())))))
            }
            Some(Err(e)) => Err((e, None)),
            None => {
                let provenance = Provenance {
                    topic: file.clone(),
                    partition: 0,
                    offset: line_no as i64,
                    from_file: true,
                };
                let input = RawInput {
                    stream,
                    key: None,
                    value: Some(Payload::Text(text)),
                    timestamp_ms: None,
                };
                ingest
                    .ingest(input, &provenance, out)
                    .map_err(|e| (e, None))
            }
        }
    }
}

/// A `kcat -J` line: what `kcat -C -J` prints for a consumed record.
pub fn kcat_line(
    topic: &str,
    partition: i32,
    offset: i64,
    ts_ms: Option<i64>,
    key: Option<&str>,
    payload: Option<&str>,
) -> String {
    serde_json::json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "tstype": if ts_ms.is_some() { "create" } else { "none" },
        "ts": ts_ms.unwrap_or(-1),
        "broker": 0,
        "headers": [],
        "key": key,
        "payload": payload,
    })
    .to_string()
}

/// `violations.ndjson`, `storms.ndjson` and `incidents.ndjson`
/// (CloudEvents, one a line) and `dlq.ndjson` in a directory.
pub struct FileOutputs {
    violations: BufWriter<File>,
    storms: BufWriter<File>,
    incidents: BufWriter<File>,
    dlq: BufWriter<File>,
    source: String,
    dir: PathBuf,
}

impl FileOutputs {
    /// Creates (truncating) the four files in `dir`.
    pub fn create(dir: &Path, source: &str) -> Result<Self, OutputError> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::create(&path)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .map_err(|source| OutputError::Io {
                    what: path.display().to_string(),
                    source,
                })
        };
        Ok(FileOutputs {
            violations: open("violations.ndjson")?,
            storms: open("storms.ndjson")?,
            incidents: open("incidents.ndjson")?,
            dlq: open("dlq.ndjson")?,
            source: source.to_string(),
            dir: dir.to_path_buf(),
        })
    }

    fn io_err(&self, name: &str, source: io::Error) -> OutputError {
        OutputError::Io {
            what: self.dir.join(name).display().to_string(),
            source,
        }
    }
}

impl Outputs for FileOutputs {
    fn violation(&mut self, v: &Violation) -> Result<(), OutputError> {
        let line = v.to_cloudevent(&self.source);
        writeln!(self.violations, "{line}").map_err(|e| self.io_err("violations.ndjson", e))
    }

    fn storm(&mut self, e: &StormEvent) -> Result<(), OutputError> {
        let line = e.to_cloudevent(&self.source);
        writeln!(self.storms, "{line}").map_err(|e| self.io_err("storms.ndjson", e))
    }

    fn incident(&mut self, e: &IncidentEvent) -> Result<(), OutputError> {
        let line = e.to_cloudevent(&self.source);
        writeln!(self.incidents, "{line}").map_err(|e| self.io_err("incidents.ndjson", e))
    }

    fn dead_letter(&mut self, d: &DeadLetter) -> Result<(), OutputError> {
        let line = d.to_file_json().to_string();
        writeln!(self.dlq, "{line}").map_err(|e| self.io_err("dlq.ndjson", e))
    }

    fn flush(
        &mut self,
        _positions: &[Position],
    ) -> Result<Option<Box<dyn Acknowledgement>>, OutputError> {
        self.violations
            .flush()
            .map_err(|e| self.io_err("violations.ndjson", e))?;
        self.storms
            .flush()
            .map_err(|e| self.io_err("storms.ndjson", e))?;
        self.incidents
            .flush()
            .map_err(|e| self.io_err("incidents.ndjson", e))?;
        self.dlq.flush().map_err(|e| self.io_err("dlq.ndjson", e))?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = LineReader::new(BufReader::with_capacity(7, input), max);
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            out.push(match line {
                Line::Text(t) => String::from_utf8_lossy(t).into_owned(),
                Line::TooLong { prefix, len } => format!("TOO LONG {len} {}", prefix.len()),
            });
        }
        out
    }

    #[test]
    fn a_reader_ahead_waits_for_the_slowest_or_its_end() {
        let align = Alignment::new(2);
        let (tx, rx) = crossbeam_channel::unbounded();
        let quiet = |what: &str| {
            assert!(
                rx.recv_timeout(Duration::from_millis(300)).is_err(),
                "{what}"
            );
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                align.advance(0, 100_000);
                tx.send("the other reader caught up").unwrap();
                align.advance(0, 200_000);
                tx.send("the other reader finished").unwrap();
            });
            quiet("reader 1 has sent nothing yet: reader 0 waits");
            // The slowest reader never waits.
            align.advance(1, 50_000);
            quiet("reader 1 is still behind");
            align.advance(1, 99_999);
            quiet("a millisecond behind is still behind");
            align.advance(1, 100_000);
            assert_eq!(
                rx.recv_timeout(Duration::from_secs(10)),
                Ok("the other reader caught up")
            );
            quiet("reader 0 is ahead again");
            align.finish(1);
            assert_eq!(
                rx.recv_timeout(Duration::from_secs(10)),
                Ok("the other reader finished")
            );
        });
    }

    #[test]
    fn lines_split_on_newlines_with_or_without_final_newline() {
        assert_eq!(lines(b"a\nbb\r\n\nccc", 100), vec!["a", "bb", "", "ccc"]);
        assert_eq!(lines(b"a\n", 100), vec!["a"]);
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn long_lines_are_reported_with_their_length_and_the_next_line_survives() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(
            lines(&input, 1024),
            vec!["TOO LONG 5000 1024".to_string(), "ok".to_string()]
        );
        assert_eq!(lines(b"12345\n", 5), vec!["12345"]);
        assert_eq!(lines(b"123456\n", 5), vec!["TOO LONG 6 5"]);
    }
}
