//! Output events: violations, and the CloudEvents 1.0 form of violations
//! and storm events (DESIGN.md section 7): structured JSON, or for Kafka the
//! binary mode's data and headers. The `data` of each follows a JSON Schema
//! under `schemas/`, named by its `dataschema`.

use smol_str::SmolStr;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::detect::incident::{IncidentEvent, Sample};
use crate::detect::storm::StormEvent;
use crate::model::{Millis, Name, Op, Provenance, Version};

/// The seven kinds of DESIGN.md section 4, and the two of transactions
/// ([`crate::detect::transaction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    MissingInvalidation,
    LateInvalidation,
    StaleFill,
    FillAfterDelete,
    VersionRegression,
    VersionGap,
    ConflictingVersion,
    IncompleteTransaction,
    UnterminatedTransaction,
    TransactionNotInvalidated,
}

impl ViolationKind {
    pub const ALL: [ViolationKind; 10] = [
        ViolationKind::MissingInvalidation,
        ViolationKind::LateInvalidation,
        ViolationKind::StaleFill,
        ViolationKind::FillAfterDelete,
        ViolationKind::VersionRegression,
        ViolationKind::VersionGap,
        ViolationKind::ConflictingVersion,
        ViolationKind::IncompleteTransaction,
        ViolationKind::UnterminatedTransaction,
        ViolationKind::TransactionNotInvalidated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::MissingInvalidation => "missing_invalidation",
            ViolationKind::LateInvalidation => "late_invalidation",
            ViolationKind::StaleFill => "stale_fill",
            ViolationKind::FillAfterDelete => "fill_after_delete",
            ViolationKind::VersionRegression => "version_regression",
            ViolationKind::VersionGap => "version_gap",
            ViolationKind::ConflictingVersion => "conflicting_version",
            ViolationKind::IncompleteTransaction => "incomplete_transaction",
            ViolationKind::UnterminatedTransaction => "unterminated_transaction",
            ViolationKind::TransactionNotInvalidated => "transaction_not_invalidated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ViolationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How urgent it is: `high` when users may be served wrong data now,
    /// `medium` when the change stream itself is suspect, `low` when the
    /// cache was repaired, only late.
    pub fn severity(self) -> &'static str {
        match self {
            ViolationKind::MissingInvalidation
            | ViolationKind::StaleFill
            | ViolationKind::FillAfterDelete
            | ViolationKind::ConflictingVersion
            | ViolationKind::TransactionNotInvalidated => "high",
            ViolationKind::VersionRegression
            | ViolationKind::VersionGap
            | ViolationKind::IncompleteTransaction
            | ViolationKind::UnterminatedTransaction => "medium",
            ViolationKind::LateInvalidation => "low",
        }
    }

    /// Entity-level kinds concern a row, not a cache key.
    pub fn is_entity_level(self) -> bool {
        matches!(
            self,
            ViolationKind::VersionRegression
                | ViolationKind::VersionGap
                | ViolationKind::ConflictingVersion
        )
    }

    /// Transaction-level kinds concern a transaction, not a row or a key.
    pub fn is_transaction_level(self) -> bool {
        matches!(
            self,
            ViolationKind::IncompleteTransaction
                | ViolationKind::UnterminatedTransaction
                | ViolationKind::TransactionNotInvalidated
        )
    }
}

/// What a transaction-level violation says of its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxDetail {
    /// Events the transaction's END announced for the table (incomplete
    /// transactions).
    pub expected_events: Option<u64>,
    /// Distinct events seen: of the table (incomplete transactions), of
    /// every mapped table (unterminated ones).
    pub seen_events: u64,
    /// The transaction's `total_order` numbers seen on no change, when
    /// every table it wrote is mapped (else the missing ones cannot be told
    /// from those of unmapped tables).
    pub missing_total_orders: Option<Vec<u64>>,
    /// Maxwell: the `xoffset` numbers below the highest seen that no row
    /// carried (at most 1000).
    pub missing_xoffsets: Option<Vec<u64>>,
    /// The mapped tables whose changes were seen (Maxwell: every table
    /// whose rows were seen, mapped or not).
    pub tables: Vec<Name>,
    /// How its changes' invalidations went (`transaction_not_invalidated`).
    pub keys: Option<KeyCounts>,
}

/// A transaction's changes decided by the key checks, one per change and
/// key (a redelivered change counts once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCounts {
    /// Invalidated within the deadline.
    pub in_time: u64,
    /// Not invalidated within the deadline (the late ones included).
    pub missing: u64,
    /// Of the missing, invalidated within the late window.
    pub late: u64,
}

impl KeyCounts {
    pub fn add(&mut self, other: KeyCounts) {
        self.in_time += other.in_time;
        self.missing += other.missing;
        self.late += other.late;
    }
}

/// One detected violation. Optional fields are present where the kind gives
/// them meaning (see [`ViolationKind`] and DESIGN.md section 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Deterministic: a replay or restart gives the same id.
    pub id: String,
    pub kind: ViolationKind,
    /// The cache key; `None` for entity-level kinds.
    pub key: Option<Arc<str>>,
    pub table: Name,
    /// The primary key as a JSON object text.
    pub pk: SmolStr,
    /// Op of the change concerned (for fills: of the latest change).
    pub op: Option<Op>,
    /// Version of the change (or, for fills, of the fill) concerned.
    pub version: Option<Version>,
    /// The latest version known: the database's for fills, the highest seen
    /// for version regressions.
    pub latest_version: Option<Version>,
    /// For version gaps: the version that was expected.
    pub expected_version: Option<Version>,
    /// Commit time of the change concerned (for fills: the latest change).
    pub change_ts_ms: Option<Millis>,
    /// Time of the cache event concerned (the fill, or the late invalidation).
    pub cache_ts_ms: Option<Millis>,
    pub deadline_ms: Option<i64>,
    /// Invalidation lag (late invalidations).
    pub lag_ms: Option<i64>,
    pub source_service: Option<Name>,
    /// The transaction of the change concerned, when the change names one.
    pub transaction_id: Option<SmolStr>,
    /// For the transaction-level kinds.
    pub transaction: Option<Box<TxDetail>>,
    /// The input records the verdict rests on.
    pub evidence: Vec<Provenance>,
    /// Event time of the violation: when it became true.
    pub time_ms: Millis,
}

/// A version as JSON: a number for single-component versions (version
/// columns), else the text `"major.minor"`.
struct JsonVersion(Version);

impl Serialize for JsonVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.minor == 0 {
            s.serialize_u64(self.0.major)
        } else {
            s.collect_str(&self.0)
        }
    }
}

/// Evidence in outputs: `topic`/`partition`/`offset`, or `file`/`line`.
struct JsonEvidence<'a>(&'a Provenance);

impl Serialize for JsonEvidence<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(Some(if p.from_file { 2 } else { 3 }))?;
        if p.from_file {
            m.serialize_entry("file", &*p.topic)?;
            m.serialize_entry("line", &p.offset)?;
        } else {
            m.serialize_entry("topic", &*p.topic)?;
            m.serialize_entry("partition", &p.partition)?;
            m.serialize_entry("offset", &p.offset)?;
        }
        m.end()
    }
}

/// The `data` of a violation's CloudEvent.
struct Data<'a>(&'a Violation);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        let pk: &serde_json::value::RawValue = serde_json::from_str(&v.pk)
            .map_err(|e| serde::ser::Error::custom(format!("primary key is not JSON: {e}")))?;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", v.kind.as_str())?;
        m.serialize_entry("key", &v.key.as_deref())?;
        m.serialize_entry("table", &*v.table)?;
        m.serialize_entry("pk", pk)?;
        m.serialize_entry("op", &v.op.map(Op::code))?;
        m.serialize_entry("version", &v.version.map(JsonVersion))?;
        if let Some(lv) = v.latest_version {
            m.serialize_entry("latest_version", &JsonVersion(lv))?;
        }
        if let Some(ev) = v.expected_version {
            m.serialize_entry("expected", &JsonVersion(ev))?;
        }
        m.serialize_entry("change_ts", &v.change_ts_ms.map(rfc3339_ms))?;
        if let Some(ts) = v.cache_ts_ms {
            m.serialize_entry("cache_ts", &rfc3339_ms(ts))?;
        }
        m.serialize_entry("deadline_ms", &v.deadline_ms)?;
        if let Some(lag) = v.lag_ms {
            m.serialize_entry("lag_ms", &lag)?;
        }
        m.serialize_entry("severity", v.kind.severity())?;
        m.serialize_entry("source_service", &v.source_service.as_deref())?;
        if let Some(id) = &v.transaction_id {
            m.serialize_entry("transaction_id", &**id)?;
        }
        if let Some(t) = &v.transaction {
            if let Some(expected) = t.expected_events {
                m.serialize_entry("expected_events", &expected)?;
            }
            m.serialize_entry("seen_events", &t.seen_events)?;
            if let Some(missing) = &t.missing_total_orders {
                m.serialize_entry("missing_total_orders", missing)?;
            }
            if let Some(missing) = &t.missing_xoffsets {
                m.serialize_entry("missing_xoffsets", missing)?;
            }
            let tables: Vec<&str> = t.tables.iter().map(|t| &**t).collect();
            m.serialize_entry("tables", &tables)?;
            if let Some(keys) = &t.keys {
                m.serialize_entry("keys_in_time", &keys.in_time)?;
                m.serialize_entry("keys_missing", &keys.missing)?;
                m.serialize_entry("keys_late", &keys.late)?;
            }
        }
        let evidence: Vec<JsonEvidence<'_>> = v.evidence.iter().map(JsonEvidence).collect();
        m.serialize_entry("evidence", &evidence)?;
        m.end()
    }
}

impl Violation {
    /// A violation of `kind` about the change or fill whose identity is
    /// `about`, with its deterministic id and every optional field empty.
    pub fn new(
        kind: ViolationKind,
        key: Option<Arc<str>>,
        about: u64,
        table: Name,
        pk: SmolStr,
        time_ms: Millis,
    ) -> Self {
        Violation {
            id: crate::hash::event_id(kind.as_str(), key.as_deref(), about),
            kind,
            key,
            table,
            pk,
            op: None,
            version: None,
            latest_version: None,
            expected_version: None,
            change_ts_ms: None,
            cache_ts_ms: None,
            deadline_ms: None,
            lag_ms: None,
            source_service: None,
            transaction_id: None,
            transaction: None,
            evidence: Vec::new(),
            time_ms,
        }
    }

    /// The CloudEvents `type`.
    pub fn event_type(&self) -> String {
        format!("vigil.violation.{}", self.kind.as_str())
    }

    /// The CloudEvents `subject`: the cache key, for entity-level kinds
    /// `table/pk`, for transaction-level kinds `transaction/<id>`.
    pub fn subject(&self) -> String {
        match (&self.key, &self.transaction_id) {
            (Some(k), _) => k.to_string(),
            (None, Some(id)) if self.kind.is_transaction_level() => format!("transaction/{id}"),
            (None, _) => format!("{}/{}", self.table, self.pk),
        }
    }

    /// The CloudEvent of the violation.
    pub fn cloudevent(&self) -> CloudEvent<'_, impl Serialize + '_> {
        CloudEvent {
            id: &self.id,
            kind: self.event_type(),
            time_ms: self.time_ms,
            subject: self.subject(),
            dataschema: VIOLATION_DATASCHEMA,
            data: Data(self),
        }
    }

    /// The CloudEvents 1.0 structured JSON form, one line.
    pub fn to_cloudevent(&self, source: &str) -> String {
        self.cloudevent().structured(source)
    }
}

#[derive(Serialize)]
struct Counted<'a> {
    name: &'a str,
    count: u64,
}

/// The `data` of a storm event's CloudEvent.
#[derive(Serialize)]
struct StormData<'a> {
    scope_type: &'static str,
    scope: &'a str,
    phase: &'static str,
    start: String,
    duration_ms: i64,
    rate: f64,
    peak: f64,
    baseline: f64,
    threshold: f64,
    count: u64,
    top_keys: Vec<Counted<'a>>,
    top_services: Vec<Counted<'a>>,
}

impl StormEvent {
    /// The CloudEvents `type`: `vigil.storm.started|updated|ended`.
    pub fn event_type(&self) -> String {
        format!("vigil.storm.{}", self.phase.as_str())
    }

    /// The CloudEvents `subject` and Kafka key: `scope_type:scope`.
    pub fn subject(&self) -> String {
        format!("{}:{}", self.scope_type.as_str(), self.scope)
    }

    /// The CloudEvent of the storm event.
    pub fn cloudevent(&self) -> CloudEvent<'_, impl Serialize + '_> {
        CloudEvent {
            id: &self.id,
            kind: self.event_type(),
            time_ms: self.time_ms,
            subject: self.subject(),
            dataschema: STORM_DATASCHEMA,
            data: StormData {
                scope_type: self.scope_type.as_str(),
                scope: &self.scope,
                phase: self.phase.as_str(),
                start: rfc3339_ms(self.start_ms),
                duration_ms: self.duration_ms,
                rate: self.rate,
                peak: self.peak,
                // Averages: two decimals say enough.
                baseline: (self.baseline * 100.0).round() / 100.0,
                threshold: (self.threshold * 100.0).round() / 100.0,
                count: self.count,
                top_keys: counted(&self.top_keys),
                top_services: counted(&self.top_services),
            },
        }
    }

    /// The CloudEvents 1.0 structured JSON form, one line.
    pub fn to_cloudevent(&self, source: &str) -> String {
        self.cloudevent().structured(source)
    }
}

/// A violation as the `data` of an incident event names it.
#[derive(Serialize)]
struct SampleData<'a> {
    id: &'a str,
    kind: &'static str,
    key: Option<&'a str>,
    time: String,
}

impl<'a> SampleData<'a> {
    fn of(s: &'a Sample) -> Self {
        SampleData {
            id: &s.id,
            kind: s.kind.as_str(),
            key: s.key.as_deref(),
            time: rfc3339_ms(s.time_ms),
        }
    }
}

/// The `data` of an incident event's CloudEvent.
#[derive(Serialize)]
struct IncidentData<'a> {
    table: &'a str,
    service: Option<&'a str>,
    phase: &'static str,
    start: String,
    duration_ms: i64,
    window_ms: i64,
    decided: u64,
    in_time: u64,
    ratio: f64,
    slo: f64,
    violations: BTreeMap<&'static str, u64>,
    first_violation: Option<SampleData<'a>>,
    latest_violation: Option<SampleData<'a>>,
    top_keys: Vec<Counted<'a>>,
    services: Vec<Counted<'a>>,
}

fn counted(list: &[(String, u64)]) -> Vec<Counted<'_>> {
    list.iter()
        .map(|(name, count)| Counted {
            name,
            count: *count,
        })
        .collect()
}

impl IncidentEvent {
    /// The CloudEvents `type`: `vigil.incident.opened|updated|resolved`.
    pub fn event_type(&self) -> String {
        format!("vigil.incident.{}", self.phase.as_str())
    }

    /// The CloudEvents `subject` and Kafka key: the table.
    pub fn subject(&self) -> String {
        self.table.clone()
    }

    /// The CloudEvent of the incident event.
    pub fn cloudevent(&self) -> CloudEvent<'_, impl Serialize + '_> {
        CloudEvent {
            id: &self.id,
            kind: self.event_type(),
            time_ms: self.time_ms,
            subject: self.subject(),
            dataschema: INCIDENT_DATASCHEMA,
            data: IncidentData {
                table: &self.table,
                service: self.service.as_deref(),
                phase: self.phase.as_str(),
                start: rfc3339_ms(self.start_ms),
                duration_ms: self.duration_ms,
                window_ms: self.window_ms,
                decided: self.decided,
                in_time: self.in_time,
                // A share: six decimals tell 99.9 % from 99.95 %.
                ratio: (self.ratio * 1e6).round() / 1e6,
                slo: self.slo,
                violations: self
                    .violations
                    .iter()
                    .map(|(k, n)| (k.as_str(), *n))
                    .collect(),
                first_violation: self.first_violation.as_ref().map(SampleData::of),
                latest_violation: self.latest_violation.as_ref().map(SampleData::of),
                top_keys: counted(&self.top_keys),
                services: counted(&self.services),
            },
        }
    }

    /// The CloudEvents 1.0 structured JSON form, one line.
    pub fn to_cloudevent(&self, source: &str) -> String {
        self.cloudevent().structured(source)
    }
}

/// An output event: its CloudEvents attributes (all but `source`, which is
/// vigil's, from `outputs.source`) and its data. Written in structured mode
/// (one JSON object holding both) or in binary mode (the data alone, the
/// attributes beside it as Kafka headers).
pub struct CloudEvent<'a, D> {
    pub id: &'a str,
    /// The `type`.
    pub kind: String,
    pub time_ms: Millis,
    /// The `subject`, also the Kafka key of the record.
    pub subject: String,
    pub dataschema: &'static str,
    pub data: D,
}

/// `datacontenttype` of an event whose data is JSON (always, in files and
/// in structured mode).
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// `datacontenttype` of a binary-mode event whose data is Avro
/// (`outputs.format = "avro"`).
pub const AVRO_CONTENT_TYPE: &str = "application/avro";

impl<D: Serialize> CloudEvent<'_, D> {
    /// The CloudEvents 1.0 structured JSON form, one line.
    pub fn structured(&self, source: &str) -> String {
        #[derive(Serialize)]
        struct Envelope<'a, D> {
            specversion: &'static str,
            id: &'a str,
            source: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            time: String,
            subject: &'a str,
            datacontenttype: &'static str,
            dataschema: &'static str,
            data: &'a D,
        }
        serde_json::to_string(&Envelope {
            specversion: "1.0",
            id: self.id,
            source,
            kind: &self.kind,
            time: rfc3339_ms(self.time_ms),
            subject: &self.subject,
            datacontenttype: DATA_CONTENT_TYPE,
            dataschema: self.dataschema,
            data: &self.data,
        })
        .expect(DATA_SERIALIZES)
    }

    /// The data alone, JSON: the value of a binary-mode record.
    pub fn data_json(&self) -> String {
        serde_json::to_string(&self.data).expect(DATA_SERIALIZES)
    }

    /// The attributes as the Kafka headers of binary mode (CloudEvents Kafka
    /// protocol binding 1.0): `ce_<attribute>` each, and `content-type` for
    /// `datacontenttype`.
    pub fn binary_headers(
        &self,
        source: &str,
        content_type: &str,
    ) -> Vec<(String, Option<Vec<u8>>)> {
        [
            ("ce_specversion", "1.0"),
            ("ce_id", self.id),
            ("ce_source", source),
            ("ce_type", &self.kind),
            ("ce_time", &rfc3339_ms(self.time_ms)),
            ("ce_subject", &self.subject),
            ("ce_dataschema", self.dataschema),
            ("content-type", content_type),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), Some(value.as_bytes().to_vec())))
        .collect()
    }
}

const DATA_SERIALIZES: &str =
    "event data always serializes: a violation's pk was checked to be JSON";

/// CloudEvents `dataschema` of violations: the `$id` of
/// `schemas/violation.v1.json`, the JSON Schema of their `data`. A change of
/// the data that could break a consumer (a field removed, renamed or of
/// another type) comes with a new schema file and version.
pub const VIOLATION_DATASCHEMA: &str = "urn:vigil:schema:violation:v1";
/// CloudEvents `dataschema` of storm events: the `$id` of
/// `schemas/storm.v1.json`.
pub const STORM_DATASCHEMA: &str = "urn:vigil:schema:storm:v1";
/// CloudEvents `dataschema` of incident events: the `$id` of
/// `schemas/incident.v1.json`.
pub const INCIDENT_DATASCHEMA: &str = "urn:vigil:schema:incident:v1";

/// Content type of a structured-mode output record (Kafka header
/// `content-type`).
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Epoch milliseconds as RFC 3339 UTC text with milliseconds.
pub fn rfc3339_ms(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Violation {
        Violation {
            id: "0123".into(),
            kind: ViolationKind::StaleFill,
            key: Some(Arc::from("user:1")),
            table: Name::new("public.users"),
            pk: SmolStr::new("{\"id\":1}"),
            op: Some(Op::Update),
            version: Some(Version::scalar(3)),
            latest_version: Some(Version::scalar(4)),
            expected_version: None,
            change_ts_ms: Some(1_596_010_889_629),
            cache_ts_ms: Some(1_596_010_890_000),
            deadline_ms: Some(30_000),
            lag_ms: None,
            source_service: Some(Name::new("users-api")),
            transaction_id: None,
            transaction: None,
            evidence: vec![Provenance {
                topic: crate::model::Name::new("cache"),
                partition: 2,
                offset: 17,
                from_file: false,
            }],
            time_ms: 1_596_010_890_000,
        }
    }

    #[test]
    fn cloudevent_has_every_required_attribute() {
        let json: serde_json::Value =
            serde_json::from_str(&sample().to_cloudevent("/vigil")).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "0123");
        assert_eq!(json["source"], "/vigil");
        assert_eq!(json["type"], "vigil.violation.stale_fill");
        assert_eq!(json["time"], "2020-07-29T08:21:30.000Z");
        assert_eq!(json["subject"], "user:1");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["dataschema"], VIOLATION_DATASCHEMA);
        let data = &json["data"];
        assert_eq!(data["kind"], "stale_fill");
        assert_eq!(data["pk"], serde_json::json!({"id": 1}));
        assert_eq!(data["version"], 3);
        assert_eq!(data["latest_version"], 4);
        assert_eq!(data["severity"], "high");
        assert_eq!(data["source_service"], "users-api");
        assert_eq!(data["evidence"][0]["offset"], 17);
    }

    /// Binary mode: the same attributes as headers, the same data as the
    /// value.
    fn assert_binary_matches_structured<D: Serialize>(event: CloudEvent<'_, D>) {
        let structured: serde_json::Value =
            serde_json::from_str(&event.structured("/vigil")).unwrap();
        let data: serde_json::Value = serde_json::from_str(&event.data_json()).unwrap();
        assert_eq!(data, structured["data"]);
        let headers: BTreeMap<String, String> = event
            .binary_headers("/vigil", DATA_CONTENT_TYPE)
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.unwrap()).unwrap()))
            .collect();
        let mut attributes: BTreeMap<String, String> = structured
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "data")
            .map(|(k, v)| (format!("ce_{k}"), v.as_str().unwrap().to_string()))
            .collect();
        let content_type = attributes.remove("ce_datacontenttype").unwrap();
        attributes.insert("content-type".into(), content_type);
        assert_eq!(headers, attributes);
    }

    #[test]
    fn binary_mode_has_the_attributes_and_data_of_structured_mode() {
        assert_binary_matches_structured(sample().cloudevent());
        let storm = StormEvent {
            id: "4567".into(),
            phase: crate::detect::storm::Phase::Updated,
            scope_type: crate::detect::storm::ScopeType::HotKey,
            scope: "user:1".into(),
            time_ms: 1_596_010_895_000,
            start_ms: 1_596_010_890_000,
            duration_ms: 5_000,
            rate: 1_200.0,
            peak: 1_500.0,
            baseline: 2.345,
            threshold: 500.0,
            count: 7_000,
            top_keys: vec![("user:1".into(), 7_000)],
            top_services: vec![("users-api".into(), 6_000), ("jobs".into(), 1_000)],
        };
        assert_binary_matches_structured(storm.cloudevent());
    }

    #[test]
    fn entity_level_subject_names_the_row_and_composite_versions_are_text() {
        let mut v = sample();
        v.kind = ViolationKind::VersionGap;
        v.key = None;
        v.version = Some(Version::new(24_023_119, 24_023_128));
        let json: serde_json::Value = serde_json::from_str(&v.to_cloudevent("/vigil")).unwrap();
        assert_eq!(json["subject"], "public.users/{\"id\":1}");
        assert_eq!(json["data"]["key"], serde_json::Value::Null);
        assert_eq!(json["data"]["version"], "24023119.24023128");
    }

    #[test]
    fn rfc3339_handles_epoch_leap_days_and_negative_times() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
