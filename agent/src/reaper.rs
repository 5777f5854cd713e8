//! The guest's only reaper: every child of PID 1 (container inits, exec'd processes,
//! orphans re-parented to PID 1) is reaped here, and exit statuses go to whoever
//! registered the pid.
//!
//! A pid is not reused until it is reaped, so registering a pid while holding the
//! [`SpawnGuard`] (which the reaper also takes before reaping) cannot lose an exit:
//! a process that dies before it is registered stays a zombie until the guard is
//! released, and is then reaped with its waiter in place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number for a process killed by a signal (the shell's convention).
    pub status: u32,
    /// When the reaper saw it.
    pub at: SystemTime,
}

impl Exit {
    fn from_wait_status(status: WaitStatus) -> Option<(Pid, Exit)> {
        let at = SystemTime::now();
        match status {
            WaitStatus::Exited(pid, code) => Some((
                pid,
                Exit {
                    status: code as u32,
                    at,
                },
            )),
            WaitStatus::Signaled(pid, signal, _) => Some((
                pid,
                Exit {
                    status: 128 + signal as u32,
                    at,
                },
            )),
            _ => None,
        }
    }
}

/// A handle to wait for one registered process's exit; clone it to wait from several places.
#[derive(Debug, Clone)]
pub struct ExitWatch(watch::Receiver<Option<Exit>>);

impl ExitWatch {
    /// Waits until the process has been reaped.
    pub async fn wait(&mut self) -> Exit {
        loop {
            if let Some(exit) = *self.0.borrow_and_update() {
                return exit;
            }
            if self.0.changed().await.is_err() {
                // The reaper is gone (agent shutting down): report the process as killed.
                return Exit {
                    status: 128 + libc::SIGKILL as u32,
                    at: SystemTime::now(),
                };
            }
        }
    }

    /// The exit, if the process has already been reaped.
    pub fn try_exit(&self) -> Option<Exit> {
        *self.0.borrow()
    }
}

#[derive(Default)]
struct Registry {
    waiters: HashMap<i32, watch::Sender<Option<Exit>>>,
}

/// The reaper; cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    spawn_lock: Arc<tokio::sync::Mutex<()>>,
    registry: Arc<Mutex<Registry>>,
}

/// Held while a process is being created and registered; blocks reaping meanwhile.
pub struct SpawnGuard<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    registry: &'a Mutex<Registry>,
}

impl SpawnGuard<'_> {
    /// Registers `pid` so its exit status is kept for [`ExitWatch::wait`].
    pub fn register(&self, pid: i32) -> ExitWatch {
        let (sender, receiver) = watch::channel(None);
        lock(self.registry).waiters.insert(pid, sender);
        ExitWatch(receiver)
    }
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    // A panic while holding the lock leaves the map consistent (single inserts/removes).
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reaper {
    /// Creates the reaper and starts reaping on SIGCHLD. Must be called inside a tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper {
            spawn_lock: Arc::new(tokio::sync::Mutex::new(())),
            registry: Arc::new(Mutex::new(Registry::default())),
        };
        let mut sigchld = signal(SignalKind::child())?;
        let background = reaper.clone();
        tokio::spawn(async move {
            loop {
                background.reap_all().await;
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Takes the spawn guard: create the process and register its pid while holding it.
    pub async fn spawn_guard(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            _lock: self.spawn_lock.lock().await,
            registry: &self.registry,
        }
    }

    async fn reap_all(&self) {
        let _guard = self.spawn_lock.lock().await;
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return,
                Ok(status) => self.deliver(status),
                Err(nix::Error::EINTR) => continue,
                Err(error) => {
                    tracing::warn!(%error, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn deliver(&self, status: WaitStatus) {
        let Some((pid, exit)) = Exit::from_wait_status(status) else {
            return;
        };
        match lock(&self.registry).waiters.remove(&pid.as_raw()) {
            Some(waiter) => {
                tracing::debug!(pid = pid.as_raw(), status = exit.status, "process exited");
                let _ = waiter.send(Some(exit));
            }
            None => tracing::trace!(
                pid = pid.as_raw(),
                status = exit.status,
                "reaped unregistered process"
            ),
        }
    }
}

/// Reapers call waitpid(-1): tests that start one must not overlap.
#[cfg(test)]
pub(crate) static ONE_REAPER: Mutex<()> = Mutex::new(());

#[cfg(test)]
// The lock serializes reaper tests on purpose (each test has its own runtime), and the
// children are reaped by the reaper under test, not by `Child::wait`.
#[allow(clippy::await_holding_lock, clippy::zombie_processes)]
mod tests {
    use super::*;
    use std::process::Command;

    #[tokio::test]
    async fn reports_exit_codes_and_signals_even_for_early_exits() {
        let _one = ONE_REAPER.lock().unwrap_or_else(|p| p.into_inner());
        let reaper = Reaper::start().expect("reaper");

        let guard = reaper.spawn_guard().await;
        let child = Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn");
        // Let it die before registration: the guard keeps it a zombie until we register.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut seven = guard.register(child.id() as i32);
        drop(guard);

        let guard = reaper.spawn_guard().await;
        let sleeper = Command::new("sleep").arg("30").spawn().expect("spawn");
        let mut killed = guard.register(sleeper.id() as i32);
        drop(guard);
        nix::sys::signal::kill(
            Pid::from_raw(sleeper.id() as i32),
            nix::sys::signal::SIGKILL,
        )
        .expect("kill");

        let bounded = std::time::Duration::from_secs(20);
        assert_eq!(
            tokio::time::timeout(bounded, seven.wait())
                .await
                .expect("exit")
                .status,
            7
        );
        assert_eq!(
            tokio::time::timeout(bounded, killed.wait())
                .await
                .expect("exit")
                .status,
            137
        );
        assert!(killed.try_exit().is_some());
    }
}
