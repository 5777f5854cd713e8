//! veil runtime configuration: schema, defaults, loading and validation.
