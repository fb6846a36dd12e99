//! A Protobuf schema as the registry serves it (the text of a `.proto`
//! file, and the files it imports as references by their import path),
//! compiled with `protox` into descriptors that records are decoded with.
//!
//! The imports Confluent's registry knows without references are served
//! here too: Google's well-known types (`google/protobuf/*.proto`, from
//! `protox`), `google/type/date.proto`, `google/type/timeofday.proto`,
//! `confluent/meta.proto` and `confluent/type/decimal.proto`.

use prost_reflect::{DescriptorPool, FileDescriptor, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::{RegistryError, SchemaKind};

/// The name the registered file is compiled under (the registry gives it
/// none; references are named by their import path).
const MAIN_FILE: &str = "__registered__.proto";

/// The files Confluent's registry serves as built in, by import path.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "confluent/meta.proto",
        r#"syntax = "proto3";
package confluent;
import "google/protobuf/descriptor.proto";
message Meta {
  string doc = 1;
  map<string, string> params = 2;
  repeated string tags = 3;
}
extend google.protobuf.FileOptions { Meta file_meta = 1088; }
extend google.protobuf.MessageOptions { Meta message_meta = 1088; }
extend google.protobuf.FieldOptions { Meta field_meta = 1088; }
extend google.protobuf.EnumOptions { Meta enum_meta = 1088; }
extend google.protobuf.EnumValueOptions { Meta enum_value_meta = 1088; }
"#,
    ),
    (
        "confluent/type/decimal.proto",
        r#"syntax = "proto3";
package confluent.type;
message Decimal {
  bytes value = 1;
  uint32 precision = 2;
  int32 scale = 3;
}
"#,
    ),
    (
        "google/type/date.proto",
        r#"syntax = "proto3";
package google.type;
message Date {
  int32 year = 1;
  int32 month = 2;
  int32 day = 3;
}
"#,
    ),
    (
        "google/type/timeofday.proto",
        r#"syntax = "proto3";
package google.type;
message TimeOfDay {
  int32 hours = 1;
  int32 minutes = 2;
  int32 seconds = 3;
  int32 nanos = 4;
}
"#,
    ),
];

/// A compiled Protobuf schema: the registered file's descriptor, whose
/// message types records name by their message indexes.
#[derive(Debug)]
pub struct ProtoSchema {
    pub id: u32,
    file: FileDescriptor,
}

/// The registered file and its references, served to the compiler by name.
struct Sources {
    files: Vec<(String, String)>,
}

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let text = self
            .files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, text)| text.as_str())
            .or_else(|| {
                BUILT_IN
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, text)| *text)
            })
            .ok_or_else(|| protox::Error::file_not_found(name))?;
        File::from_source(name, text)
    }
}

impl ProtoSchema {
    /// Compiles a schema's text with its references (import path, text).
    pub fn compile(
        id: u32,
        text: &str,
        references: &[(String, String)],
    ) -> Result<Self, RegistryError> {
        let malformed = |message: String| RegistryError::Malformed {
            id,
            kind: SchemaKind::Protobuf,
            message,
        };
        let mut files = vec![(MAIN_FILE.to_string(), text.to_string())];
        files.extend(references.iter().cloned());
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources { files });
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler
            .open_file(MAIN_FILE)
            .map_err(|e| malformed(e.to_string()))?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(MAIN_FILE)
            .ok_or_else(|| malformed("the compiled schema has no file".into()))?;
        Ok(ProtoSchema { id, file })
    }

    /// The message type that message indexes name: the first index among
    /// the file's top-level messages, each next one among the nested
    /// messages of the one before. No indexes name the first message.
    pub fn message(&self, indexes: &[usize]) -> Option<MessageDescriptor> {
        let (first, nested) = indexes.split_first().unwrap_or((&0, &[]));
        let mut message = self.file.messages().nth(*first)?;
        for index in nested {
            let child = message.child_messages().nth(*index)?;
            message = child;
        }
        Some(message)
    }

    /// The file's top-level message types.
    pub fn messages(&self) -> impl Iterator<Item = MessageDescriptor> + '_ {
        self.file.messages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"syntax = "proto3";
package t;
import "google/protobuf/timestamp.proto";
import "confluent/type/decimal.proto";
import "row.proto";
message Outer {
  Row row = 1;
  google.protobuf.Timestamp at = 2;
  confluent.type.Decimal price = 3;
  message Inner { int64 a = 1; }
  Inner inner = 4;
}
message Second { string s = 1; }
"#;

    fn compiled() -> ProtoSchema {
        let row = (
            "row.proto".to_string(),
            "syntax = \"proto3\";\npackage t;\nmessage Row { int64 id = 1; }\n".to_string(),
        );
        ProtoSchema::compile(3, SCHEMA, &[row]).unwrap()
    }

    #[test]
    fn message_indexes_name_messages_and_nested_ones() {
        let schema = compiled();
        let name = |indexes: &[usize]| schema.message(indexes).map(|m| m.full_name().to_string());
        assert_eq!(name(&[]).as_deref(), Some("t.Outer"));
        assert_eq!(name(&[0]).as_deref(), Some("t.Outer"));
        assert_eq!(name(&[1]).as_deref(), Some("t.Second"));
        assert_eq!(name(&[0, 0]).as_deref(), Some("t.Outer.Inner"));
        assert_eq!(name(&[2]), None);
        assert_eq!(name(&[1, 0]), None);
    }

    #[test]
    fn a_schema_that_does_not_compile_is_malformed() {
        for (text, references) in [
            ("syntax = \"proto3\"; message {", vec![]),
            ("syntax = \"proto3\"; import \"gone.proto\";", vec![]),
            (SCHEMA, vec![]),
        ] {
            let err = ProtoSchema::compile(4, text, &references).unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::Malformed {
                        id: 4,
                        kind: SchemaKind::Protobuf,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
