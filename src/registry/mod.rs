//! The Schema Registry client: the schema of an id, fetched over HTTP
//! (Confluent's: `GET {url}/schemas/ids/{id}`, referenced schemas by
//! `GET {url}/subjects/{subject}/versions/{version}`; Apicurio's, with
//! `schema_registry.framing = "apicurio"`: `GET {url}/ids/globalIds/{id}`)
//! and kept parsed (Avro) or compiled (Protobuf).
//!
//! Each id is fetched once however many threads ask for it at the same time:
//! the first asker fetches while the others wait for its answer. What the
//! registry says for good (the schema, or that the id is unknown or its
//! schema unusable) is kept; a failure to reach it is not, so the next ask
//! tries again. At most `schema_registry.max_schemas` answers are kept, the
//! longest-held one dropped first (it is fetched again when a record names
//! it).
//!
//! `vigil gen` registers the schemas of its Avro and Protobuf records with
//! [`SchemaRegistry::register`] (`POST {url}/subjects/{subject}/versions`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, ResolvedSchema};
use serde::Deserialize;

use crate::config::{Framing, SchemaRegistryConfig};

mod protobuf;

pub use protobuf::ProtoSchema;

/// Error code of the registry's "schema not found" answer.
const SCHEMA_NOT_FOUND: u32 = 40403;

/// How deep references may nest (a schema referencing one that references
/// another...): past it the schema is malformed (a cycle, most likely).
const MAX_REFERENCE_DEPTH: usize = 16;

/// Why the registry gave no usable schema for an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached, failed (5xx), refused the
    /// credentials, or answered something that is not its API: worth
    /// retrying, never a verdict on the record.
    #[error("schema registry {url} unavailable: {message}")]
    Unavailable { url: String, message: String },
    /// The registry does not know the id (HTTP 404, error code 40403).
    #[error("the schema registry has no schema with id {id}")]
    UnknownSchema { id: u32 },
    /// The registry's schema for the id (or one it references) does not
    /// parse as a schema of its kind.
    #[error("schema {id} is not a valid {kind} schema: {message}")]
    Malformed {
        id: u32,
        kind: SchemaKind,
        message: String,
    },
    /// The id names a schema of a kind vigil does not read.
    #[error("schema {id} is a {kind} schema; vigil reads Avro, Protobuf and JSON Schema")]
    Unsupported { id: u32, kind: String },
    /// The registry refused to register a schema under a subject
    /// (credentials, an incompatible or invalid schema).
    #[error("the schema registry refused the schema of subject {subject:?}: {message}")]
    Rejected { subject: String, message: String },
}

/// The kinds of schema whose records vigil decodes with the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    Avro,
    Protobuf,
}

impl std::fmt::Display for SchemaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchemaKind::Avro => "Avro",
            SchemaKind::Protobuf => "Protobuf",
        })
    }
}

impl RegistryError {
    /// Whether asking again later may give another answer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// Why a client could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read schema_registry.ca_file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schema_registry.ca_file {path} holds no usable PEM certificate: {message}")]
    BadCa { path: PathBuf, message: String },
}

/// A writer schema, the named types it uses (looked up when a value of the
/// schema is walked: `Schema::Ref` names one of them) and its reader, built
/// once: its names resolved when the schema is parsed, not per record.
pub struct WriterSchema {
    pub id: u32,
    parsed: Parsed,
    names: HashMap<Name, Schema>,
}

/// The schemas a writer schema is made of and the reader that borrows them.
#[ouroboros::self_referencing]
struct Parsed {
    /// The writer schema and the schemas it references.
    schemata: (Schema, Vec<Schema>),
    #[borrows(schemata)]
    #[covariant]
    reader: GenericDatumReader<'this>,
}

impl WriterSchema {
    /// Parses a schema and the schemas it references (theirs first).
    pub fn parse(id: u32, text: &str, references: &[String]) -> Result<Self, RegistryError> {
        let malformed = |e: apache_avro::Error| RegistryError::Malformed {
            id,
            kind: SchemaKind::Avro,
            message: e.to_string(),
        };
        let (schema, references) = if references.is_empty() {
            (Schema::parse_str(text).map_err(malformed)?, Vec::new())
        } else {
            Schema::parse_str_with_list(text, references).map_err(malformed)?
        };
        let names = ResolvedSchema::new_with_schemata(in_order(&schema, &references))
            .map_err(malformed)?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        let parsed = ParsedTryBuilder {
            schemata: (schema, references),
            reader_builder: |(schema, references): &(Schema, Vec<Schema>)| {
                GenericDatumReader::builder(schema)
                    .writer_schemata(in_order(schema, references))?
                    .build()
            },
        }
        .try_build()
        .map_err(malformed)?;
        Ok(WriterSchema { id, parsed, names })
    }

    /// The writer schema.
    pub fn schema(&self) -> &Schema {
        &self.parsed.borrow_schemata().0
    }

    /// The schemas it references, which the Avro reader needs beside it.
    pub fn references(&self) -> &[Schema] {
        &self.parsed.borrow_schemata().1
    }

    /// The reader of the schema's records, built with it.
    pub fn reader(&self) -> &GenericDatumReader<'_> {
        self.parsed.borrow_reader()
    }

    /// The named type a `Schema::Ref` stands for.
    pub fn named(&self, name: &Name) -> Option<&Schema> {
        self.names.get(name)
    }
}

/// A writer schema's schemas as their names resolve: referenced types
/// first, each schema's references resolving against the ones before it.
fn in_order<'s>(schema: &'s Schema, references: &'s [Schema]) -> Vec<&'s Schema> {
    references.iter().chain([schema]).collect()
}

impl std::fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSchema")
            .field("id", &self.id)
            .field("schema", self.schema())
            .field("references", &self.references())
            .finish_non_exhaustive()
    }
}

/// A schema the registry serves, as records framed with its id are read.
#[derive(Debug)]
pub enum Registered {
    /// An Avro writer schema: the records are its binary encoding.
    Avro(Box<WriterSchema>),
    /// A compiled Protobuf schema: the records are message indexes, then
    /// the encoding of the message they name.
    Protobuf(Box<ProtoSchema>),
    /// A JSON Schema: the records are JSON text after the header, read as
    /// records without the framing are (the schema is not needed for it).
    JsonSchema,
}

/// What the registry said of an id, for good.
type Answer = Result<Arc<Registered>, RegistryError>;

/// One id's slot: `None` until an answer is had. Its lock is held while the
/// id is fetched, so that other askers wait for that fetch.
type Slot = Arc<Mutex<Option<Answer>>>;

/// The answers kept, and the order in which they came.
#[derive(Default)]
struct Cache {
    slots: HashMap<u32, Slot>,
    order: VecDeque<u32>,
}

/// A Schema Registry client. Cheap to share between threads.
pub struct SchemaRegistry {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
    max_schemas: usize,
    framing: Framing,
    cache: Mutex<Cache>,
}

/// A schema as the registry serves it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Served {
    schema: String,
    /// Absent for Avro.
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// A schema's reference to another: the name it uses for it, and where the
/// registry keeps it.
#[derive(Deserialize)]
#[serde(from = "ConfluentReference")]
struct Reference {
    /// The import path a Protobuf schema names the reference by (an Avro
    /// schema, by the full name of the type).
    name: String,
    at: Located,
}

/// Where a referenced schema is kept.
enum Located {
    /// Confluent's API: a subject's version.
    Subject { subject: String, version: i64 },
    /// Apicurio's: a version of an artifact in a group.
    Artifact {
        group: String,
        artifact: String,
        version: String,
    },
}

/// A reference as Confluent's API serves it.
#[derive(Deserialize)]
struct ConfluentReference {
    name: String,
    subject: String,
    version: i64,
}

impl From<ConfluentReference> for Reference {
    fn from(r: ConfluentReference) -> Self {
        Reference {
            name: r.name,
            at: Located::Subject {
                subject: r.subject,
                version: r.version,
            },
        }
    }
}

/// A reference as Apicurio's API serves it (v2 and v3).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApicurioReference {
    group_id: Option<String>,
    artifact_id: String,
    version: Option<String>,
    name: String,
}

impl From<ApicurioReference> for Reference {
    fn from(r: ApicurioReference) -> Self {
        Reference {
            name: r.name,
            at: Located::Artifact {
                group: r.group_id.unwrap_or_else(|| "default".to_string()),
                artifact: r.artifact_id,
                version: r.version.unwrap_or_else(|| "latest".to_string()),
            },
        }
    }
}

/// The registry's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error_code: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SchemaRegistry {
    /// A client for `config.url`; `None` when no registry is configured.
    pub fn from_config(config: &SchemaRegistryConfig) -> Result<Option<Self>, SetupError> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let roots = match &config.ca_file {
            None => ureq::tls::RootCerts::PlatformVerifier,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| SetupError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                let bad = |message: String| SetupError::BadCa {
                    path: path.clone(),
                    message,
                };
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    if let ureq::tls::PemItem::Certificate(cert) =
                        item.map_err(|e| bad(e.to_string()))?
                    {
                        certs.push(cert);
                    }
                }
                if certs.is_empty() {
                    return Err(bad("no CERTIFICATE block".into()));
                }
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(roots)
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout.0))
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .into();
        let authorization = match (
            &config.basic_auth_user,
            &config.basic_auth_password,
            &config.bearer_token,
        ) {
            (Some(user), Some(password), _) => Some(format!(
                "Basic {}",
                crate::dead_letter::base64(format!("{user}:{password}").as_bytes())
            )),
            (_, _, Some(token)) => Some(format!("Bearer {token}")),
            _ => None,
        };
        Ok(Some(SchemaRegistry {
            base: url.trim_end_matches('/').to_string(),
            agent,
            authorization,
            max_schemas: config.max_schemas,
            framing: config.framing,
            cache: Mutex::default(),
        }))
    }

    /// The schema of an id, fetched on first use.
    pub fn schema(&self, id: u32) -> Answer {
        let slot = self.slot(id);
        let mut answer = lock(&slot);
        if let Some(known) = answer.as_ref() {
            return known.clone();
        }
        let fetched = self.fetch(id);
        if fetched.as_ref().is_err_and(RegistryError::is_retryable) {
            return fetched;
        }
        *answer = Some(fetched.clone());
        fetched
    }

    /// The slot of an id, made (and the oldest one dropped past the bound)
    /// when the id is new.
    fn slot(&self, id: u32) -> Slot {
        let mut cache = lock(&self.cache);
        if let Some(slot) = cache.slots.get(&id) {
            return Arc::clone(slot);
        }
        if cache.slots.len() >= self.max_schemas
            && let Some(oldest) = cache.order.pop_front()
        {
            cache.slots.remove(&oldest);
        }
        let slot = Slot::default();
        cache.slots.insert(id, Arc::clone(&slot));
        cache.order.push_back(id);
        slot
    }

    fn fetch(&self, id: u32) -> Answer {
        let served = match self.framing {
            Framing::Confluent => {
                let path = format!("/schemas/ids/{id}");
                match self.get(&path)? {
                    Ok(served) => served,
                    Err(SCHEMA_NOT_FOUND) => return Err(RegistryError::UnknownSchema { id }),
                    Err(code) => {
                        return Err(
                            self.unavailable(&path, format!("HTTP 404 with error code {code}"))
                        );
                    }
                }
            }
            Framing::Apicurio => self.get_by_global_id(id)?,
        };
        let kind = match served.schema_type.as_deref() {
            None | Some("AVRO") => SchemaKind::Avro,
            Some("PROTOBUF") => SchemaKind::Protobuf,
            Some("JSON") => return Ok(Arc::new(Registered::JsonSchema)),
            Some(kind) => {
                return Err(RegistryError::Unsupported {
                    id,
                    kind: kind.to_string(),
                });
            }
        };
        let mut references = Vec::new();
        self.collect_references(id, kind, &served.references, 0, &mut references)?;
        match kind {
            SchemaKind::Avro => {
                let texts: Vec<String> = references.into_iter().map(|(_, text)| text).collect();
                WriterSchema::parse(id, &served.schema, &texts)
                    .map(|schema| Arc::new(Registered::Avro(Box::new(schema))))
            }
            SchemaKind::Protobuf => ProtoSchema::compile(id, &served.schema, &references)
                .map(|schema| Arc::new(Registered::Protobuf(Box::new(schema)))),
        }
    }

    /// The names and texts of referenced schemas, the ones they reference
    /// first.
    fn collect_references(
        &self,
        id: u32,
        kind: SchemaKind,
        references: &[Reference],
        depth: usize,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), RegistryError> {
        if !references.is_empty() && depth >= MAX_REFERENCE_DEPTH {
            return Err(RegistryError::Malformed {
                id,
                kind,
                message: format!("references nest deeper than {MAX_REFERENCE_DEPTH}"),
            });
        }
        for reference in references {
            let served =
                self.get_reference(&reference.at)?
                    .map_err(|missing| RegistryError::Malformed {
                        id,
                        kind,
                        message: format!("referenced {missing} not found"),
                    })?;
            self.collect_references(id, kind, &served.references, depth + 1, out)?;
            if !out.iter().any(|(_, text)| *text == served.schema) {
                out.push((reference.name.clone(), served.schema));
            }
        }
        Ok(())
    }

    /// A referenced schema: `Ok(Err(what))` when the registry says it has
    /// none.
    fn get_reference(&self, at: &Located) -> Result<Result<Served, String>, RegistryError> {
        match at {
            Located::Subject { subject, version } => {
                let path = format!("/subjects/{}/versions/{version}", percent_encode(subject));
                Ok(self.get(&path)?.map_err(|code| {
                    format!("subject {subject:?} version {version} (error code {code})")
                }))
            }
            Located::Artifact {
                group,
                artifact,
                version,
            } => {
                let version_path = format!(
                    "/groups/{}/artifacts/{}/versions/{}",
                    percent_encode(group),
                    percent_encode(artifact),
                    percent_encode(version)
                );
                // v2 serves a version's content at its path, v3 under it.
                let content = if self.base.ends_with("/v2") {
                    version_path.clone()
                } else {
                    format!("{version_path}/content")
                };
                let missing = || format!("artifact {group}/{artifact} version {version}");
                match self.get_apicurio(&content)? {
                    Some((schema, schema_type)) => Ok(Ok(Served {
                        schema,
                        schema_type: Some(schema_type),
                        references: self.apicurio_references(&version_path)?,
                    })),
                    None => Ok(Err(missing())),
                }
            }
        }
    }

    /// The references of the Apicurio artifact version (or global id) at
    /// `path` (`{path}/references`); none from a registry that has no such
    /// endpoint (before Apicurio 2.4).
    fn apicurio_references(&self, path: &str) -> Result<Vec<Reference>, RegistryError> {
        let path = format!("{path}/references");
        let (status, body, _) = self.call(&path, None)?;
        match status {
            200 => serde_json::from_str::<Vec<ApicurioReference>>(&body)
                .map(|refs| refs.into_iter().map(Reference::from).collect())
                .map_err(|e| {
                    self.unavailable(
                        &path,
                        format!("an answer that is not a list of references ({e})"),
                    )
                }),
            404 => Ok(Vec::new()),
            _ => Err(self.unavailable(&path, format!("HTTP {status}: {}", first_line(&body)))),
        }
    }

    /// GETs the content of an Apicurio schema at `path` with its kind, from
    /// the `X-Registry-ArtifactType` header (or, without it, told by the
    /// text); `None` for a 404 with Apicurio's JSON error body.
    fn get_apicurio(&self, path: &str) -> Result<Option<(String, String)>, RegistryError> {
        let (status, body, artifact_type) = self.call(path, None)?;
        match status {
            200 => {
                let schema_type = artifact_type.unwrap_or_else(|| kind_of_text(&body).to_string());
                Ok(Some((body, schema_type)))
            }
            404 if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&body)
                .is_ok() =>
            {
                Ok(None)
            }
            _ => Err(self.unavailable(path, format!("HTTP {status}: {}", first_line(&body)))),
        }
    }

    /// GETs the schema of an Apicurio global id (`GET
    /// /ids/globalIds/{id}`, v2 or v3 as `url` names) and its references
    /// (`GET /ids/globalIds/{id}/references`, each read by its group,
    /// artifact and version). A 404 with Apicurio's JSON error body is an
    /// unknown id.
    fn get_by_global_id(&self, id: u32) -> Result<Served, RegistryError> {
        let path = format!("/ids/globalIds/{id}");
        match self.get_apicurio(&path)? {
            Some((schema, schema_type)) => Ok(Served {
                schema,
                schema_type: Some(schema_type),
                references: self.apicurio_references(&path)?,
            }),
            None => Err(RegistryError::UnknownSchema { id }),
        }
    }

    /// GETs a schema: `Ok(Err(error code))` when the registry says it has
    /// none (HTTP 404 with its error body); any other failure, a 404 without
    /// the registry's error body included (a wrong `url`, most likely), is
    /// [`RegistryError::Unavailable`].
    fn get(&self, path: &str) -> Result<Result<Served, u32>, RegistryError> {
        let (status, body, _) = self.call(path, None)?;
        let registry_code = || {
            serde_json::from_str::<ErrorBody>(&body)
                .ok()
                .map(|b| b.error_code)
        };
        match (status, registry_code()) {
            (200, _) => serde_json::from_str(&body).map(Ok).map_err(|e| {
                self.unavailable(path, format!("an answer that is not a schema ({e})"))
            }),
            (404, Some(code)) => Ok(Err(code)),
            _ => Err(self.unavailable(path, format!("HTTP {status}: {}", first_line(&body)))),
        }
    }

    /// Registers a schema of `kind` under a subject (`POST
    /// /subjects/{subject}/versions`) and returns its id; a schema already
    /// registered keeps its id.
    pub fn register(
        &self,
        subject: &str,
        schema: &str,
        kind: SchemaKind,
    ) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let path = format!("/subjects/{}/versions", percent_encode(subject));
        let request = match kind {
            SchemaKind::Avro => serde_json::json!({ "schema": schema }),
            SchemaKind::Protobuf => {
                serde_json::json!({ "schema": schema, "schemaType": "PROTOBUF" })
            }
        }
        .to_string();
        let (status, body, _) = self.call(&path, Some(&request))?;
        match status {
            200 => serde_json::from_str::<Registered>(&body)
                .map(|r| r.id)
                .map_err(|e| self.unavailable(&path, format!("an answer without an id ({e})"))),
            // Bad credentials, an incompatible or invalid schema: the
            // registry's verdict on the request.
            400..=499 => Err(RegistryError::Rejected {
                subject: subject.to_string(),
                message: format!("HTTP {status}: {}", first_line(&body)),
            }),
            _ => Err(self.unavailable(&path, format!("HTTP {status}: {}", first_line(&body)))),
        }
    }

    fn unavailable(&self, path: &str, message: String) -> RegistryError {
        RegistryError::Unavailable {
            url: format!("{}{path}", self.base),
            message,
        }
    }

    /// Sends a GET, or a POST of `body`, and returns the status, the
    /// answer's text and its `X-Registry-ArtifactType` header (Apicurio's);
    /// failing to get one is [`RegistryError::Unavailable`].
    fn call(
        &self,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String, Option<String>), RegistryError> {
        let url = format!("{}{path}", self.base);
        let content = "application/vnd.schemaregistry.v1+json";
        let authorization = self.authorization.as_deref();
        let sent = match body {
            None => {
                let mut request = self.agent.get(&url).header("Accept", content);
                if let Some(value) = authorization {
                    request = request.header("Authorization", value);
                }
                request.call()
            }
            Some(body) => {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("Accept", content)
                    .header("Content-Type", content);
                if let Some(value) = authorization {
                    request = request.header("Authorization", value);
                }
                request.send(body)
            }
        };
        let mut response = sent.map_err(|e| self.unavailable(path, e.to_string()))?;
        let status = response.status().as_u16();
        let artifact_type = response
            .headers()
            .get("X-Registry-ArtifactType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.unavailable(path, format!("reading the answer: {e}")))?;
        Ok((status, text, artifact_type))
    }
}

/// The kind of a schema told by its text, as the registry names kinds: a
/// JSON object with `$schema` or of `"type": "object"` is a JSON Schema,
/// other JSON an Avro schema, anything else a `.proto` file.
fn kind_of_text(text: &str) -> &'static str {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(json) if json.get("$schema").is_some() || json["type"] == "object" => "JSON",
        Ok(_) => "AVRO",
        Err(_) => "PROTOBUF",
    }
}

/// The first line of an error body, at most 200 characters, for a message.
fn first_line(body: &str) -> &str {
    let line = body.lines().next().unwrap_or("");
    match line.char_indices().nth(200) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// A subject name as one segment of a URL path.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::fake::FakeRegistry;
    use super::*;

    const ROW: &str =
        r#"{"type":"record","name":"Row","namespace":"t","fields":[{"name":"id","type":"int"}]}"#;

    /// The Avro writer schema of an answer.
    fn writer(answer: &Registered) -> &WriterSchema {
        match answer {
            Registered::Avro(schema) => schema,
            other => panic!("not an Avro schema: {other:?}"),
        }
    }

    fn client(registry: &FakeRegistry, max_schemas: usize) -> SchemaRegistry {
        let config = SchemaRegistryConfig {
            url: Some(registry.url()),
            max_schemas,
            ..SchemaRegistryConfig::default()
        };
        SchemaRegistry::from_config(&config).unwrap().unwrap()
    }

    #[test]
    fn no_url_no_client() {
        assert!(
            SchemaRegistry::from_config(&SchemaRegistryConfig::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn schemas_are_registered_under_their_subject() {
        let registry = FakeRegistry::start();
        let client = client(&registry, 10);
        let id = client
            .register("rows/value", ROW, SchemaKind::Avro)
            .unwrap();
        assert_eq!(
            client
                .register("rows/value", ROW, SchemaKind::Avro)
                .unwrap(),
            id,
            "same text, same id"
        );
        assert_eq!(registry.subjects(), ["rows%2Fvalue", "rows%2Fvalue"]);
        assert_eq!(writer(&client.schema(id).unwrap()).id, id);

        registry.set_down(true);
        assert!(
            client
                .register("t-value", ROW, SchemaKind::Avro)
                .unwrap_err()
                .is_retryable()
        );
        registry.set_down(false);
        // The stand-in refuses (422) what is not a registration.
        let refused = SchemaRegistryConfig {
            url: Some(format!("{}/missing-prefix", registry.url())),
            ..SchemaRegistryConfig::default()
        };
        let err = SchemaRegistry::from_config(&refused)
            .unwrap()
            .unwrap()
            .register("t-value", "{", SchemaKind::Avro)
            .unwrap_err();
        assert!(
            matches!(&err, RegistryError::Rejected { subject, .. } if subject == "t-value"),
            "{err}"
        );
    }

    #[test]
    fn a_schema_is_fetched_once_however_many_threads_ask() {
        let registry = FakeRegistry::start();
        registry.add_schema(7, ROW);
        let client = client(&registry, 10);
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    let answer = client.schema(7).unwrap();
                    let schema = writer(&answer);
                    assert_eq!(schema.id, 7);
                    assert!(matches!(schema.schema(), Schema::Record(_)));
                });
            }
        });
        client.schema(7).unwrap();
        assert_eq!(registry.hits("/schemas/ids/7"), 1);
    }

    #[test]
    fn answers_are_typed() {
        let registry = FakeRegistry::start();
        registry.add_schema(2, r#"{"type":"record","name":"Broken"}"#);
        registry.answer(
            "/schemas/ids/3",
            200,
            r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#,
        );
        let client = client(&registry, 10);
        assert_eq!(
            client.schema(1).unwrap_err(),
            RegistryError::UnknownSchema { id: 1 }
        );
        assert!(matches!(
            client.schema(2).unwrap_err(),
            RegistryError::Malformed { id: 2, .. }
        ));
        assert!(matches!(
            *client.schema(3).unwrap(),
            Registered::Protobuf(_)
        ));
        registry.answer(
            "/schemas/ids/6",
            200,
            r#"{"schema":"struct T {}","schemaType":"THRIFT"}"#,
        );
        assert!(matches!(
            client.schema(6).unwrap_err(),
            RegistryError::Unsupported { id: 6, ref kind } if kind == "THRIFT"
        ));
        registry.answer(
            "/schemas/ids/7",
            200,
            r#"{"schema":"syntax = \"proto3\"; message {","schemaType":"PROTOBUF"}"#,
        );
        assert!(matches!(
            client.schema(7).unwrap_err(),
            RegistryError::Malformed {
                id: 7,
                kind: SchemaKind::Protobuf,
                ..
            }
        ));
        registry.answer(
            "/schemas/ids/5",
            200,
            r#"{"schema":"{\"type\":\"object\"}","schemaType":"JSON"}"#,
        );
        assert!(matches!(*client.schema(5).unwrap(), Registered::JsonSchema));
        // Answers for good are kept.
        client.schema(1).unwrap_err();
        assert_eq!(registry.hits("/schemas/ids/1"), 1);
        // A 404 that is not the registry's (a wrong url) is no verdict.
        registry.answer("/schemas/ids/4", 404, "<html>Not Found</html>");
        assert!(client.schema(4).unwrap_err().is_retryable());
    }

    #[test]
    fn an_unavailable_registry_is_retryable_and_not_remembered() {
        let registry = FakeRegistry::start();
        registry.add_schema(5, ROW);
        let client = client(&registry, 10);
        registry.set_down(true);
        let err = client.schema(5).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("503"), "{err}");
        registry.set_down(false);
        assert_eq!(writer(&client.schema(5).unwrap()).id, 5);

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let config = SchemaRegistryConfig {
            url: Some(url),
            ..SchemaRegistryConfig::default()
        };
        let refused = SchemaRegistry::from_config(&config).unwrap().unwrap();
        assert!(refused.schema(5).unwrap_err().is_retryable());
    }

    use std::net::TcpListener;

    #[test]
    fn references_are_fetched_by_subject_and_version() {
        let registry = FakeRegistry::start();
        let outer = r#"{"type":"record","name":"Outer","namespace":"t","fields":[{"name":"row","type":"t.Row"}]}"#;
        let served = serde_json::json!({
            "schema": outer,
            "references": [{"name": "t.Row", "subject": "rows/value", "version": 3}],
        });
        registry.answer("/schemas/ids/9", 200, &served.to_string());
        registry.answer(
            "/subjects/rows%2Fvalue/versions/3",
            200,
            &serde_json::json!({"subject": "rows/value", "version": 3, "id": 8, "schema": ROW})
                .to_string(),
        );
        let client = client(&registry, 10);
        let answer = client.schema(9).unwrap();
        let schema = writer(&answer);
        assert_eq!(schema.references().len(), 1);
        let name = Name::new("t.Row").unwrap();
        assert!(matches!(schema.named(&name), Some(Schema::Record(_))));

        registry.answer(
            "/schemas/ids/10",
            200,
            &serde_json::json!({
                "schema": outer,
                "references": [{"name": "t.Row", "subject": "gone", "version": 1}],
            })
            .to_string(),
        );
        registry.answer(
            "/subjects/gone/versions/1",
            404,
            r#"{"error_code":40401,"message":"Subject not found"}"#,
        );
        let err = client.schema(10).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Malformed { id: 10, message, .. } if message.contains("40401")),
            "{err}"
        );
    }

    #[test]
    fn protobuf_references_are_served_by_their_import_path() {
        let registry = FakeRegistry::start();
        let served = serde_json::json!({
            "schema": "syntax = \"proto3\";\nimport \"rows/row.proto\";\nmessage Outer { t.Row row = 1; }\n",
            "schemaType": "PROTOBUF",
            "references": [{"name": "rows/row.proto", "subject": "rows", "version": 1}],
        });
        registry.answer("/schemas/ids/11", 200, &served.to_string());
        registry.answer(
            "/subjects/rows/versions/1",
            200,
            &serde_json::json!({
                "subject": "rows", "version": 1, "id": 12, "schemaType": "PROTOBUF",
                "schema": "syntax = \"proto3\";\npackage t;\nmessage Row { int64 id = 1; }\n",
            })
            .to_string(),
        );
        let client = client(&registry, 10);
        let answer = client.schema(11).unwrap();
        let Registered::Protobuf(schema) = &*answer else {
            panic!("not a Protobuf schema: {answer:?}");
        };
        let outer = schema.message(&[0]).unwrap();
        assert_eq!(outer.full_name(), "Outer");
        assert_eq!(
            outer
                .get_field_by_name("row")
                .unwrap()
                .kind()
                .as_message()
                .unwrap()
                .full_name(),
            "t.Row"
        );
    }

    #[test]
    fn apicurio_schemas_are_fetched_by_global_id() {
        let registry = FakeRegistry::start();
        let prefix = "/apis/registry/v2";
        let config = SchemaRegistryConfig {
            url: Some(format!("{}{prefix}", registry.url())),
            framing: Framing::Apicurio,
            ..SchemaRegistryConfig::default()
        };
        let client = SchemaRegistry::from_config(&config).unwrap().unwrap();
        // Without the artifact type header, the kind is told by the text.
        registry.add_apicurio(prefix, 3, None, ROW);
        registry.add_apicurio(
            prefix,
            4,
            None,
            "syntax = \"proto3\";\nmessage M { int64 a = 1; }\n",
        );
        registry.add_apicurio(
            prefix,
            5,
            None,
            r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object"}"#,
        );
        registry.add_apicurio(prefix, 6, Some("JSON"), "{}");
        assert_eq!(writer(&client.schema(3).unwrap()).id, 3);
        assert!(matches!(
            *client.schema(4).unwrap(),
            Registered::Protobuf(_)
        ));
        assert!(matches!(*client.schema(5).unwrap(), Registered::JsonSchema));
        assert!(matches!(*client.schema(6).unwrap(), Registered::JsonSchema));
        // A 404 with a JSON error body is Apicurio's verdict; one without,
        // a wrong url.
        assert_eq!(
            client.schema(7).unwrap_err(),
            RegistryError::UnknownSchema { id: 7 }
        );
        registry.answer(
            &format!("{prefix}/ids/globalIds/8"),
            404,
            "<html>Not Found</html>",
        );
        assert!(client.schema(8).unwrap_err().is_retryable());
    }

    #[test]
    fn apicurio_references_are_read_by_group_artifact_and_version() {
        const ITEM: &str = r#"{"type":"record","name":"Item","namespace":"com.example.common","fields":[{"name":"itemId","type":"com.example.common.ItemId"}]}"#;
        const ITEM_ID: &str = r#"{"type":"record","name":"ItemId","namespace":"com.example.common","fields":[{"name":"id","type":"int"},{"name":"code","type":"com.example.common.Code"}]}"#;
        const CODE: &str =
            r#"{"type":"enum","name":"Code","namespace":"com.example.common","symbols":["A","B"]}"#;
        for (version, content) in [("v2", ""), ("v3", "/content")] {
            let registry = FakeRegistry::start();
            let prefix = format!("/apis/registry/{version}");
            let config = SchemaRegistryConfig {
                url: Some(format!("{}{prefix}", registry.url())),
                framing: Framing::Apicurio,
                ..SchemaRegistryConfig::default()
            };
            let client = SchemaRegistry::from_config(&config).unwrap().unwrap();
            registry.add_apicurio(&prefix, 10, Some("AVRO"), ITEM);
            registry.answer(
                &format!("{prefix}/ids/globalIds/10/references"),
                200,
                r#"[{"groupId":"shop","artifactId":"ItemId","version":"1","name":"com.example.common.ItemId"}]"#,
            );
            let item_id = format!("{prefix}/groups/shop/artifacts/ItemId/versions/1");
            registry.answer(&format!("{item_id}{content}"), 200, ITEM_ID);
            // A reference of a reference, in the default group.
            registry.answer(
                &format!("{item_id}/references"),
                200,
                r#"[{"groupId":null,"artifactId":"Code","version":"2","name":"com.example.common.Code"}]"#,
            );
            let code = format!("{prefix}/groups/default/artifacts/Code/versions/2{content}");
            registry.answer(&code, 200, CODE);
            let answer = client.schema(10).unwrap();
            let schema = writer(&answer);
            assert_eq!(schema.references().len(), 2, "{version}");
            // A reference the registry does not have: the schema is malformed.
            registry.add_apicurio(&prefix, 11, Some("AVRO"), ITEM);
            registry.answer(
                &format!("{prefix}/ids/globalIds/11/references"),
                200,
                r#"[{"groupId":"shop","artifactId":"Gone","version":"1","name":"com.example.common.ItemId"}]"#,
            );
            let err = client.schema(11).unwrap_err();
            assert!(
                matches!(&err, RegistryError::Malformed { message, .. } if message.contains("shop/Gone")),
                "{version}: {err}"
            );
        }
    }

    #[test]
    fn the_cache_is_bounded() {
        let registry = FakeRegistry::start();
        for id in 1..=3 {
            registry.add_schema(id, ROW);
        }
        let client = client(&registry, 2);
        for id in [1, 2, 3, 1] {
            client.schema(id).unwrap();
        }
        assert_eq!(registry.hits("/schemas/ids/1"), 2, "1 was dropped for 3");
        assert_eq!(lock(&client.cache).slots.len(), 2);
    }

    #[test]
    fn credentials_are_sent() {
        let registry = FakeRegistry::start();
        registry.add_schema(1, ROW);
        let basic = SchemaRegistryConfig {
            url: Some(registry.url()),
            basic_auth_user: Some("vigil".into()),
            basic_auth_password: Some("s3cret".into()),
            ..SchemaRegistryConfig::default()
        };
        SchemaRegistry::from_config(&basic)
            .unwrap()
            .unwrap()
            .schema(1)
            .unwrap();
        let bearer = SchemaRegistryConfig {
            url: Some(registry.url()),
            bearer_token: Some("tok".into()),
            ..SchemaRegistryConfig::default()
        };
        SchemaRegistry::from_config(&bearer)
            .unwrap()
            .unwrap()
            .schema(1)
            .unwrap();
        assert_eq!(
            registry.authorizations(),
            ["Basic dmlnaWw6czNjcmV0", "Bearer tok"]
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let config = SchemaRegistryConfig {
            url: Some("https://registry:8081".into()),
            ca_file: Some(path),
            ..SchemaRegistryConfig::default()
        };
        let err = SchemaRegistry::from_config(&config).err().unwrap();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
