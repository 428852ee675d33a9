//! Commands down to MQTT devices: a [`Command`] becomes one JSON message, published at QoS 1
//! to the device's command topic (a template such as `fieldgate/{device}/command`).
//!
//! The JSON is flat and self-describing, so a MicroPython sensor can act on it with a few
//! lines:
//!
//! ```json
//! {"id": "c-17", "device": "pump-3", "created": "2026-11-24T08:30:00.000000000Z",
//!  "action": "set", "metric": "target_rpm", "value": 1200.0}
//! {"id": "d-4", "device": "truck-2", "created": "2026-11-24T08:30:00.000000000Z",
//!  "action": "instruct", "task": "serve", "target": "combine-1",
//!  "due": "2026-11-24T08:42:00.000000000Z", "note": "combine-1 full in 12 min"}
//! ```
//!
//! [`MqttCommands::send`] returns once the command is confirmed: through the embedded broker,
//! when a subscriber of the device's topic acknowledged it (or, if the device's persistent
//! session is away, once it waits in that session's queue); through an external broker, when
//! the broker sent its PUBACK.

use super::broker::Broker;
use bytes::Bytes;
use fieldgate_proto::{Action, Command, CommandError, Delivery, DeviceId, Sent};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A command topic template that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the command topic `{0}` must contain `{{device}}` as a whole level")]
    NoDevice(String),
    #[error("the command topic `{0}` cannot contain the wildcards `+` or `#`")]
    Wildcard(String),
    #[error("the command topic `{0}` may only name `{{device}}`")]
    OtherPlaceholder(String),
}

/// Where a device's commands are published: a topic with `{device}` as one of its levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTopic {
    text: String,
}

impl CommandTopic {
    /// The default: `fieldgate/{device}/command`.
    pub const DEFAULT: &'static str = "fieldgate/{device}/command";

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.contains(['+', '#']) {
            return Err(TemplateError::Wildcard(text.to_owned()));
        }
        if !text.split('/').any(|l| l == "{device}") {
            return Err(TemplateError::NoDevice(text.to_owned()));
        }
        if text.split('/').any(|l| l != "{device}" && l.contains(['{', '}'])) {
            return Err(TemplateError::OtherPlaceholder(text.to_owned()));
        }
        Ok(CommandTopic { text: text.to_owned() })
    }

    /// The topic for `device`.
    pub fn topic(&self, device: &DeviceId) -> String {
        self.text.replace("{device}", device.as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The JSON message of a command (see the module documentation).
pub fn encode(command: &Command) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), command.id.as_str().into());
    m.insert("device".into(), command.device.as_str().into());
    m.insert("created".into(), command.created.to_string().into());
    match &command.action {
        Action::Set { metric, value } => {
            m.insert("action".into(), "set".into());
            m.insert("metric".into(), metric.as_str().into());
            m.insert(
                "value".into(),
                serde_json::Number::from_f64(*value).map_or(serde_json::Value::Null, Into::into),
            );
        }
        Action::Instruct(i) => {
            m.insert("action".into(), "instruct".into());
            m.insert("task".into(), i.task.as_str().into());
            if let Some(t) = &i.target {
                m.insert("target".into(), t.as_str().into());
            }
            if let Some(due) = i.due {
                m.insert("due".into(), due.to_string().into());
            }
            m.insert("note".into(), i.note.clone().into());
        }
    }
    serde_json::to_vec(&serde_json::Value::Object(m)).expect("a JSON map serializes")
}

/// The command side of the MQTT adapter; cheap to clone.
#[derive(Debug, Clone)]
pub struct MqttCommands {
    topic: CommandTopic,
    /// How long to wait for a confirmation.
    timeout: Duration,
    via: Via,
}

#[derive(Debug, Clone)]
enum Via {
    Embedded(Broker),
    External(mpsc::Sender<Request>),
}

/// A command for the external-broker client to publish, and where to say how it went.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) done: oneshot::Sender<Result<(), CommandError>>,
}

/// The receiving end for [`super::client::run`].
#[derive(Debug)]
pub struct CommandRequests(pub(crate) mpsc::Receiver<Request>);

impl MqttCommands {
    /// Commands through the embedded broker.
    pub fn embedded(broker: Broker, topic: CommandTopic, timeout: Duration) -> Self {
        MqttCommands { topic, timeout, via: Via::Embedded(broker) }
    }

    /// Commands through an external broker: hand the requests to [`super::client::run`].
    pub fn external(topic: CommandTopic, timeout: Duration) -> (Self, CommandRequests) {
        let (tx, rx) = mpsc::channel(64);
        (MqttCommands { topic, timeout, via: Via::External(tx) }, CommandRequests(rx))
    }

    /// Publish `command` to its device's topic and wait for the confirmation.
    pub async fn send(&self, command: &Command) -> Result<Sent, CommandError> {
        let topic = self.topic.topic(&command.device);
        let payload = Bytes::from(encode(command));
        let timeout = self.timeout;
        match &self.via {
            Via::Embedded(broker) => {
                let mut sent = broker.send(&topic, payload);
                if sent.online == 0 && sent.offline == 0 {
                    return Err(CommandError::Unreachable(format!(
                        "no MQTT client subscribes to `{topic}` (is {} connected and subscribed?)",
                        command.device
                    )));
                }
                if sent.online == 0 {
                    let detail = format!(
                        "queued on `{topic}` for {} offline session(s); delivered when the device reconnects",
                        sent.offline
                    );
                    return Ok(Sent { delivery: Delivery::Queued, detail });
                }
                match tokio::time::timeout(timeout, sent.delivered.recv()).await {
                    Ok(Some(())) => Ok(Sent {
                        delivery: Delivery::Delivered,
                        detail: format!("published on `{topic}` and acknowledged by the subscriber"),
                    }),
                    _ => Err(CommandError::Timeout(format!(
                        "published on `{topic}` but no subscriber acknowledged it within {timeout:?}; \
                         it stays queued in the session and may still arrive"
                    ))),
                }
            }
            Via::External(tx) => {
                let (done, outcome) = oneshot::channel();
                tx.send(Request { topic: topic.clone(), payload, done })
                    .await
                    .map_err(|_| CommandError::Unreachable("the MQTT client has stopped".to_owned()))?;
                match tokio::time::timeout(timeout, outcome).await {
                    Ok(Ok(Ok(()))) => Ok(Sent {
                        delivery: Delivery::Delivered,
                        detail: format!("published on `{topic}` and acknowledged by the broker"),
                    }),
                    Ok(Ok(Err(e))) => Err(e),
                    Ok(Err(_)) => Err(CommandError::Unreachable("the MQTT client has stopped".to_owned())),
                    Err(_) => Err(CommandError::Timeout(format!(
                        "published on `{topic}` but the broker did not acknowledge it within {timeout:?}; \
                         it may still arrive"
                    ))),
                }
            }
        }
    }
}

/// Matches the broker's PUBACKs to the commands the external client published.
///
/// rumqttc numbers a publish when its event loop takes it (reported as `Outgoing::Publish`),
/// in the order the client queued them; a publish re-sent after a reconnect keeps its number.
/// So the first `Outgoing::Publish` of a number not yet in flight belongs to the oldest
/// command waiting for one. The gateway publishes nothing but commands on this client.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tracker(Arc<Mutex<Tracked>>);

#[derive(Debug, Default)]
struct Tracked {
    numbering: VecDeque<oneshot::Sender<Result<(), CommandError>>>,
    inflight: HashMap<u16, oneshot::Sender<Result<(), CommandError>>>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A command is about to be queued to the client.
    pub(crate) fn queued(&self, done: oneshot::Sender<Result<(), CommandError>>) {
        self.lock().numbering.push_back(done);
    }

    /// The event loop wrote a PUBLISH numbered `pkid`.
    pub(crate) fn published(&self, pkid: u16) {
        let mut t = self.lock();
        if t.inflight.contains_key(&pkid) {
            return; // re-sent after a reconnect
        }
        if let Some(done) = t.numbering.pop_front() {
            t.inflight.insert(pkid, done);
        }
    }

    /// The broker acknowledged `pkid`.
    pub(crate) fn acknowledged(&self, pkid: u16) {
        if let Some(done) = self.lock().inflight.remove(&pkid) {
            let _ = done.send(Ok(()));
        }
    }

    /// The broker refused `pkid` (an MQTT 5 PUBACK with an error reason).
    pub(crate) fn refused(&self, pkid: u16, why: String) {
        if let Some(done) = self.lock().inflight.remove(&pkid) {
            let _ = done.send(Err(CommandError::Refused(why)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_proto::{CommandId, Instruction, Metric, Task, Timestamp};

    #[test]
    fn templates_need_a_device_level_and_no_wildcards() {
        let t = CommandTopic::parse("farm/{device}/cmd").unwrap();
        assert_eq!(t.topic(&DeviceId::new("pump-3").unwrap()), "farm/pump-3/cmd");
        assert!(matches!(CommandTopic::parse("farm/cmd"), Err(TemplateError::NoDevice(_))));
        assert!(matches!(CommandTopic::parse("farm/{device}/#"), Err(TemplateError::Wildcard(_))));
        assert!(matches!(
            CommandTopic::parse("farm/{device}/{metric}"),
            Err(TemplateError::OtherPlaceholder(_))
        ));
        assert!(matches!(CommandTopic::parse("farm/x{device}"), Err(TemplateError::NoDevice(_))));
    }

    #[test]
    fn commands_encode_as_flat_json() {
        let created = Timestamp::parse_rfc3339("2026-11-24T08:30:00Z").unwrap();
        let set = Command {
            id: CommandId::new("c-17"),
            device: DeviceId::new("pump-3").unwrap(),
            created,
            action: Action::Set { metric: Metric::new("target_rpm").unwrap(), value: 1200.0 },
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&set)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "c-17", "device": "pump-3", "created": "2026-11-24T08:30:00.000000000Z",
                               "action": "set", "metric": "target_rpm", "value": 1200.0})
        );
        let instruct = Command {
            action: Action::Instruct(Instruction {
                task: Task::Serve,
                target: Some(DeviceId::new("combine-1").unwrap()),
                due: None,
                note: "combine-1 full in 12 min".into(),
            }),
            ..set
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&instruct)).unwrap();
        assert_eq!(
            (&v["action"], &v["task"], &v["target"]),
            (&"instruct".into(), &"serve".into(), &"combine-1".into())
        );
        assert!(v.get("due").is_none());
    }

    #[test]
    fn acknowledgements_find_their_command_by_packet_id_and_resends_are_ignored() {
        let tracker = Tracker::default();
        let (a, mut a_rx) = oneshot::channel();
        let (b, mut b_rx) = oneshot::channel();
        tracker.queued(a);
        tracker.queued(b);
        tracker.published(1);
        tracker.published(1); // re-sent after a reconnect: still command a
        tracker.published(2);
        tracker.acknowledged(2);
        assert_eq!(b_rx.try_recv().unwrap(), Ok(()));
        assert!(a_rx.try_recv().is_err(), "a is not acknowledged yet");
        tracker.acknowledged(1);
        assert_eq!(a_rx.try_recv().unwrap(), Ok(()));
    }
}
