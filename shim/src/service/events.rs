//! Publishing task events to containerd.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;

use super::process::{ExitInfo, ProcessState};
use super::publisher::Publisher;

/// Converts a time to a protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// Where events go; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    namespace: Arc<str>,
    publisher: Arc<Publisher>,
}

impl EventSink {
    /// Events for `namespace` through `publisher`.
    pub fn new(namespace: &str, publisher: Arc<Publisher>) -> Self {
        EventSink {
            namespace: Arc::from(namespace),
            publisher,
        }
    }

    /// The containerd namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn publish(&self, event: impl Event + 'static) {
        let topic = event.topic();
        if let Err(error) = self
            .publisher
            .publish(&topic, &self.namespace, Box::new(event))
        {
            tracing::warn!(%topic, %error, "event not published");
        }
    }

    /// TaskCreate.
    pub async fn create(&self, request: &CreateTaskRequest, pid: u32) {
        self.publish(TaskCreate {
            container_id: request.id.clone(),
            bundle: request.bundle.clone(),
            rootfs: request.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: request.stdin.clone(),
                stdout: request.stdout.clone(),
                stderr: request.stderr.clone(),
                terminal: request.terminal,
                ..Default::default()
            }),
            checkpoint: request.checkpoint.clone(),
            pid,
            ..Default::default()
        })
        .await;
    }

    /// TaskStart.
    pub async fn start(&self, container_id: &str, pid: u32) {
        self.publish(TaskStart {
            container_id: container_id.to_string(),
            pid,
            ..Default::default()
        })
        .await;
    }

    /// TaskPaused.
    pub async fn paused(&self, container_id: &str) {
        self.publish(TaskPaused {
            container_id: container_id.to_string(),
            ..Default::default()
        })
        .await;
    }

    /// TaskResumed.
    pub async fn resumed(&self, container_id: &str) {
        self.publish(TaskResumed {
            container_id: container_id.to_string(),
            ..Default::default()
        })
        .await;
    }

    /// TaskExecAdded.
    pub async fn exec_added(&self, container_id: &str, exec_id: &str) {
        self.publish(TaskExecAdded {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        })
        .await;
    }

    /// TaskExecStarted.
    pub async fn exec_started(&self, container_id: &str, exec_id: &str, pid: u32) {
        self.publish(TaskExecStarted {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            ..Default::default()
        })
        .await;
    }

    /// TaskOOM: the kernel's OOM killer acted in the container (CRI then reports the
    /// reason OOMKilled).
    pub async fn oom(&self, container_id: &str) {
        self.publish(TaskOOM {
            container_id: container_id.to_string(),
            ..Default::default()
        })
        .await;
    }

    /// TaskExit (`id` is the exec id, or the container id for init).
    pub async fn exit(&self, process: &ProcessState, exit: ExitInfo) {
        let id = if process.exec_id.is_empty() {
            process.container_id.clone()
        } else {
            process.exec_id.clone()
        };
        self.publish(TaskExit {
            container_id: process.container_id.clone(),
            id,
            pid: process.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
        .await;
    }

    /// TaskDelete.
    pub async fn delete(&self, container_id: &str, pid: u32, exit: ExitInfo) {
        self.publish(TaskDelete {
            container_id: container_id.to_string(),
            id: container_id.to_string(),
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_keep_seconds_and_nanos() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let ts = timestamp(at);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    }

    #[test]
    fn event_topics_are_containerd_s() {
        assert_eq!(TaskCreate::default().topic(), "/tasks/create");
        assert_eq!(TaskExit::default().topic(), "/tasks/exit");
        assert_eq!(TaskExecStarted::default().topic(), "/tasks/exec-started");
        assert_eq!(TaskOOM::default().topic(), "/tasks/oom");
    }
}
