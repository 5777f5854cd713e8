//! veil-model-server: placeholder, filled in by the serving-container work.

fn main() {}
