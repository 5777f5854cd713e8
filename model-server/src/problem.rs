//! RFC 7807 problem details: the body of every error response.

use serde::{Deserialize, Serialize};

/// The media type of a problem body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Stable identifiers of the kinds of problem the server reports, used as the `type` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The body is not the JSON the endpoint takes.
    InvalidJson,
    /// The JSON is well formed but its values do not fit the model.
    InvalidInputs,
    /// The body is larger than the server reads.
    BodyTooLarge,
    /// The body could not be read from the connection.
    UnreadableBody,
    /// No endpoint has this path.
    NotFound,
    /// The endpoint exists but not for this method.
    MethodNotAllowed,
}

impl ProblemKind {
    /// The `type` URI: a URN so that it names the problem without pretending to be a web page.
    pub fn type_uri(self) -> &'static str {
        match self {
            ProblemKind::InvalidJson => "urn:veil:model-server:problem:invalid-json",
            ProblemKind::InvalidInputs => "urn:veil:model-server:problem:invalid-inputs",
            ProblemKind::BodyTooLarge => "urn:veil:model-server:problem:body-too-large",
            ProblemKind::UnreadableBody => "urn:veil:model-server:problem:unreadable-body",
            ProblemKind::NotFound => "urn:veil:model-server:problem:not-found",
            ProblemKind::MethodNotAllowed => "urn:veil:model-server:problem:method-not-allowed",
        }
    }

    /// The short, fixed summary of the kind.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::InvalidJson => "The request body is not the expected JSON",
            ProblemKind::InvalidInputs => "The inputs do not fit the model",
            ProblemKind::BodyTooLarge => "The request body is too large",
            ProblemKind::UnreadableBody => "The request body could not be read",
            ProblemKind::NotFound => "No such endpoint",
            ProblemKind::MethodNotAllowed => "Method not allowed on this endpoint",
        }
    }

    /// The HTTP status the kind is answered with.
    pub fn status(self) -> u16 {
        match self {
            ProblemKind::InvalidJson | ProblemKind::InvalidInputs | ProblemKind::UnreadableBody => {
                400
            }
            ProblemKind::NotFound => 404,
            ProblemKind::MethodNotAllowed => 405,
            ProblemKind::BodyTooLarge => 413,
        }
    }
}

/// One problem-details document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// URI identifying the kind of problem.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
    /// What the endpoint takes instead (extension member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

impl Problem {
    /// A problem of `kind` with this request's `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Problem {
        Problem {
            problem_type: kind.type_uri().to_owned(),
            title: kind.title().to_owned(),
            status: kind.status(),
            detail: detail.into(),
            expected: None,
        }
    }

    /// Adds what the endpoint would have accepted.
    pub fn expecting(mut self, expected: impl Into<String>) -> Problem {
        self.expected = Some(expected.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_serializes_with_the_rfc_7807_member_names() {
        let problem = Problem::new(ProblemKind::NotFound, "no endpoint /x").expecting("/healthz");
        let json: serde_json::Value = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "urn:veil:model-server:problem:not-found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["detail"], "no endpoint /x");
        assert_eq!(json["expected"], "/healthz");
        assert!(json.get("title").is_some());
    }
}
