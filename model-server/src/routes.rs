//! The endpoints, as a pure function from (method, path, body) to a reply, so that every answer is
//! unit-tested without a socket. Errors become problem responses here and nowhere else.

use std::io::Read;

use serde::Deserialize;

use crate::model::{Model, PredictError};
use crate::problem::{Problem, ProblemKind, PROBLEM_CONTENT_TYPE};

/// Liveness: answers `ok` once the model is loaded.
pub const HEALTH_PATH: &str = "/healthz";
/// Describes the loaded model.
pub const MODELS_PATH: &str = "/v1/models";
/// Classifies one input vector.
pub const PREDICT_PATH: &str = "/v1/predict";
/// The largest request body read; a prediction request is a few hundred bytes.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

const JSON_CONTENT_TYPE: &str = "application/json";

/// An HTTP answer, independent of the HTTP library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The `Allow` header, sent with 405.
    pub allow: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &impl serde::Serialize) -> Reply {
        Reply::encoded(status, JSON_CONTENT_TYPE, value)
    }

    fn problem(problem: &Problem) -> Reply {
        Reply::encoded(problem.status, PROBLEM_CONTENT_TYPE, problem)
    }

    fn encoded(status: u16, content_type: &'static str, value: &impl serde::Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                content_type,
                allow: None,
                body,
            },
            // Only maps with non-string keys fail to serialize; none are sent here.
            Err(_) => Reply {
                status: 500,
                content_type: "text/plain",
                allow: None,
                body: b"cannot encode the response".to_vec(),
            },
        }
    }
}

/// The body `POST /v1/predict` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    // f64 so that values outside the f32 range are reported as such rather than as a parse error.
    inputs: Vec<f64>,
}

/// Answers one request. `url` may carry a query string, which is ignored.
pub fn route(model: &Model, method: &str, url: &str, body: &mut dyn Read) -> Reply {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    match (path, method) {
        (HEALTH_PATH, "GET") => Reply {
            status: 200,
            content_type: "text/plain",
            allow: None,
            body: b"ok".to_vec(),
        },
        (MODELS_PATH, "GET") => Reply::json(200, &model.info()),
        (PREDICT_PATH, "POST") => predict(model, body),
        (HEALTH_PATH | MODELS_PATH, _) => method_not_allowed(method, path, "GET"),
        (PREDICT_PATH, _) => method_not_allowed(method, path, "POST"),
        _ => Reply::problem(
            &Problem::new(ProblemKind::NotFound, format!("no endpoint at {path}")).expecting(
                format!("one of GET {HEALTH_PATH}, GET {MODELS_PATH}, POST {PREDICT_PATH}"),
            ),
        ),
    }
}

fn method_not_allowed(method: &str, path: &str, allowed: &'static str) -> Reply {
    let problem = Problem::new(
        ProblemKind::MethodNotAllowed,
        format!("{path} does not take {method}"),
    )
    .expecting(format!("{allowed} {path}"));
    Reply {
        allow: Some(allowed),
        ..Reply::problem(&problem)
    }
}

fn predict(model: &Model, body: &mut dyn Read) -> Reply {
    let expected = expected_predict_body(model);
    let bytes = match read_body(body) {
        Ok(bytes) => bytes,
        Err(problem) => return Reply::problem(&problem.expecting(expected)),
    };
    let request: PredictRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(error) => {
            let problem = Problem::new(ProblemKind::InvalidJson, error.to_string());
            return Reply::problem(&problem.expecting(expected));
        }
    };
    // Values beyond the f32 range become infinite here and are refused by predict.
    let inputs: Vec<f32> = request.inputs.iter().map(|value| *value as f32).collect();
    match model.predict(&inputs) {
        Ok(prediction) => Reply::json(200, &prediction),
        Err(error) => {
            let problem = Problem::new(ProblemKind::InvalidInputs, predict_detail(&error));
            Reply::problem(&problem.expecting(expected))
        }
    }
}

fn predict_detail(error: &PredictError) -> String {
    match error {
        PredictError::NonFiniteInput { index, .. } => {
            format!(
                "inputs[{index}] is not a finite 32-bit float (NaN, infinite, or beyond ±3.4e38)"
            )
        }
        other => other.to_string(),
    }
}

fn expected_predict_body(model: &Model) -> String {
    format!(
        "{{\"inputs\": [{} finite numbers]}} as application/json, at most {MAX_BODY_BYTES} bytes",
        model.info().inputs
    )
}

fn read_body(body: &mut dyn Read) -> Result<Vec<u8>, Problem> {
    let mut bytes = Vec::new();
    // One byte more than the limit tells "exactly at the limit" from "over it".
    body.take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Problem::new(ProblemKind::UnreadableBody, error.to_string()))?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(Problem::new(
            ProblemKind::BodyTooLarge,
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{write_demo_model, DemoModelOptions};
    use crate::model::{ModelInfo, Prediction};

    fn demo_model() -> Model {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(dir.path(), &DemoModelOptions::default()).unwrap();
        Model::load(dir.path()).unwrap()
    }

    fn call(model: &Model, method: &str, url: &str, body: &str) -> Reply {
        route(model, method, url, &mut body.as_bytes())
    }

    fn problem_of(reply: &Reply) -> Problem {
        assert_eq!(reply.content_type, PROBLEM_CONTENT_TYPE);
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn health_answers_ok() {
        let reply = call(&demo_model(), "GET", "/healthz", "");
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
    }

    #[test]
    fn models_describes_the_model_without_weights_or_canary() {
        let model = demo_model();
        let reply = call(&model, "GET", "/v1/models?verbose=1", "");
        assert_eq!(reply.status, 200);
        let info: ModelInfo = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(info, model.info());
        let text = String::from_utf8(reply.body).unwrap();
        assert!(!text.contains("canary"), "{text}");
    }

    #[test]
    fn predict_answers_what_the_model_computes() {
        let model = demo_model();
        let reply = call(
            &model,
            "POST",
            "/v1/predict",
            r#"{"inputs":[5.1,3.5,1.4,0.2]}"#,
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let prediction: Prediction = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(prediction, model.predict(&[5.1, 3.5, 1.4, 0.2]).unwrap());
    }

    #[test]
    fn malformed_json_is_a_400_naming_the_expected_body() {
        for body in [
            "",
            "{",
            r#"{"inputs":"x"}"#,
            r#"{"input":[1,2,3,4]}"#,
            r#"{"inputs":[1,2,3,4],"x":1}"#,
        ] {
            let reply = call(&demo_model(), "POST", "/v1/predict", body);
            assert_eq!(reply.status, 400, "{body}");
            let problem = problem_of(&reply);
            assert_eq!(problem.problem_type, ProblemKind::InvalidJson.type_uri());
            assert!(problem.expected.unwrap().contains("4 finite numbers"));
        }
    }

    #[test]
    fn wrong_input_count_is_a_400_saying_how_many() {
        let reply = call(
            &demo_model(),
            "POST",
            "/v1/predict",
            r#"{"inputs":[1,2,3]}"#,
        );
        assert_eq!(reply.status, 400);
        let problem = problem_of(&reply);
        assert_eq!(problem.problem_type, ProblemKind::InvalidInputs.type_uri());
        assert_eq!(problem.detail, "expected 4 input values, got 3");
    }

    #[test]
    fn values_beyond_f32_are_a_400_naming_the_index() {
        let reply = call(
            &demo_model(),
            "POST",
            "/v1/predict",
            r#"{"inputs":[1,2,1e39,4]}"#,
        );
        assert_eq!(reply.status, 400);
        assert!(problem_of(&reply)
            .detail
            .starts_with("inputs[2] is not a finite"));
    }

    #[test]
    fn oversized_body_is_a_413() {
        let body = format!(r#"{{"inputs":[{}1]}}"#, "1,".repeat(40_000));
        let reply = call(&demo_model(), "POST", "/v1/predict", &body);
        assert_eq!(reply.status, 413);
        assert_eq!(problem_of(&reply).status, 413);
    }

    #[test]
    fn unknown_path_is_a_404_problem() {
        let reply = call(&demo_model(), "GET", "/v2/anything", "");
        assert_eq!(reply.status, 404);
        assert_eq!(problem_of(&reply).detail, "no endpoint at /v2/anything");
    }

    #[test]
    fn wrong_method_is_a_405_with_allow() {
        let reply = call(&demo_model(), "GET", "/v1/predict", "");
        assert_eq!((reply.status, reply.allow), (405, Some("POST")));
        let reply = call(&demo_model(), "DELETE", "/healthz", "");
        assert_eq!((reply.status, reply.allow), (405, Some("GET")));
    }
}
