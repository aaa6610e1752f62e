//! The task events containerd must see, in the order it requires: create,
//! start, exit, delete for a task; exec-added, exec-started, exit for an
//! exec (shared/PODS.md: an exit published before its start confuses
//! containerd). One thread publishes them, in order; an exit that arrives
//! before its process's start was published waits for it.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// A process of a task: its init (`exec` empty) or an exec.
pub type ProcessKey = (String, String);

/// One event to publish.
pub enum Event {
    /// The task was created.
    Create {
        /// The container id.
        id: String,
        /// Its bundle.
        bundle: String,
        /// Its stdio.
        io: TaskIO,
        /// Its pid.
        pid: u32,
    },
    /// A process started.
    Start {
        /// The container id.
        id: String,
        /// The exec id (empty for the init).
        exec: String,
        /// Its pid.
        pid: u32,
    },
    /// An exec was added.
    ExecAdded {
        /// The container id.
        id: String,
        /// The exec id.
        exec: String,
    },
    /// A process exited.
    Exit {
        /// The container id.
        id: String,
        /// The exec id (empty for the init).
        exec: String,
        /// Its pid.
        pid: u32,
        /// Its exit status.
        status: u32,
        /// When.
        at: Timestamp,
    },
    /// The task was deleted.
    Delete {
        /// The container id.
        id: String,
        /// Its pid.
        pid: u32,
        /// Its exit status.
        status: u32,
        /// When it exited.
        at: Timestamp,
    },
    /// The task was paused.
    Paused {
        /// The container id.
        id: String,
    },
    /// The task was resumed.
    Resumed {
        /// The container id.
        id: String,
    },
}

#[derive(Default)]
struct Order {
    started: HashSet<ProcessKey>,
    waiting_exits: HashMap<ProcessKey, Event>,
}

/// The ordered publisher.
#[derive(Clone)]
pub struct Events {
    queue: Sender<Event>,
    order: Arc<Mutex<Order>>,
}

impl Events {
    /// Publishes through `publisher` into containerd namespace `namespace`
    /// from a thread of its own.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (queue, events) = channel::<Event>();
        let _ = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for event in events {
                    let (topic, message) = encode(event);
                    if let Err(e) =
                        publisher.publish(Context::default(), topic, &namespace, message)
                    {
                        containerd_shim::warn!("publishing {topic}: {e}");
                    }
                }
            });
        Events {
            queue,
            order: Arc::default(),
        }
    }

    /// Queues `event`; an exit waits for its process's start.
    pub fn publish(&self, event: Event) {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        match &event {
            Event::Start { id, exec, .. } => {
                let key = (id.clone(), exec.clone());
                order.started.insert(key.clone());
                let _ = self.queue.send(event);
                if let Some(exit) = order.waiting_exits.remove(&key) {
                    let _ = self.queue.send(exit);
                }
            }
            Event::Exit { id, exec, .. } => {
                let key = (id.clone(), exec.clone());
                if order.started.contains(&key) {
                    let _ = self.queue.send(event);
                } else {
                    order.waiting_exits.insert(key, event);
                }
            }
            Event::Delete { id, .. } => {
                order.started.retain(|(task, _)| task != id);
                // A task deleted without a start (created, killed) still
                // reports its exit first.
                let exits: Vec<ProcessKey> = order
                    .waiting_exits
                    .keys()
                    .filter(|(task, _)| task == id)
                    .cloned()
                    .collect();
                for key in exits {
                    if let Some(exit) = order.waiting_exits.remove(&key) {
                        let _ = self.queue.send(exit);
                    }
                }
                let _ = self.queue.send(event);
            }
            _ => {
                let _ = self.queue.send(event);
            }
        }
    }
}

fn encode(event: Event) -> (&'static str, Box<dyn MessageDyn>) {
    match event {
        Event::Create {
            id,
            bundle,
            io,
            pid,
        } => (
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id,
                bundle,
                io: Some(io).into(),
                pid,
                ..Default::default()
            }),
        ),
        Event::Start { id, exec, pid } if exec.is_empty() => (
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            }),
        ),
        Event::Start { id, exec, pid } => (
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id,
                exec_id: exec,
                pid,
                ..Default::default()
            }),
        ),
        Event::ExecAdded { id, exec } => (
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id,
                exec_id: exec,
                ..Default::default()
            }),
        ),
        Event::Exit {
            id,
            exec,
            pid,
            status,
            at,
        } => {
            let exec = if exec.is_empty() { id.clone() } else { exec };
            (
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id,
                    id: exec,
                    pid,
                    exit_status: status,
                    exited_at: Some(at).into(),
                    ..Default::default()
                }),
            )
        }
        Event::Delete {
            id,
            pid,
            status,
            at,
        } => (
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                id: id.clone(),
                container_id: id,
                pid,
                exit_status: status,
                exited_at: Some(at).into(),
                ..Default::default()
            }),
        ),
        Event::Paused { id } => (
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Resumed { id } => (
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
        ),
    }
}
