//! Resource policies: one CEL condition per resource over the verified `claims`.
//!
//! Example: `claims.tee == 'snp' && claims.measurement in ['7a1e...']`. The variables are
//! `claims` (see [`crate::attestation`] for the table) and `resource` (`repo/type/tag`).
//!
//! Rules, all failing closed:
//! - a policy that does not parse is refused when it is set, with the parser's message;
//! - a resource without a policy is released to nobody;
//! - the result must be exactly `true`; an error or a non-boolean refuses;
//! - insecure `sample` claims must be asked for: the policy is evaluated again on probe
//!   claims (see [`Policy::evaluate`]) and must be true *because* the claims are `sample`
//!   (it depends on `claims.tee` or `claims.insecure`); a policy that would grant the same
//!   claims from any TEE, or only from a real one, refuses `sample`. Mentioning `sample` in a
//!   string or comment does nothing;
//! - on refusal, the first top-level `&&` condition that is not true is named.

use cel::{Context, Program, Value};

/// Largest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 16 * 1024;

/// Why a policy text was refused when it was set.
#[derive(Debug, thiserror::Error)]
pub enum PolicySyntaxError {
    /// The text is not valid CEL.
    #[error("policy is not valid CEL: {0}")]
    Parse(String),
    /// The text is empty or too large.
    #[error("policy must be 1 to {MAX_POLICY_BYTES} bytes of CEL, got {0} bytes")]
    Size(usize),
}

/// Why a policy refused claims.
#[derive(Debug, thiserror::Error)]
pub enum PolicyDenied {
    /// Insecure claims and the policy does not ask for them.
    #[error("the INSECURE `sample` attester is refused for {resource}: its policy {reason} (to allow sample on a development broker, require it: `claims.tee == 'sample' && ...`)")]
    SampleNotAllowed {
        /// The resource.
        resource: String,
        /// What the probe evaluation found.
        reason: &'static str,
    },
    /// A condition was not true.
    #[error("policy for {resource} refused the claims: condition `{condition}` is {outcome}")]
    ConditionFailed {
        /// The resource.
        resource: String,
        /// The failing condition (whole policy when it has no top-level `&&`).
        condition: String,
        /// `false`, or what else it evaluated to.
        outcome: String,
    },
}

/// A compiled CEL policy.
pub struct Policy {
    source: String,
    program: Program,
    conjuncts: Vec<(String, Program)>,
}

/// `tee` of the probe claims that stand for "some TEE this policy does not name".
const PROBE_TEE: &str = "veil-policy-probe-tee";

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Compiles `source`; refuses syntax errors.
    pub fn compile(source: &str) -> Result<Self, PolicySyntaxError> {
        let trimmed = source.trim();
        if trimmed.is_empty() || source.len() > MAX_POLICY_BYTES {
            return Err(PolicySyntaxError::Size(source.len()));
        }
        let program = compile_guarded(trimmed).map_err(PolicySyntaxError::Parse)?;
        let parts = split_top_level_and(trimmed);
        // Explanations are best effort: used only if every part compiles on its own.
        let conjuncts = if parts.len() > 1 {
            parts
                .iter()
                .map(|p| compile_guarded(p).map(|prog| (p.clone(), prog)))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Self {
            source: trimmed.to_owned(),
            program,
            conjuncts,
        })
    }

    /// The policy text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the policy for `resource` against verified `claims`.
    ///
    /// For `insecure` (sample) claims the policy is also run on probe claims, the same
    /// claims with only `tee` and `insecure` changed:
    /// - if it is true for the sample claims, it must not be true for a TEE it does not name
    ///   (`tee` = a probe name, `insecure` = false): else it does not ask for sample at all;
    /// - if it is not true for the sample claims but true for them from `snp` with
    ///   `insecure` false, it is refusing sample as such, and says so.
    pub fn evaluate(
        &self,
        resource: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        insecure: bool,
    ) -> Result<(), PolicyDenied> {
        let context = context_for(resource, claims);
        let outcome = run(&self.program, &context);
        if insecure {
            self.check_sample_is_asked_for(resource, claims, outcome == Outcome::True)?;
        }
        if outcome == Outcome::True {
            return Ok(());
        }
        let (condition, outcome) = self
            .conjuncts
            .iter()
            .map(|(text, prog)| (text, run(prog, &context)))
            .find(|(_, o)| *o != Outcome::True)
            .map(|(text, o)| (text.clone(), o))
            .unwrap_or_else(|| (self.source.clone(), outcome));
        Err(PolicyDenied::ConditionFailed {
            resource: resource.to_owned(),
            condition,
            outcome: outcome.describe(),
        })
    }
}

impl Policy {
    fn check_sample_is_asked_for(
        &self,
        resource: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        granted: bool,
    ) -> Result<(), PolicyDenied> {
        let refuse = |reason| {
            Err(PolicyDenied::SampleNotAllowed {
                resource: resource.to_owned(),
                reason,
            })
        };
        if granted {
            if self.is_true_for(resource, &probe_claims(claims, PROBE_TEE)) {
                return refuse("does not depend on claims.tee or claims.insecure: it would release the resource to any TEE presenting these self-reported claims");
            }
        } else if self.is_true_for(resource, &probe_claims(claims, "snp")) {
            return refuse(
                "accepts these claims only from a real TEE, not from the sample attester",
            );
        }
        Ok(())
    }

    fn is_true_for(
        &self,
        resource: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        run(&self.program, &context_for(resource, claims)) == Outcome::True
    }
}

/// `claims` as a secure TEE named `tee` would present them.
fn probe_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    tee: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let mut probe = claims.clone();
    probe.insert("tee".into(), tee.into());
    probe.insert("insecure".into(), false.into());
    probe
}

#[derive(Debug, PartialEq)]
enum Outcome {
    True,
    False,
    Other(String),
}

impl Outcome {
    fn describe(self) -> String {
        match self {
            Outcome::True => "true".into(),
            Outcome::False => "false".into(),
            Outcome::Other(what) => what,
        }
    }
}

fn run(program: &Program, context: &Context) -> Outcome {
    // A panic inside the interpreter must refuse, not take the request task down silently.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(context)));
    let Ok(result) = result else {
        return Outcome::Other("an interpreter failure".into());
    };
    match result {
        Ok(Value::Bool(true)) => Outcome::True,
        Ok(Value::Bool(false)) => Outcome::False,
        Ok(other) => Outcome::Other(format!("not a boolean ({other:?})")),
        Err(e) => Outcome::Other(format!("an error ({e})")),
    }
}

/// The cel parser can panic on some malformed inputs; treat a panic as a syntax error.
fn compile_guarded(source: &str) -> Result<Program, String> {
    std::panic::catch_unwind(|| Program::compile(source))
        .map_err(|_| "the CEL parser failed on this input".to_owned())?
        .map_err(|e| e.to_string())
}

fn context_for(
    resource: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Context<'static> {
    let mut context = Context::default();
    let claims = serde_json::Value::Object(claims.clone());
    // Claims are JSON made of strings, bools, integers, maps: always convertible.
    if let Ok(value) = cel::to_value(claims) {
        context.add_variable_from_value("claims", value);
    }
    context.add_variable_from_value("resource", resource.to_owned());
    context
}

/// Splits `a && b && (c || d)` into `["a", "b", "(c || d)"]`, outside quotes and brackets.
fn split_top_level_and(source: &str) -> Vec<String> {
    let bytes = source.as_bytes();
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'&' if depth == 0 && bytes.get(i + 1) == Some(&b'&') => {
                    parts.push(source[start..i].trim().to_owned());
                    start = i + 2;
                    i += 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    parts.push(source[start..].trim().to_owned());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn syntax_errors_are_refused_when_set() {
        assert!(matches!(
            Policy::compile("claims.tee == "),
            Err(PolicySyntaxError::Parse(_))
        ));
        assert!(matches!(
            Policy::compile("   "),
            Err(PolicySyntaxError::Size(_))
        ));
    }

    #[test]
    fn snp_measurement_policy_allows_the_listed_measurement() {
        let p =
            Policy::compile("claims.tee == 'snp' && claims.measurement in ['aa', 'bb']").unwrap();
        let ok = claims(json!({"tee": "snp", "measurement": "bb", "insecure": false}));
        p.evaluate("r/t/g", &ok, false).unwrap();
        let bad = claims(json!({"tee": "snp", "measurement": "cc", "insecure": false}));
        let err = p.evaluate("r/t/g", &bad, false).unwrap_err();
        assert!(
            err.to_string()
                .contains("condition `claims.measurement in ['aa', 'bb']` is false"),
            "{err}"
        );
    }

    fn sample_claims() -> serde_json::Map<String, serde_json::Value> {
        claims(json!({"tee": "sample", "measurement": "sample", "insecure": true}))
    }

    fn refuses_sample(policy: &str) -> bool {
        let p = Policy::compile(policy).unwrap();
        matches!(
            p.evaluate("r/t/g", &sample_claims(), true),
            Err(PolicyDenied::SampleNotAllowed { .. })
        )
    }

    #[test]
    fn sample_must_be_asked_for_by_a_claim() {
        for allowing in [
            "claims.tee == 'sample'",
            "claims.insecure",
            "claims.tee == 'sample' && claims.measurement == 'sample'",
            "claims.tee in ['snp', 'sample'] && claims.measurement == 'sample'",
        ] {
            assert!(!refuses_sample(allowing), "{allowing}");
            Policy::compile(allowing)
                .unwrap()
                .evaluate("r/t/g", &sample_claims(), true)
                .unwrap();
        }
        for not_asking in [
            // Grants the claims whatever the TEE: no opt-in.
            "claims.measurement == 'aa' || true",
            "claims.measurement == 'sample'",
            "claims.tee != 'tdx' && claims.measurement == 'sample'",
            "'sample' == 'sample'",
            // Names only real TEEs.
            "claims.tee == 'snp' && claims.measurement == 'sample'",
            "!claims.insecure",
        ] {
            assert!(refuses_sample(not_asking), "{not_asking}");
        }
    }

    /// A comment that names sample is not a claim test (if the CEL parser takes comments at
    /// all; if it does not, the policy is refused when set, which is fine too).
    #[test]
    fn sample_in_a_comment_does_not_open_the_door() {
        let text = "claims.measurement == 'sample' // claims.tee == 'sample'";
        if let Ok(p) = Policy::compile(text) {
            assert!(matches!(
                p.evaluate("r/t/g", &sample_claims(), true),
                Err(PolicyDenied::SampleNotAllowed { .. })
            ));
        }
    }

    #[test]
    fn sample_with_the_wrong_measurement_is_a_plain_policy_refusal() {
        let p = Policy::compile("claims.tee == 'sample' && claims.measurement == 'good'").unwrap();
        let err = p.evaluate("r/t/g", &sample_claims(), true).unwrap_err();
        assert!(matches!(err, PolicyDenied::ConditionFailed { .. }), "{err}");
    }

    #[test]
    fn secure_claims_are_not_probed() {
        let p = Policy::compile("claims.measurement == 'aa'").unwrap();
        let c = claims(json!({"tee": "snp", "measurement": "aa", "insecure": false}));
        p.evaluate("r/t/g", &c, false).unwrap();
    }

    #[test]
    fn errors_and_non_booleans_refuse() {
        let c = claims(json!({"tee": "snp"}));
        let p = Policy::compile("claims.no_such_claim == 'x'").unwrap();
        assert!(p.evaluate("r/t/g", &c, false).is_err());
        let p = Policy::compile("claims.tee").unwrap();
        let err = p.evaluate("r/t/g", &c, false).unwrap_err();
        assert!(err.to_string().contains("not a boolean"), "{err}");
    }

    #[test]
    fn nested_claims_and_resource_are_visible() {
        let p = Policy::compile(
            "claims.tcb.snp >= 8 && !claims.policy.debug && resource == 'm/key/llama'",
        )
        .unwrap();
        let c = claims(json!({"tcb": {"snp": 9}, "policy": {"debug": false}}));
        p.evaluate("m/key/llama", &c, false).unwrap();
        assert!(p.evaluate("m/key/other", &c, false).is_err());
    }

    #[test]
    fn split_respects_quotes_and_brackets() {
        assert_eq!(
            split_top_level_and("a && (b && c) && 'x && y' == d"),
            vec!["a", "(b && c)", "'x && y' == d"]
        );
    }
}
