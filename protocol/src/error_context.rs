//! Adding what was being done to an error message, once.

/// `message` in the context of `what` ("what: message"), unless the message already begins
/// with it: errors that cross the agent API (and veil-container's) name what failed
/// themselves, and a caller adding the same words again only makes them harder to read.
pub fn in_context(what: &str, message: &str) -> String {
    if what.is_empty() || message.starts_with(what) {
        return message.to_string();
    }
    // "create container c" and "container c: why" name the same thing; say it once. The
    // subject must be a kind and a name: a lone word at the end could be anything.
    if let Some((subject, why)) = message.split_once(": ").filter(|(s, _)| s.contains(' ')) {
        let verb = what.strip_suffix(subject);
        if verb.is_some_and(|verb| verb.ends_with(' ')) {
            return format!("{what}: {why}");
        }
    }
    format!("{what}: {message}")
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
        assert_eq!(
            in_context("create container c", "container c: no such file"),
            "create container c: no such file"
        );
        // Only a kind and a name count: a lone "c" may not be the container.
        assert_eq!(
            in_context("create container c", "c: bad"),
            "create container c: c: bad"
        );
    }
}
