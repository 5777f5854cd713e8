//! Markdown table rows for the results file.

use veil_benches::{summarize, Summary};

/// The header of a median/min/max table whose first column is `what`.
pub fn header(what: &str, unit: &str) -> String {
    format!(
        "| {what} | median {unit} | min {unit} | max {unit} | n |\n| --- | ---: | ---: | ---: | ---: |\n"
    )
}

/// One row of median, min and max of `samples` (a dash row when there are none).
pub fn row(name: &str, samples: &[f64]) -> String {
    match summarize(samples) {
        Some(Summary {
            median,
            min,
            max,
            count,
        }) => format!("| {name} | {median:.3} | {min:.3} | {max:.3} | {count} |\n"),
        None => format!("| {name} | - | - | - | 0 |\n"),
    }
}

/// The median of `samples`, 0 when empty (for JSON summaries).
pub fn median(samples: &[f64]) -> f64 {
    summarize(samples).map(|s| s.median).unwrap_or(0.0)
}

/// `{median, min, max, n}` of `samples` as JSON.
pub fn summary_json(samples: &[f64]) -> serde_json::Value {
    match summarize(samples) {
        Some(s) => {
            serde_json::json!({"median": s.median, "min": s.min, "max": s.max, "n": s.count})
        }
        None => serde_json::json!({"n": 0}),
    }
}
