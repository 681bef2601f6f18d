//! Errors with enough context for a user to find and fix the input: the file, the document in a
//! multi-document file, the line, the resource and the field path.

use std::fmt;

/// Where in the user's input something is.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file as the user named it (or `<inline>` for YAML embedded in a test file).
    pub file: String,
    /// 1-based document number inside a multi-document file.
    pub document: Option<usize>,
    /// 1-based line in the file.
    pub line: Option<usize>,
    /// `Kind namespace/name` of the resource, once known.
    pub resource: Option<String>,
    /// Field path inside the resource, e.g. `spec.rules[1].when[0].key`.
    pub field: Option<String>,
}

impl Location {
    pub fn file(file: impl Into<String>) -> Self {
        Location {
            file: file.into(),
            ..Location::default()
        }
    }

    pub fn with_field(&self, field: impl Into<String>) -> Self {
        Location {
            field: Some(field.into()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, ": {resource}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        Ok(())
    }
}

/// A resource or file that cannot be used. The message is lowercase and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
#[error("{location}: {message}")]
pub struct LoadError {
    pub location: Location,
    pub message: String,
}

impl LoadError {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        LoadError {
            location,
            message: message.into(),
        }
    }
}

/// Something legal that the user probably did not mean, or a part of a resource that has no
/// effect here (Istio logs these as warnings). Never silently dropped: `validate` and `compile`
/// print them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.location, self.message)
    }
}

/// A serde_yaml message without what our [`Location`] already says: its leading field path
/// (`spec.rules[0]: `) and its trailing ` at line X column Y`.
pub fn clean_yaml_message(message: &str) -> String {
    let mut m = message;
    if let Some(cut) = m.find(" at line ") {
        m = &m[..cut];
    }
    if let Some((head, rest)) = m.split_once(": ") {
        let is_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.[]-".contains(c));
        if is_path && head.contains(['.', '[']) || head == "spec" || head == "metadata" {
            m = rest;
        }
    }
    m.to_string()
}
