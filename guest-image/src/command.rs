//! Running the host tools the build relies on (apt-cache, apt-get, dpkg-deb, depmod, make).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a long step reports that it is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(20);

/// A host tool failed to start or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum RunToolError {
    /// The program could not be started (usually: not installed).
    #[error("cannot run `{command}`: {source}; install it with `{install_hint}`")]
    Spawn {
        /// The command line.
        command: String,
        /// What to install.
        install_hint: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its standard error.
        stderr: String,
    },
}

/// Runs `command` to completion and returns its standard output as text.
///
/// `install_hint` names the package that provides the program, for the error message.
pub fn run_captured(
    command: &mut Command,
    install_hint: &'static str,
) -> Result<String, RunToolError> {
    let line = describe(command);
    tracing::debug!(command = %line, "running host tool");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RunToolError::Spawn {
            command: line.clone(),
            install_hint,
            source,
        })?;
    if !output.status.success() {
        return Err(RunToolError::Failed {
            command: line,
            status: output.status,
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 2000),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a long step (a kernel build) to completion, logging every [`PROGRESS_EVERY`] how many
/// lines of output (for make: build steps) it has printed so far; returns that count.
///
/// The output is only counted, not kept: a kernel build prints thousands of lines. Standard
/// error is kept for the error message.
pub fn run_reporting_progress(
    command: &mut Command,
    install_hint: &'static str,
    what: &'static str,
) -> Result<u64, RunToolError> {
    let line = describe(command);
    tracing::debug!(command = %line, "running host tool");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunToolError::Spawn {
            command: line.clone(),
            install_hint,
            source,
        })?;
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let started = Instant::now();
    let mut steps = 0u64;
    let mut last_report = started;
    if let Some(stdout) = child.stdout.take() {
        for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
            steps += 1;
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                tracing::info!(
                    step = what,
                    lines = steps,
                    elapsed_secs = started.elapsed().as_secs(),
                    "still running"
                );
            }
        }
    }
    let status = child.wait().map_err(|source| RunToolError::Spawn {
        command: line.clone(),
        install_hint,
        source,
    })?;
    let stderr = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(RunToolError::Failed {
            command: line,
            status,
            stderr: tail(&stderr, 2000),
        });
    }
    Ok(steps)
}

fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

fn tail(text: &str, max_chars: usize) -> String {
    let trimmed = text.trim();
    let count = trimmed.chars().count();
    trimmed
        .chars()
        .skip(count.saturating_sub(max_chars))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_and_reports_failures() {
        let out = run_captured(Command::new("sh").args(["-c", "echo hi"]), "dash").unwrap();
        assert_eq!(out, "hi\n");
        let error = run_captured(
            Command::new("sh").args(["-c", "echo bad >&2; exit 3"]),
            "dash",
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("sh -c") && text.contains("bad"), "{text}");
        let error =
            run_captured(&mut Command::new("/nonexistent/tool"), "some-package").unwrap_err();
        assert!(
            error.to_string().contains("apt-get install")
                || error.to_string().contains("some-package")
        );
    }

    #[test]
    fn a_long_step_counts_its_output_lines_and_keeps_stderr_for_failures() {
        let steps = run_reporting_progress(
            Command::new("sh").args(["-c", "for i in 1 2 3; do echo CC $i; done"]),
            "dash",
            "test",
        )
        .unwrap();
        assert_eq!(steps, 3);
        let error = run_reporting_progress(
            Command::new("sh").args(["-c", "echo CC a; echo 'no rule' >&2; exit 2"]),
            "dash",
            "test",
        )
        .unwrap_err();
        assert!(error.to_string().contains("no rule"), "{error}");
    }
}
