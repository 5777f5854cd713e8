//! Runs real containers from a busybox rootfs, as root, with this test binary as the parent
//! (a subreaper that reaps like the agent). Its own `main` calls `maybe_run_init` first, so
//! it cannot use libtest; each case is a named function, run in order, filtered by the
//! first non-flag argument. All namespace changes happen in the crate's child processes.

mod cases;
mod harness;

use std::process::ExitCode;

/// Set by the `threaded_helper_is_refused` case: start a thread before init mode, as a
/// binary with `#[tokio::main]` would.
const START_THREAD_FIRST: &str = "VEIL_CONTAINER_TEST_START_THREAD";

fn main() -> ExitCode {
    if std::env::var_os(START_THREAD_FIRST).is_some() {
        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(5)));
    }
    veil_container::maybe_run_init();
    if let Err(message) = harness::check_environment().and_then(|()| harness::become_reaper()) {
        eprintln!("runtime tests cannot run: {message}");
        return ExitCode::FAILURE;
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases::CASES {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        match case() {
            Ok(()) => println!("test {name} ... ok"),
            Err(message) => {
                println!("test {name} ... FAILED: {message}");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
