//! Output events in Avro (`outputs.format = "avro"`): the `data` of each
//! CloudEvent written as an Avro datum in Confluent's framing (magic byte
//! 0, the schema's 4-byte big-endian id, the datum), its schema registered
//! in the Schema Registry under the topic's `{topic}-value` subject, so a
//! pipeline reads it with its usual registry-aware deserializer. The
//! schemas are `schemas/*.v1.avsc`: the fields of the JSON Schemas beside
//! them, with the primary key as JSON text (an Avro record cannot hold an
//! object of any shape).

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::registry::{RegistryError, SchemaKind, SchemaRegistry, SetupError};

/// The families of events, one schema and one topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Violation,
    Storm,
    Incident,
}

impl Family {
    const ALL: [Family; 3] = [Family::Violation, Family::Storm, Family::Incident];

    /// The Avro schema of the family's data.
    fn schema_text(self) -> &'static str {
        match self {
            Family::Violation => include_str!("../../../schemas/violation.v1.avsc"),
            Family::Storm => include_str!("../../../schemas/storm.v1.avsc"),
            Family::Incident => include_str!("../../../schemas/incident.v1.avsc"),
        }
    }
}

/// Why an event could not be written in Avro.
#[derive(Debug, thiserror::Error)]
pub enum AvroOutputError {
    #[error("outputs.format = \"avro\" needs [schema_registry] url")]
    NoRegistry,
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The data does not fit its schema: a fault of vigil, not of the input.
    #[error("{family:?} event data does not fit its Avro schema: {message}")]
    Encode { family: Family, message: String },
}

impl AvroOutputError {
    /// Whether trying again later may succeed (the registry was away).
    pub fn is_retryable(&self) -> bool {
        matches!(self, AvroOutputError::Registry(e) if e.is_retryable())
    }
}

/// A family's schema, subject, and id once registered.
struct Registration {
    family: Family,
    schema: Schema,
    subject: String,
    id: Option<u32>,
}

/// The encoder of output events in Avro.
pub struct AvroEvents {
    registry: SchemaRegistry,
    families: Vec<Registration>,
}

impl AvroEvents {
    /// The encoder for the topics of `config`; the schemas are registered
    /// on first use (see [`AvroEvents::encode`]).
    pub fn new(config: &Config) -> Result<Self, AvroOutputError> {
        let registry = SchemaRegistry::from_config(&config.schema_registry)?
            .ok_or(AvroOutputError::NoRegistry)?;
        let outputs = &config.outputs;
        let families = Family::ALL
            .into_iter()
            .map(|family| {
                let topic = match family {
                    Family::Violation => &outputs.violations_topic,
                    Family::Storm => &outputs.storms_topic,
                    Family::Incident => &outputs.incidents_topic,
                };
                Registration {
                    family,
                    schema: Schema::parse_str(family.schema_text())
                        .expect("the committed Avro schemas parse (a unit test reads each)"),
                    subject: format!("{topic}-value"),
                    id: None,
                }
            })
            .collect();
        Ok(AvroEvents { registry, families })
    }

    /// The record value of an event of `family` whose data is `data`: its
    /// schema's id (registered now if it was not yet) and the datum.
    pub fn encode(
        &mut self,
        family: Family,
        data: &impl Serialize,
    ) -> Result<Vec<u8>, AvroOutputError> {
        let registration = self
            .families
            .iter_mut()
            .find(|r| r.family == family)
            .expect("every family has a registration");
        let id = match registration.id {
            Some(id) => id,
            None => {
                let id = self.registry.register(
                    &registration.subject,
                    family.schema_text(),
                    SchemaKind::Avro,
                )?;
                registration.id = Some(id);
                id
            }
        };
        let datum = datum(family, &registration.schema, data)?;
        let mut value = crate::formats::confluent_opening(id, datum.len());
        value.extend(datum);
        Ok(value)
    }
}

/// The Avro datum of an event's data, without framing.
fn datum(
    family: Family,
    schema: &Schema,
    data: &impl Serialize,
) -> Result<Vec<u8>, AvroOutputError> {
    let fail = |message: String| AvroOutputError::Encode { family, message };
    let mut json = serde_json::to_value(data).map_err(|e| fail(e.to_string()))?;
    if family == Family::Violation {
        fit_violation(&mut json);
    }
    let value = AvroValue::try_from(json)
        .and_then(|v| v.resolve(schema))
        .map_err(|e| fail(e.to_string()))?;
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| fail(e.to_string()))
}

/// A violation's JSON data made to fit its Avro schema: the primary key as
/// its JSON text, and versions beyond Avro's `long` as text.
fn fit_violation(data: &mut Value) {
    let Some(fields) = data.as_object_mut() else {
        return;
    };
    if let Some(pk) = fields.get_mut("pk") {
        *pk = Value::String(pk.to_string());
    }
    for name in ["version", "latest_version", "expected"] {
        if let Some(v) = fields.get_mut(name)
            && v.as_u64().is_some_and(|n| i64::try_from(n).is_err())
        {
            *v = Value::String(v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use smol_str::SmolStr;

    use apache_avro::reader::datum::GenericDatumReader;

    use super::*;
    use crate::detect::incident::{IncidentEvent, Phase as IncidentPhase, Sample};
    use crate::detect::storm::{Phase, ScopeType, StormEvent};
    use crate::events::{KeyCounts, TxDetail, Violation, ViolationKind};
    use crate::model::{Name, Op, Provenance, Version};

    /// Encodes `data` and reads the datum back with the same schema, as
    /// JSON without the optional fields the JSON form leaves out.
    fn round_trip(family: Family, data: &impl Serialize) -> Value {
        let schema = Schema::parse_str(family.schema_text()).unwrap();
        let bytes = datum(family, &schema, data).unwrap();
        let read = GenericDatumReader::builder(&schema)
            .build()
            .and_then(|reader| reader.read_value(&mut bytes.as_slice()))
            .unwrap();
        let mut json = Value::try_from(read).unwrap();
        let written = serde_json::to_value(data).unwrap();
        if let Some(fields) = json.as_object_mut() {
            fields.retain(|name, v| !v.is_null() || written.get(name).is_some());
        }
        json
    }

    fn violation(kind: ViolationKind) -> Violation {
        let mut v = Violation::new(
            kind,
            Some(Arc::from("user:1")),
            7,
            Name::new("public.users"),
            SmolStr::new("{\"id\":1,\"region\":\"eu\"}"),
            1_596_010_890_000,
        );
        v.op = Some(Op::Update);
        v.version = Some(Version::scalar(3));
        v.change_ts_ms = Some(1_596_010_889_629);
        v.deadline_ms = Some(30_000);
        v.evidence = vec![Provenance {
            topic: crate::model::Name::new("cache"),
            partition: 2,
            offset: 17,
            from_file: false,
        }];
        v
    }

    #[test]
    fn every_schema_parses() {
        for family in Family::ALL {
            Schema::parse_str(family.schema_text()).unwrap();
        }
    }

    #[test]
    fn violations_read_back_as_their_json_data() {
        let mut late = violation(ViolationKind::LateInvalidation);
        late.cache_ts_ms = Some(1_596_010_920_000);
        late.lag_ms = Some(30_371);
        late.source_service = Some(Name::new("users-api"));
        late.transaction_id = Some(SmolStr::new("571:53462048"));
        late.evidence.push(Provenance {
            topic: crate::model::Name::new("/data/cache.ndjson"),
            partition: 0,
            offset: 12,
            from_file: true,
        });
        let mut gap = violation(ViolationKind::VersionGap);
        gap.key = None;
        gap.version = Some(Version::new(24_023_119, 24_023_128));
        gap.latest_version = Some(Version::scalar(u64::MAX));
        gap.expected_version = Some(Version::scalar(2));
        let mut summary = violation(ViolationKind::TransactionNotInvalidated);
        summary.key = None;
        summary.op = None;
        summary.version = None;
        summary.transaction_id = Some(SmolStr::new("tx-9"));
        summary.transaction = Some(Box::new(TxDetail {
            expected_events: Some(4),
            seen_events: 3,
            missing_total_orders: Some(vec![2]),
            missing_xoffsets: None,
            tables: vec![Name::new("public.users"), Name::new("public.orders")],
            keys: Some(KeyCounts {
                in_time: 2,
                missing: 1,
                late: 0,
            }),
        }));
        for v in [
            violation(ViolationKind::MissingInvalidation),
            late,
            gap,
            summary,
        ] {
            let data = v.cloudevent().data;
            let mut want = serde_json::to_value(&data).unwrap();
            fit_violation(&mut want);
            assert_eq!(round_trip(Family::Violation, &data), want, "{:?}", v.kind);
        }
    }

    #[test]
    fn storms_and_incidents_read_back_as_their_json_data() {
        let storm = StormEvent {
            id: "4567".into(),
            phase: Phase::Updated,
            scope_type: ScopeType::HotKey,
            scope: "user:1".into(),
            time_ms: 1_596_010_895_000,
            start_ms: 1_596_010_890_000,
            duration_ms: 5_000,
            rate: 1_200.0,
            peak: 1_500.5,
            baseline: 2.345,
            threshold: 500.0,
            count: 7_000,
            top_keys: vec![("user:1".into(), 7_000)],
            top_services: vec![("users-api".into(), 6_000), ("jobs".into(), 1_000)],
        };
        let data = storm.cloudevent().data;
        assert_eq!(
            round_trip(Family::Storm, &data),
            serde_json::to_value(&data).unwrap()
        );
        let sample = Sample {
            id: "0123456789abcdef0123456789abcdef".into(),
            kind: ViolationKind::MissingInvalidation,
            key: Some("user:1".into()),
            time_ms: 1_596_010_890_000,
        };
        let incident = IncidentEvent {
            id: "89ab".into(),
            phase: IncidentPhase::Opened,
            table: "public.users".into(),
            service: None,
            time_ms: 1_596_010_900_000,
            start_ms: 1_596_010_890_000,
            duration_ms: 10_000,
            window_ms: 60_000,
            decided: 1_000,
            in_time: 990,
            ratio: 0.99,
            slo: 0.999,
            violations: BTreeMap::from([(ViolationKind::MissingInvalidation, 10)]),
            first_violation: Some(sample.clone()),
            latest_violation: Some(sample),
            top_keys: vec![("user:1".into(), 3)],
            services: vec![],
        };
        let data = incident.cloudevent().data;
        assert_eq!(
            round_trip(Family::Incident, &data),
            serde_json::to_value(&data).unwrap()
        );
    }

    #[test]
    fn versions_beyond_a_long_are_text() {
        let mut data = serde_json::json!({"pk": {"id": 1}, "version": u64::MAX, "expected": 3});
        fit_violation(&mut data);
        assert_eq!(
            data,
            serde_json::json!({"pk": "{\"id\":1}", "version": u64::MAX.to_string(), "expected": 3})
        );
    }
}
