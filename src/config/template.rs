//! Syntax of `[[tables]]` settings that are more than plain values: cache-key
//! templates (`"user:{id}:profile"`) and version sources (`"column:version"`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    Column(String),
}

/// A cache-key template: literal text with `{column}` placeholders filled
/// from the row. `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyTemplate {
    text: String,
    segments: Vec<Segment>,
}

impl KeyTemplate {
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The columns the template reads, in order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Column(c) => Some(c.as_str()),
            Segment::Literal(_) => None,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The glob every key the template renders matches, each `{column}` as
    /// `*` (`user:{id}:profile` -> `user:*:profile`): the keys a truncate
    /// obliges the services to invalidate.
    pub fn glob(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.as_str(),
                Segment::Column(_) => "*",
            })
            .collect()
    }
}

impl TryFrom<String> for KeyTemplate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut column = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!("key template {text:?} has an unclosed '{{'"));
                            }
                            Some(ch) => column.push(ch),
                        }
                    }
                    let column = column.trim().to_string();
                    if column.is_empty() {
                        return Err(format!(
                            "key template {text:?} has an empty placeholder '{{}}'"
                        ));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Column(column));
                }
                '}' => {
                    return Err(format!(
                        "key template {text:?} has a '}}' without a '{{' (write '}}}}' for a literal brace)"
                    ));
                }
                '*' => {
                    return Err(format!(
                        "key template {text:?} contains '*', which cache events reserve for wildcards"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        if !segments.iter().any(|s| matches!(s, Segment::Column(_))) {
            return Err(format!(
                "key template {text:?} has no {{column}} placeholder, so every row would map to the same key"
            ));
        }
        Ok(KeyTemplate { text, segments })
    }
}

impl From<KeyTemplate> for String {
    fn from(t: KeyTemplate) -> String {
        t.text
    }
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a table's row versions come from (DESIGN.md section 3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum VersionSource {
    /// An integer column, such as an optimistic-lock `version`.
    Column(String),
    /// PostgreSQL commit LSN, then change LSN.
    Lsn,
    /// MySQL binlog file/position/row, or GTID transaction number and row.
    Binlog,
    /// Source commit timestamp, then order in the transaction.
    TsMs,
}

impl VersionSource {
    /// Whether a delete carries the version of its before image (true for a
    /// version column) rather than a fresh position of its own.
    pub fn is_row_version(&self) -> bool {
        matches!(self, VersionSource::Column(_))
    }
}

impl TryFrom<String> for VersionSource {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.trim() {
            "lsn" => Ok(VersionSource::Lsn),
            "binlog" => Ok(VersionSource::Binlog),
            "ts_ms" => Ok(VersionSource::TsMs),
            other => match other.strip_prefix("column:") {
                Some(col) if !col.trim().is_empty() => {
                    Ok(VersionSource::Column(col.trim().to_string()))
                }
                _ => Err(format!(
                    "invalid version source {text:?}; expected \"column:NAME\", \"lsn\", \"binlog\" or \"ts_ms\""
                )),
            },
        }
    }
}

impl From<VersionSource> for String {
    fn from(v: VersionSource) -> String {
        match v {
            VersionSource::Column(c) => format!("column:{c}"),
            VersionSource::Lsn => "lsn".into(),
            VersionSource::Binlog => "binlog".into(),
            VersionSource::TsMs => "ts_ms".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<KeyTemplate, String> {
        KeyTemplate::try_from(s.to_string())
    }

    #[test]
    fn a_template_glob_puts_a_star_for_each_column() {
        assert_eq!(t("user:{id}:profile").unwrap().glob(), "user:*:profile");
        assert_eq!(t("{tenant}/{id}").unwrap().glob(), "*/*");
        assert_eq!(t("{{x}}:{id}").unwrap().glob(), "{x}:*");
    }

    #[test]
    fn templates_parse_into_segments() {
        let tpl = t("user:{id}:profile").unwrap();
        assert_eq!(
            tpl.segments(),
            &[
                Segment::Literal("user:".into()),
                Segment::Column("id".into()),
                Segment::Literal(":profile".into())
            ]
        );
        assert_eq!(tpl.columns().collect::<Vec<_>>(), vec!["id"]);
        let braces = t("{{x}}:{ a }").unwrap();
        assert_eq!(
            braces.segments(),
            &[Segment::Literal("{x}:".into()), Segment::Column("a".into())]
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(t("user:{id").unwrap_err().contains("unclosed"));
        assert!(t("user:{}").unwrap_err().contains("empty placeholder"));
        assert!(t("user:id}").unwrap_err().contains("without a '{'"));
        assert!(t("user:*").unwrap_err().contains("wildcards"));
        assert!(t("constant").unwrap_err().contains("no {column}"));
    }

    #[test]
    fn version_sources_parse() {
        assert_eq!(
            VersionSource::try_from("column:version".to_string()).unwrap(),
            VersionSource::Column("version".into())
        );
        assert_eq!(
            VersionSource::try_from("lsn".to_string()).unwrap(),
            VersionSource::Lsn
        );
        assert!(VersionSource::try_from("column:".to_string()).is_err());
        assert!(
            VersionSource::try_from("xmin".to_string())
                .unwrap_err()
                .contains("xmin")
        );
    }
}
