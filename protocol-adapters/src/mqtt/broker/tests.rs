//! The embedded broker against raw MQTT clients over real TCP: what is acknowledged when, what
//! is routed where, and what is refused. The store is played by the test, which confirms
//! submissions when it chooses.

use super::*;
use crate::mqtt::payload::PayloadFormat;
use crate::mqtt::payload::tests::mapping;
use fieldgate_proto::ingest::{Durable, Submission, SubmissionReceiver};
use prometheus_client::registry::Registry;
use rumqttc::{Connect, LastWill, Login, PubRel, Subscribe};

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    addr: SocketAddr,
    broker: Broker,
    submissions: SubmissionReceiver,
    metrics: AdapterMetrics,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn settings() -> BrokerSettings {
    BrokerSettings {
        username: None,
        password: None,
        max_packet: 64 * 1024,
        max_inflight: 4,
        max_queued: 100,
        mappings: vec![mapping("sensors/{device}/{metric}", PayloadFormat::Number)],
    }
}

async fn start(settings: BrokerSettings) -> Harness {
    let (sink, submissions) = ReadingSink::channel(100);
    let metrics = AdapterMetrics::register(&mut Registry::default());
    let broker = Broker::new(settings, sink, metrics.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        async move { broker.serve(listener, shutdown).await }
    });
    Harness { addr, broker, submissions, metrics, shutdown, server }
}

impl Harness {
    async fn submission(&mut self) -> Submission {
        tokio::time::timeout(WAIT, self.submissions.recv()).await.expect("a submission").expect("open")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}

fn confirm(s: Submission) {
    s.ack.expect("wants an ack").send(Ok(Durable { seq: 1 })).unwrap();
}

/// A bare MQTT client: sends and receives whole packets, nothing more.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        Raw { stream: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    async fn connect(addr: SocketAddr, id: &str, clean: bool) -> (Raw, ConnAck) {
        let mut c = Connect::new(id);
        c.clean_session = clean;
        Raw::connect_with(addr, c).await
    }

    async fn connect_with(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr).await;
        raw.send(Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, usize::MAX).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` once the broker closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.buf, usize::MAX) {
                    Ok(p) => return Some(p),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("broker sent garbage: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the broker answered in time")
    }

    /// Nothing has arrived (and nothing is buffered) right now.
    fn nothing_yet(&mut self) -> bool {
        let mut scratch = [0u8; 64];
        self.buf.is_empty()
            && matches!(self.stream.try_read(&mut scratch), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, pkid: u16) {
        let mut p = Publish::new(topic, qos, payload.as_bytes().to_vec());
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await;
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        let mut s = Subscribe::new(filter, qos);
        s.pkid = 1;
        self.send(Packet::Subscribe(s)).await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_publish_is_acknowledged_only_once_durable_and_in_order() {
    let mut h = start(settings()).await;
    let (mut dev, ack) = Raw::connect(h.addr, "probe-1", true).await;
    assert_eq!((ack.code, ack.session_present), (ConnectReturnCode::Success, false));
    dev.publish("sensors/probe-1/moisture", "31.5", QoS::AtLeastOnce, 1).await;
    dev.publish("sensors/probe-1/moisture", "31.7", QoS::AtLeastOnce, 2).await;
    let first = h.submission().await;
    let second = h.submission().await;
    assert_eq!(first.readings[0].value, 31.5);
    assert_eq!(second.readings[0].metric.as_str(), "moisture");
    assert!(dev.nothing_yet(), "no PUBACK before the store confirmed");
    // The second is durable first, but MQTT acknowledges in order: still nothing.
    confirm(second);
    assert!(dev.nothing_yet(), "no PUBACK for 2 before 1");
    confirm(first);
    assert_eq!(dev.recv().await, Some(Packet::PubAck(PubAck::new(1))));
    assert_eq!(dev.recv().await, Some(Packet::PubAck(PubAck::new(2))));
    h.stop().await;
}

#[tokio::test]
async fn a_store_failure_leaves_the_message_unacknowledged() {
    let mut h = start(settings()).await;
    let (mut dev, _) = Raw::connect(h.addr, "probe-1", true).await;
    dev.publish("sensors/probe-1/moisture", "1", QoS::AtLeastOnce, 1).await;
    let s = h.submission().await;
    s.ack.unwrap().send(Err(IngestError::Closed)).unwrap();
    // The connection is closed without a PUBACK: the device will send it again.
    assert_eq!(dev.recv().await, None);
    h.stop().await;
}

#[tokio::test]
async fn a_qos2_message_is_ingested_once_however_often_it_is_sent() {
    let mut h = start(settings()).await;
    let (mut dev, _) = Raw::connect(h.addr, "probe-1", true).await;
    dev.publish("sensors/probe-1/moisture", "5", QoS::ExactlyOnce, 7).await;
    let mut again = Publish::new("sensors/probe-1/moisture", QoS::ExactlyOnce, b"5".to_vec());
    again.pkid = 7;
    again.dup = true;
    dev.send(Packet::Publish(again)).await;
    confirm(h.submission().await);
    assert_eq!(dev.recv().await, Some(Packet::PubRec(PubRec::new(7))));
    assert_eq!(dev.recv().await, Some(Packet::PubRec(PubRec::new(7))));
    dev.send(Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(dev.recv().await, Some(Packet::PubComp(PubComp::new(7))));
    assert!(h.submissions.try_recv().is_err(), "the re-sent message was not ingested again");
    h.stop().await;
}

#[tokio::test]
async fn messages_reach_subscribers_with_retained_ones_and_wills() {
    let h = start(settings()).await;
    let (mut watcher, _) = Raw::connect(h.addr, "dashboard", true).await;
    let granted = watcher.subscribe("site/#", QoS::ExactlyOnce).await;
    assert_eq!(
        granted.return_codes,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "QoS 2 is granted as 1"
    );

    // A retained status, routed now and kept for later subscribers.
    let (mut pump, _) = Raw::connect(h.addr, "pump-3", true).await;
    let mut status = Publish::new("site/pump-3/status", QoS::AtLeastOnce, b"running".to_vec());
    status.retain = true;
    status.pkid = 1;
    pump.send(Packet::Publish(status)).await;
    assert_eq!(pump.recv().await, Some(Packet::PubAck(PubAck::new(1))), "routed topics are acked at once");
    let got = watcher.expect_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        ("site/pump-3/status", &b"running"[..], false)
    );
    watcher.send(Packet::PubAck(PubAck::new(got.pkid))).await;

    let (mut late, _) = Raw::connect(h.addr, "phone", true).await;
    late.subscribe("site/+/status", QoS::AtMostOnce).await;
    let kept = late.expect_publish().await;
    assert_eq!((kept.topic.as_str(), kept.retain, kept.qos), ("site/pump-3/status", true, QoS::AtMostOnce));

    // A device that vanishes without DISCONNECT has its will sent.
    let mut c = Connect::new("gate-1");
    c.last_will = Some(LastWill::new("site/gate-1/online", "false", QoS::AtLeastOnce, false));
    let (gate, _) = Raw::connect_with(h.addr, c).await;
    drop(gate);
    let will = watcher.expect_publish().await;
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("site/gate-1/online", &b"false"[..]));

    // Nobody subscribed and no mapping: counted as an unknown topic.
    pump.publish("nowhere/x", "1", QoS::AtLeastOnce, 2).await;
    assert_eq!(pump.recv().await, Some(Packet::PubAck(PubAck::new(2))));
    let unknown = h
        .metrics
        .inputs_rejected
        .get_or_create(&crate::metrics::InputLabels { source: "mqtt", reason: "unknown_topic" })
        .get();
    assert_eq!(unknown, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_persistent_session_gets_what_was_sent_while_it_was_away() {
    let h = start(settings()).await;
    let (mut tractor, ack) = Raw::connect(h.addr, "tractor-2", false).await;
    assert!(!ack.session_present);
    tractor.subscribe("cmd/tractor-2", QoS::AtLeastOnce).await;
    tractor.send(Packet::Disconnect).await;
    assert_eq!(tractor.recv().await, None);

    // A command for the tractor while it is out of range: held for its session.
    let mut sent = h.broker.send("cmd/tractor-2", Bytes::from_static(b"{\"goto\":\"field-7\"}"));
    assert_eq!((sent.online, sent.offline), (0, 1));
    let (mut tractor, ack) = Raw::connect(h.addr, "tractor-2", false).await;
    assert!(ack.session_present);
    let cmd = tractor.expect_publish().await;
    assert_eq!(&cmd.payload[..], b"{\"goto\":\"field-7\"}");

    // Not acknowledged before the link drops: sent again, marked DUP, on the next connection.
    drop(tractor);
    let (mut tractor, _) = Raw::connect(h.addr, "tractor-2", false).await;
    let again = tractor.expect_publish().await;
    assert!(again.dup);
    assert_eq!(again.payload, cmd.payload);
    assert!(sent.delivered.try_recv().is_err(), "not acknowledged yet");
    tractor.send(Packet::PubAck(PubAck::new(again.pkid))).await;
    assert_eq!(sent.delivered.recv().await, Some(()), "the sender hears of the acknowledgement");

    // A clean session forgets it all.
    tractor.send(Packet::Disconnect).await;
    let (_, ack) = Raw::connect(h.addr, "tractor-2", true).await;
    assert!(!ack.session_present);
    let sent = h.broker.send("cmd/tractor-2", Bytes::from_static(b"x"));
    assert_eq!((sent.online, sent.offline), (0, 0));
    h.stop().await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_id_takes_over() {
    let h = start(settings()).await;
    let (mut first, _) = Raw::connect(h.addr, "combine-1", false).await;
    first.subscribe("cmd/combine-1", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect(h.addr, "combine-1", false).await;
    assert!(ack.session_present);
    assert_eq!(first.recv().await, None, "the old connection is closed");
    assert_eq!(h.broker.send("cmd/combine-1", Bytes::from_static(b"unload")).online, 1);
    assert_eq!(&second.expect_publish().await.payload[..], b"unload");
    h.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_gets_at_most_the_in_flight_window_and_the_rest_queued() {
    let mut s = settings();
    s.max_inflight = 2;
    s.max_queued = 3;
    let h = start(s).await;
    let (mut slow, _) = Raw::connect(h.addr, "slow", true).await;
    slow.subscribe("t", QoS::AtLeastOnce).await;
    for i in 0..10u8 {
        h.broker.send("t", Bytes::from(vec![b'0' + i]));
    }
    let a = slow.expect_publish().await;
    let b = slow.expect_publish().await;
    assert!(slow.nothing_yet(), "no third message while two are unacknowledged");
    slow.send(Packet::PubAck(PubAck::new(a.pkid))).await;
    slow.send(Packet::PubAck(PubAck::new(b.pkid))).await;
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let p = slow.expect_publish().await;
        slow.send(Packet::PubAck(PubAck::new(p.pkid))).await;
        rest.push(p.payload[0]);
    }
    // 2 in flight + 3 queued were kept, in order; the other 5 were dropped and counted.
    assert_eq!((a.payload[0], b.payload[0], rest), (b'0', b'1', vec![b'2', b'3', b'4']));
    assert_eq!(h.metrics.mqtt_dropped.get(), 5);
    h.stop().await;
}

#[tokio::test]
async fn wrong_credentials_other_protocol_versions_and_garbage_are_refused() {
    let mut s = settings();
    s.username = Some("farm".into());
    s.password = Some("s3cret".into());
    let h = start(s).await;
    let (_, ack) = Raw::connect(h.addr, "anon", true).await;
    assert_eq!(ack.code, ConnectReturnCode::BadUserNamePassword);
    let mut c = Connect::new("wrong");
    c.login = Some(Login::new("farm", "guess"));
    assert_eq!(Raw::connect_with(h.addr, c).await.1.code, ConnectReturnCode::BadUserNamePassword);
    let mut c = Connect::new("right");
    c.login = Some(Login::new("farm", "s3cret"));
    assert_eq!(Raw::connect_with(h.addr, c).await.1.code, ConnectReturnCode::Success);

    let mut c = Connect::new("v5-device");
    c.protocol = mqttbytes::Protocol::V5;
    c.login = Some(Login::new("farm", "s3cret"));
    assert_eq!(Raw::connect_with(h.addr, c).await.1.code, ConnectReturnCode::RefusedProtocolVersion);

    // Not MQTT at all: the connection is closed and counted.
    let mut junk = Raw::open(h.addr).await;
    junk.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(junk.recv().await, None);
    h.stop().await;
}

#[tokio::test]
async fn a_client_silent_past_its_keep_alive_is_dropped() {
    let h = start(settings()).await;
    let (mut watcher, _) = Raw::connect(h.addr, "watcher", true).await;
    watcher.subscribe("status/#", QoS::AtMostOnce).await;
    let mut c = Connect::new("sleepy");
    c.keep_alive = 1;
    c.last_will = Some(LastWill::new("status/sleepy", "gone", QoS::AtMostOnce, false));
    let (mut sleepy, _) = Raw::connect_with(h.addr, c).await;
    // After 1.5 s of silence the broker closes the connection and sends the will.
    assert_eq!(sleepy.recv().await, None);
    assert_eq!(&watcher.expect_publish().await.payload[..], b"gone");
    h.stop().await;
}

#[test]
fn filters_match_like_the_spec_says() {
    assert!(filter_matches("a/+/c", "a/b/c"));
    assert!(!filter_matches("a/+/c", "a/b/d"));
    assert!(filter_matches("a/#", "a"));
    assert!(filter_matches("a/#", "a/b/c"));
    assert!(filter_matches("#", "a/b"));
    assert!(!filter_matches("#", "$SYS/x"));
    assert!(!filter_matches("+/x", "$SYS/x"));
    assert!(filter_matches("$SYS/x", "$SYS/x"));
    assert!(filter_matches("+", ""));
    assert!(!filter_matches("a/b", "a/b/c"));
    assert!(!filter_matches("a/b/c", "a/b"));
    assert!(filter_matches("a//c", "a//c"));
}
