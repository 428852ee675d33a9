//! Commands down to devices: the [`Dispatcher`] takes a [`Command`] (from the gRPC
//! `CommandService`, later from harvest coordination), finds the adapter of the device's
//! protocol and waits for the adapter's confirmation: an MQTT PUBACK, a Modbus write's answer,
//! or a LoRaWAN downlink queued (and saved) for the device's next uplink.
//!
//! A command id is executed once: a repeated id of a command that was accepted (delivered or
//! queued) answers `Duplicate` without sending anything, so a caller may retry a call whose
//! answer it lost. A failed command may be retried with the same id. The last
//! [`REMEMBERED`] accepted ids are kept, in memory.

use crate::live::LiveState;
use crate::metrics::{CommandLabels, GatewayMetrics};
use fieldgate_adapters::lorawan::adapter::LorawanCommands;
use fieldgate_adapters::modbus::WriteRequest;
use fieldgate_adapters::mqtt::MqttCommands;
use fieldgate_proto::{Action, Command, CommandError, CommandId, Delivery, DeviceId, Sent, Source};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot};

/// How many accepted command ids are remembered to refuse repeats.
pub const REMEMBERED: usize = 10_000;

/// Routes commands to the adapters.
#[derive(Debug)]
pub struct Dispatcher {
    live: LiveState,
    mqtt: Option<MqttCommands>,
    /// The write queue of the bus of each configured Modbus device.
    modbus: HashMap<DeviceId, mpsc::Sender<WriteRequest>>,
    lorawan: Option<LorawanCommands>,
    ids: Mutex<Ids>,
    metrics: GatewayMetrics,
}

#[derive(Debug, Default)]
struct Ids {
    /// Accepted ids, oldest first, and the same as a set.
    order: VecDeque<CommandId>,
    accepted: HashSet<CommandId>,
    /// Ids being sent now.
    sending: HashSet<CommandId>,
}

impl Dispatcher {
    pub fn new(
        live: LiveState,
        mqtt: Option<MqttCommands>,
        modbus: HashMap<DeviceId, mpsc::Sender<WriteRequest>>,
        lorawan: Option<LorawanCommands>,
        metrics: GatewayMetrics,
    ) -> Self {
        Dispatcher { live, mqtt, modbus, lorawan, ids: Mutex::default(), metrics }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deliver `command` through its device's adapter.
    pub async fn send(&self, command: Command) -> Result<Sent, CommandError> {
        // Configured devices first (their protocol is known before they answer), then those
        // heard from.
        let source = if self.modbus.contains_key(&command.device) {
            Source::Modbus
        } else if self.lorawan.as_ref().is_some_and(|l| l.knows(&command.device)) {
            Source::Lorawan
        } else if let Some(device) = self.live.device(&command.device) {
            device.source
        } else {
            return Err(CommandError::UnknownDevice(format!(
                "`{}` is not configured and has never sent a reading to this gateway",
                command.device
            )));
        };
        {
            let mut ids = self.ids();
            if ids.accepted.contains(&command.id) || !ids.sending.insert(command.id.clone()) {
                self.count(source, "duplicate");
                return Ok(Sent {
                    delivery: Delivery::Duplicate,
                    detail: format!("command `{}` was already accepted; nothing sent again", command.id),
                });
            }
        }
        // The id stops being "sending" however this call ends, also when the caller goes away
        // (a deadline, a dropped connection) and this future is dropped mid-send: otherwise a
        // retry with the same id would be answered DUPLICATE for a command never accepted.
        let _sending = Sending { dispatcher: self, id: &command.id };
        let outcome = match source {
            Source::Mqtt => match &self.mqtt {
                Some(mqtt) => mqtt.send(&command).await,
                None => Err(CommandError::Unreachable("MQTT is turned off in this gateway's config".into())),
            },
            Source::Modbus => self.modbus_write(&command).await,
            Source::Lorawan => match &self.lorawan {
                Some(lorawan) => lorawan.send(&command).await,
                None => {
                    Err(CommandError::Unreachable("LoRaWAN is turned off in this gateway's config".into()))
                }
            },
        };
        let mut ids = self.ids();
        match &outcome {
            Ok(sent) => {
                ids.accepted.insert(command.id.clone());
                ids.order.push_back(command.id.clone());
                if ids.order.len() > REMEMBERED {
                    let oldest = ids.order.pop_front().expect("not empty");
                    ids.accepted.remove(&oldest);
                }
                drop(ids);
                let outcome = if sent.delivery == Delivery::Queued { "queued" } else { "delivered" };
                self.count(source, outcome);
                tracing::info!(id = %command.id, device = %command.device, detail = %sent.detail, "command sent");
            }
            Err(e) => {
                drop(ids);
                self.count(source, "failed");
                tracing::warn!(id = %command.id, device = %command.device, error = %e, "command failed");
            }
        }
        outcome
    }

    /// A setpoint for a Modbus device becomes a write of its point, through its bus.
    async fn modbus_write(&self, command: &Command) -> Result<Sent, CommandError> {
        let Action::Set { metric, value } = &command.action else {
            return Err(CommandError::Unsupported(format!(
                "`{}` is a Modbus device: it takes setpoints (`set`), not operator instructions",
                command.device
            )));
        };
        let bus = self.modbus.get(&command.device).expect("checked by the caller");
        let (done, outcome) = oneshot::channel();
        let request =
            WriteRequest { device: command.device.clone(), metric: metric.clone(), value: *value, done };
        let stopped = || CommandError::Unreachable("the Modbus bus has stopped".to_owned());
        bus.send(request).await.map_err(|_| stopped())?;
        let detail = outcome.await.map_err(|_| stopped())??;
        Ok(Sent { delivery: Delivery::Delivered, detail })
    }

    fn count(&self, source: Source, outcome: &'static str) {
        self.metrics.commands.get_or_create(&CommandLabels { source: source.as_str(), outcome }).inc();
    }
}

/// Takes a command id out of the ids being sent when dropped.
struct Sending<'a> {
    dispatcher: &'a Dispatcher,
    id: &'a CommandId,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.dispatcher.ids().sending.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_proto::{Metric, Timestamp};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_send_cut_short_by_its_caller_can_be_retried_with_the_same_id() {
        let (tx, mut bus) = mpsc::channel(4);
        let device = DeviceId::new("pump-1").unwrap();
        let metrics = GatewayMetrics::register(&mut prometheus_client::registry::Registry::default());
        let dispatcher =
            Dispatcher::new(LiveState::default(), None, HashMap::from([(device.clone(), tx)]), None, metrics);
        let command = Command {
            id: CommandId::new("c-1"),
            device,
            created: Timestamp::now(),
            action: Action::Set { metric: Metric::new("speed").unwrap(), value: 3.0 },
        };
        // The bus takes the write and never answers; the caller gives up.
        let cut = tokio::time::timeout(Duration::from_secs(1), dispatcher.send(command.clone())).await;
        assert!(cut.is_err());
        let first = bus.recv().await.unwrap();
        // The retry is sent, not answered DUPLICATE.
        let retry = tokio::spawn({
            let dispatcher = std::sync::Arc::new(dispatcher);
            async move { dispatcher.send(command).await }
        });
        let second = bus.recv().await.unwrap();
        assert_eq!(second.device, first.device);
        second.done.send(Ok("written".to_owned())).unwrap();
        assert_eq!(retry.await.unwrap().unwrap().delivery, Delivery::Delivered);
    }
}
