//! Adding what was being done to an error message, once.

/// `message` in the context of `what` ("what: message"), unless the message already begins
/// with it: errors that cross the agent API (and veil-container's) name what failed
/// themselves, and a caller adding the same words again only makes them harder to read.
pub fn in_context(what: &str, message: &str) -> String {
    if what.is_empty() || message.starts_with(what) {
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::in_context;

    #[test]
    fn context_is_added_once() {
        assert_eq!(
            in_context("exec e in container c", "no such file"),
            "exec e in container c: no such file"
        );
        assert_eq!(
            in_context(
                "exec e in container c",
                "exec e in container c: no such file"
            ),
            "exec e in container c: no such file"
        );
        assert_eq!(in_context("", "why"), "why");
    }
}
