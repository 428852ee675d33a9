//! Simulated LoRaWAN: class A end devices (OTAA or ABP) that build their frames with the same
//! pure code the gateway reads them with, and a packet forwarder that carries them to the
//! gateway over the Semtech UDP protocol (version 2) as a concentrator would.

use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::gwmp::{self, DataRate, Downstream, Eui64, Rxpk, Txpk};
use fieldgate_adapters::lorawan::join;
use fieldgate_adapters::lorawan::mac::{self, Frame, FrameError, SessionKeys, Uplink};
use fieldgate_proto::{Metric, Timestamp};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// A class A end device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub dev_eui: Eui64,
    pub join_eui: Eui64,
    pub app_key: [u8; 16],
    pub codec: Codec,
    /// Address and keys once joined (or from the start, for ABP).
    pub session: Option<(u32, SessionKeys)>,
    /// The counter of the next uplink.
    pub fcnt_up: u32,
    next_nonce: u16,
    pending_nonce: Option<u16>,
    last_down: Option<u32>,
}

impl Device {
    /// A device that joins over the air; `first_nonce` is its first DevNonce.
    pub fn otaa(id: &str, dev_eui: Eui64, app_key: [u8; 16], codec: Codec, first_nonce: u16) -> Self {
        Device {
            id: id.to_owned(),
            dev_eui,
            join_eui: Eui64([0; 8]),
            app_key,
            codec,
            session: None,
            fcnt_up: 0,
            next_nonce: first_nonce,
            pending_nonce: None,
            last_down: None,
        }
    }

    /// A device personalised with an address and session keys.
    pub fn abp(id: &str, dev_eui: Eui64, dev_addr: u32, keys: SessionKeys, codec: Codec) -> Self {
        let mut d = Device::otaa(id, dev_eui, [0; 16], codec, 0);
        d.session = Some((dev_addr, keys));
        d
    }

    /// The next JoinRequest (each with a fresh DevNonce).
    pub fn join_request(&mut self) -> Vec<u8> {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.pending_nonce = Some(nonce);
        join::request(self.join_eui, self.dev_eui, nonce, &self.app_key)
    }

    /// Take the JoinAccept answering the last JoinRequest: the device has a session.
    pub fn join_accept(&mut self, phy: &[u8]) -> Result<u32, FrameError> {
        let nonce = self.pending_nonce.ok_or(FrameError::NotDataUplink("join accept without a request"))?;
        let (addr, keys) = join::open_accept(phy, &self.app_key, nonce)?;
        self.session = Some((addr, keys));
        self.fcnt_up = 0;
        self.last_down = None;
        Ok(addr)
    }

    /// The next uplink carrying `values`, encoded with the device's codec.
    pub fn uplink(&mut self, values: &[(Metric, f64)], port: u8, confirmed: bool) -> Vec<u8> {
        let payload = self.codec.encode(values).expect("the simulated values fit the codec");
        self.frame(&payload, &[], Some(port), confirmed)
    }

    fn frame(&mut self, payload: &[u8], f_opts: &[u8], f_port: Option<u8>, confirmed: bool) -> Vec<u8> {
        let (dev_addr, keys) = self.session.clone().expect("joined or personalised");
        let frame = Frame {
            dev_addr,
            fcnt: self.fcnt_up,
            uplink: true,
            confirmed,
            adr: true,
            f_opts,
            f_port,
            payload,
            ..Frame::default()
        };
        self.fcnt_up += 1;
        mac::build(&frame, &keys).expect("a frame within limits")
    }

    /// Read a downlink addressed to this device (its counter must move forward).
    pub fn downlink(&mut self, phy: &[u8]) -> Result<Uplink, FrameError> {
        let (_, keys) = self.session.as_ref().ok_or(FrameError::BadMic)?;
        let down = mac::verify_downlink(phy, keys, self.last_down)?;
        self.last_down = Some(down.fcnt);
        Ok(down)
    }
}

/// `phy` as a concentrator reports it: heard at `tmst` on 868.1 MHz, SF7BW125, CRC good.
pub fn received(phy: &[u8], tmst: u32, rssi: i32, snr: f64) -> Rxpk {
    Rxpk {
        tmst,
        time: None,
        freq: 868.1,
        chan: Some(0),
        rfch: Some(0),
        stat: 1,
        modu: "LORA".into(),
        datr: DataRate::Lora("SF7BW125".into()),
        codr: Some("4/5".into()),
        rssi,
        lsnr: Some(snr),
        data: phy.to_vec(),
    }
}

/// A concentrator running the packet forwarder (protocol version 2), on one UDP socket.
#[derive(Debug)]
pub struct Forwarder {
    pub eui: Eui64,
    socket: UdpSocket,
    token: u16,
    /// The concentrator's microsecond counter, advanced per packet.
    tmst: u32,
    /// Datagrams received and not yet asked for.
    inbox: VecDeque<Downstream>,
    /// Answer PULL_RESPs with this TX_ACK error (`None`: sent).
    pub tx_error: Option<String>,
    /// PUSH_DATA tokens sent by [`Forwarder::push_unwaited`] and not acknowledged yet.
    unacked: std::collections::HashSet<u16>,
}

impl Forwarder {
    /// A forwarder on a loopback port of its own, sending to `server`.
    pub async fn connect(eui: Eui64, server: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind((server.ip(), 0)).await?;
        socket.connect(server).await?;
        Ok(Forwarder {
            eui,
            socket,
            token: 0,
            tmst: 1_000_000,
            inbox: VecDeque::new(),
            tx_error: None,
            unacked: Default::default(),
        })
    }

    fn next_token(&mut self) -> u16 {
        self.token = self.token.wrapping_add(1);
        self.token
    }

    /// Send PULL_DATA (opening the downlink path) and wait for its PULL_ACK.
    pub async fn pull(&mut self, timeout: Duration) -> io::Result<()> {
        let token = self.next_token();
        self.socket.send(&gwmp::pull_data(2, token, self.eui)).await?;
        self.wait(timeout, |d| matches!(d, Downstream::PullAck { token: t, .. } if *t == token))
            .await
            .map(|_| ())
    }

    /// Send one packet as heard with `rssi`/`snr`; returns the PUSH_DATA's token and the
    /// packet as sent.
    pub async fn push(&mut self, phy: &[u8], rssi: i32, snr: f64) -> io::Result<(u16, Rxpk)> {
        self.push_heard_at(phy, rssi, snr, None).await
    }

    /// [`Forwarder::push`], as a concentrator with GPS time reports it: heard at `time`.
    pub async fn push_heard_at(
        &mut self,
        phy: &[u8],
        rssi: i32,
        snr: f64,
        time: Option<Timestamp>,
    ) -> io::Result<(u16, Rxpk)> {
        self.tmst = self.tmst.wrapping_add(1_000_003);
        let mut rxpk = received(phy, self.tmst, rssi, snr);
        rxpk.time = time.map(|t| t.to_string());
        let token = self.next_token();
        self.socket.send(&gwmp::push_data(2, token, self.eui, std::slice::from_ref(&rxpk))).await?;
        Ok((token, rxpk))
    }

    /// Join `device` over the air: a JoinRequest, its PUSH_ACK and the JoinAccept, up to
    /// `attempts` times.
    pub async fn join(&mut self, device: &mut Device, attempts: usize, timeout: Duration) -> io::Result<()> {
        for _ in 0..attempts {
            let request = device.join_request();
            let (token, _) = self.push(&request, -80, 7.0).await?;
            self.push_ack(token, timeout).await?;
            if let Ok(accept) = self.pull_resp(timeout).await
                && device.join_accept(&accept.data).is_ok()
            {
                return Ok(());
            }
        }
        Err(io::Error::other(format!("{} could not join the network server", device.id)))
    }

    /// Send a packet without waiting for its PUSH_ACK (which comes once the gateway made the
    /// readings durable), for devices that keep a schedule; [`Forwarder::unacknowledged`]
    /// counts what never came. Downlinks are read and dropped: the caller's devices act on
    /// none.
    pub async fn push_unwaited(
        &mut self,
        phy: &[u8],
        rssi: i32,
        snr: f64,
        time: Option<Timestamp>,
        timeout: Duration,
    ) -> io::Result<()> {
        let (token, _) = self.push_heard_at(phy, rssi, snr, time).await?;
        self.unacked.insert(token);
        for acked in self.take_push_acks() {
            self.unacked.remove(&acked);
        }
        while self.has_pull_resp() {
            let _ = self.pull_resp(timeout).await?;
        }
        Ok(())
    }

    /// Wait up to `timeout` for each acknowledgement still due from
    /// [`Forwarder::push_unwaited`]; how many never came.
    pub async fn unacknowledged(&mut self, timeout: Duration) -> u64 {
        let mut missing = 0;
        for token in std::mem::take(&mut self.unacked) {
            if self.push_ack(token, timeout).await.is_err() {
                missing += 1;
            }
        }
        missing
    }

    /// Report statistics (as forwarders do every 30 s) and wait for the PUSH_ACK.
    pub async fn stat(&mut self, stat: &gwmp::Stat, timeout: Duration) -> io::Result<()> {
        let token = self.next_token();
        self.socket.send(&gwmp::push_stat(2, token, self.eui, stat)).await?;
        self.push_ack(token, timeout).await
    }

    /// Send raw bytes (tests of bad input).
    pub async fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.socket.send(bytes).await.map(|_| ())
    }

    /// Wait for the PUSH_ACK of `token` (the gateway has made the packet's readings durable).
    pub async fn push_ack(&mut self, token: u16, timeout: Duration) -> io::Result<()> {
        self.wait(timeout, |d| matches!(d, Downstream::PushAck { token: t, .. } if *t == token))
            .await
            .map(|_| ())
    }

    /// Wait for the next PULL_RESP (a downlink to transmit); it is answered with a TX_ACK.
    pub async fn pull_resp(&mut self, timeout: Duration) -> io::Result<Txpk> {
        match self.wait(timeout, |d| matches!(d, Downstream::PullResp { .. })).await? {
            Downstream::PullResp { txpk, .. } => Ok(txpk),
            _ => unreachable!("matched above"),
        }
    }

    /// The tokens of every PUSH_ACK received so far and not yet asked for, without waiting
    /// (what arrived before the gateway went away).
    pub fn take_push_acks(&mut self) -> Vec<u16> {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        // Read the socket directly: tokio's `try_recv` answers "would block" until its reactor
        // has seen the socket readable, even with datagrams waiting.
        let socket = socket2::SockRef::from(&self.socket);
        loop {
            match (&*socket).read(&mut buf) {
                Ok(len) => {
                    if let Ok(down) = gwmp::decode_downstream(&buf[..len]) {
                        self.inbox.push_back(down);
                    }
                }
                // The gateway's port closed (an ICMP error, reported once): read on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(_) => break,
            }
        }
        let mut tokens = Vec::new();
        self.inbox.retain(|d| match d {
            Downstream::PushAck { token, .. } => {
                tokens.push(*token);
                false
            }
            _ => true,
        });
        tokens
    }

    /// Whether a PULL_RESP has arrived and not been taken yet (after a PUSH_ACK that followed
    /// it, this says there was no downlink).
    pub fn has_pull_resp(&self) -> bool {
        self.inbox.iter().any(|d| matches!(d, Downstream::PullResp { .. }))
    }

    async fn wait(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Downstream) -> bool,
    ) -> io::Result<Downstream> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.inbox.iter().position(&want) {
                return Ok(self.inbox.remove(i).expect("found"));
            }
            let mut buf = [0u8; 4096];
            let len = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the gateway"))??;
            let down = gwmp::decode_downstream(&buf[..len]).map_err(io::Error::other)?;
            if let Downstream::PullResp { version, token, .. } = &down {
                let ack = gwmp::tx_ack(*version, *token, self.eui, self.tx_error.as_deref());
                self.socket.send(&ack).await?;
            }
            self.inbox.push_back(down);
        }
    }
}
