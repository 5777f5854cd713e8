//! `veil doctor`: what this host can offer veil, one verdict per capability.

use clap::Args;
use veil_host::{doctor, Probe, Report, SystemRunner};

/// Arguments of `veil doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The QEMU binary to examine.
    #[arg(long, default_value = veil_host::qemu::DEFAULT_QEMU)]
    qemu: String,
}

/// Runs `veil doctor`: prints the findings; the exit status does not depend on them.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let report = doctor(&Probe {
        root: std::path::Path::new("/"),
        runner: &SystemRunner::default(),
        qemu: &args.qemu,
    });
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&report)?)
    } else {
        render_table(&report)
    };
    write_stdout(&text)
}

/// Writes `text` to stdout; a reader that went away (`veil doctor | head`) is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// One line per finding: check, status, detail, in aligned columns.
fn render_table(report: &Report) -> String {
    let check_width = report
        .findings
        .iter()
        .map(|finding| finding.check.len())
        .chain(std::iter::once("CHECK".len()))
        .max()
        .unwrap_or(0);
    let status_width = "unusable".len();
    let mut out = format!(
        "{:check_width$}  {:status_width$}  DETAIL\n",
        "CHECK", "STATUS"
    );
    for finding in &report.findings {
        out.push_str(&format!(
            "{:check_width$}  {:status_width$}  {}\n",
            finding.check,
            finding.status.as_str(),
            finding.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_host::Finding;

    #[test]
    fn the_table_aligns_columns_and_keeps_every_detail() {
        let report = Report {
            findings: vec![
                Finding::unusable("kvm", "host KVM is PVM"),
                Finding::ok("qemu-sev-snp", "has the sev-snp-guest object"),
            ],
        };
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "CHECK         STATUS    DETAIL");
        assert_eq!(lines[1], "kvm           unusable  host KVM is PVM");
        assert_eq!(
            lines[2],
            "qemu-sev-snp  ok        has the sev-snp-guest object"
        );
    }
}
