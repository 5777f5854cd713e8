//! Running the host's tools (`qemu-system-x86_64`, `containerd`) behind a trait, so that the
//! checks that parse their output are tested with recorded answers.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The command exited with status 0.
    pub success: bool,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
}

/// A host tool could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum RunCommandError {
    /// The program is not installed or not executable.
    #[error("cannot run `{program}`: {source} (is it installed and on PATH?)")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The program did not finish in time and was killed.
    #[error("`{program}` did not finish within {seconds} s and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        seconds: u64,
    },
    /// Waiting for or reading from the program failed.
    #[error("reading the output of `{program}` failed: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Runs a program with arguments and returns what it printed.
pub trait CommandRunner {
    /// Runs `program args...` to completion.
    fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, RunCommandError>;
}

/// The first line of `text`, trimmed.
pub fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// The first line of what `program --version` printed; otherwise the finding `check` gets:
/// missing (with `install`, what to install) when the program cannot run, unusable when it
/// fails.
pub fn version_line(
    runner: &dyn CommandRunner,
    check: &'static str,
    program: &str,
    install: &str,
) -> Result<String, crate::finding::Finding> {
    use crate::finding::Finding;
    match runner.run(program, &["--version"]) {
        Ok(output) if output.success => Ok(first_line(&output.stdout)),
        Ok(output) => Err(Finding::unusable(
            check,
            format!(
                "`{program} --version` failed: {}",
                first_line(&output.stderr)
            ),
        )),
        Err(error) => Err(Finding::missing(check, format!("{error}: {install}"))),
    }
}

/// Runs real processes, killing any that take longer than `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct SystemRunner {
    /// How long one command may take.
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        // `qemu -object help` and `containerd --version` answer in well under a second; a
        // hung tool must not hang the doctor.
        Self {
            timeout: Duration::from_secs(20),
        }
    }
}

const POLL_INTERVAL: Duration = Duration::from_millis(20);

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, RunCommandError> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunCommandError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let wait_error = |source| RunCommandError::Wait {
            program: program.to_owned(),
            source,
        };
        // Read both pipes on threads so a chatty tool cannot block on a full pipe.
        let stdout = child.stdout.take().map(spawn_reader);
        let stderr = child.stderr.take().map(spawn_reader);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(wait_error)? {
                break status;
            }
            if started.elapsed() > self.timeout {
                // Best effort: the process may have exited between the checks.
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunCommandError::Timeout {
                    program: program.to_owned(),
                    seconds: self.timeout.as_secs(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        Ok(CommandOutput {
            success: status.success(),
            stdout: join_reader(stdout),
            stderr: join_reader(stderr),
        })
    }
}

fn spawn_reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error leaves what was read so far; the exit status still tells success.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn join_reader(handle: Option<std::thread::JoinHandle<Vec<u8>>>) -> String {
    handle
        .and_then(|handle| handle.join().ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod fake {
    //! A runner that answers from a table, for tests.
    use super::*;
    use std::collections::HashMap;

    /// Answers `program args` from a table; anything else is "not installed".
    #[derive(Default)]
    pub struct FakeRunner {
        answers: HashMap<String, CommandOutput>,
    }

    impl FakeRunner {
        /// Records that `command` (program and arguments joined by spaces) prints `stdout`.
        pub fn answer(mut self, command: &str, stdout: &str) -> Self {
            self.answers.insert(
                command.to_owned(),
                CommandOutput {
                    success: true,
                    stdout: stdout.to_owned(),
                    stderr: String::new(),
                },
            );
            self
        }
    }

    impl CommandRunner for FakeRunner {
        fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, RunCommandError> {
            let key = std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" ");
            self.answers
                .get(&key)
                .cloned()
                .ok_or_else(|| RunCommandError::Spawn {
                    program: program.to_owned(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_to_install_it() {
        let error = SystemRunner::default()
            .run("/nonexistent/veil-no-such-tool", &[])
            .unwrap_err();
        assert!(error.to_string().contains("is it installed"), "{error}");
    }

    #[test]
    fn output_and_status_come_back() {
        let output = SystemRunner::default()
            .run("sh", &["-c", "echo out; echo err >&2; exit 3"])
            .unwrap();
        assert!(!output.success);
        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");
    }

    #[test]
    fn a_hung_program_is_killed() {
        let runner = SystemRunner {
            timeout: Duration::from_millis(100),
        };
        let error = runner.run("sleep", &["30"]).unwrap_err();
        assert!(matches!(error, RunCommandError::Timeout { .. }), "{error}");
    }
}
