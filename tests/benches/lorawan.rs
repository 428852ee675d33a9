//! LoRaWAN uplink throughput through a real gateway process: simulated packet forwarders send
//! PUSH_DATA datagrams (8 packets each, as a busy concentrator batches them) over loopback UDP
//! for a fleet of ABP devices; every uplink is parsed, deduplicated, its MIC verified, its
//! counter reserved in the saved sessions, decrypted, decoded (Cayenne LPP, three values) and
//! stored with its link metrics; a PUSH_ACK comes back once the readings are durable.
//!
//! Prints uplinks/s from the first datagram to the last PUSH_ACK, and uplinks per second of
//! the gateway's CPU time (the "on one core" figure), with its peak RSS.
//!
//! Run: `cargo build --release --bins && cargo bench -p fieldgate-tests --bench lorawan`
//! (`FG_BENCH_DEVICES`, `FG_BENCH_UPLINKS`, `FG_BENCH_FORWARDERS` change the fleet, the
//! number of uplinks sent, and the concentrators sending them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use field_sim::lora::{Device, received};
use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::gwmp::{self, Downstream, Eui64, Rxpk};
use fieldgate_adapters::lorawan::mac::SessionKeys;
use fieldgate_proto::Metric;
use fieldgate_tests::{
    GatewayProcess, bench_result, cpu_seconds, metric, rss_mib, wait_metric, write_config,
};
use std::net::SocketAddr;
use std::time::Instant;

/// Packets per PUSH_DATA, and PUSH_DATAs a forwarder keeps unacknowledged.
const PER_DATAGRAM: usize = 8;
const WINDOW: usize = 16;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn keys(i: usize) -> SessionKeys {
    let mut nwk = [0x11u8; 16];
    nwk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let mut app = [0x22u8; 16];
    app[..8].copy_from_slice(&(i as u64).to_le_bytes());
    SessionKeys { nwk_s_key: nwk, app_s_key: app }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let devices = env("FG_BENCH_DEVICES", 1000);
    let uplinks = env("FG_BENCH_UPLINKS", 200_000);
    let forwarders = env("FG_BENCH_FORWARDERS", 4);
    let dir = tempfile::tempdir().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp);
    // No deduplication wait: it adds latency, not work, and with it the number of datagrams in
    // flight (not the gateway) would set the rate. The socket's receive buffer holds ~200 KB.
    let mut config = format!("[lorawan]\nlisten = \"127.0.0.1:{port}\"\ndedup_window = \"0s\"\n");
    for i in 0..devices {
        let k = keys(i);
        config.push_str(&format!(
            "\n[[lorawan.device]]\nid = \"probe-{i:05}\"\ndev_eui = \"{:016x}\"\ndev_addr = \"{:08x}\"\nnwk_s_key = \"{}\"\napp_s_key = \"{}\"\n",
            0x00a0_0000_0000_0000u64 + i as u64,
            0x2600_0000 + i as u32,
            hex(&k.nwk_s_key),
            hex(&k.app_s_key)
        ));
    }
    let path = write_config(dir.path(), &config);
    let mut gw = GatewayProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
    let addr = gw.wait_started();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();

    // Every frame is made before the clock starts: the figure is the gateway's.
    let values = [
        (Metric::new("temperature_1").unwrap(), 12.5),
        (Metric::new("humidity_2").unwrap(), 61.0),
        (Metric::new("analog_input_3").unwrap(), 3.3),
    ];
    let mut fleet: Vec<Device> = (0..devices)
        .map(|i| {
            Device::abp(
                &format!("probe-{i:05}"),
                Eui64([0; 8]),
                0x2600_0000 + i as u32,
                keys(i),
                Codec::CayenneLpp,
            )
        })
        .collect();
    // Each device is heard by one concentrator, so its frames arrive in order (a device sends
    // every few minutes; frames of one device racing through two forwarders would be replays).
    let mut chunks: Vec<Vec<Vec<u8>>> = vec![Vec::new(); forwarders];
    for n in 0..uplinks {
        let device = n % devices;
        chunks[device % forwarders].push(fleet[device].uplink(&values, 1, false));
    }

    let cpu0 = cpu_seconds(gw.pid());
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (f, frames) in chunks.into_iter().enumerate() {
            tasks.spawn(forward(Eui64([0xfe, 0, 0, 0, 0, 0, 0, f as u8]), server, frames));
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(gw.pid()) - cpu0;
    let accepted = wait_metric(addr, "fieldgate_lorawan_uplinks_total", uplinks as f64);
    let rejected = metric(addr, "fieldgate_inputs_rejected_total{source=\"lorawan\"").unwrap_or(0.0);
    let rss = rss_mib(gw.pid(), "VmHWM:");
    gw.stop_cleanly();
    println!(
        "lorawan: {uplinks} uplinks of {devices} ABP devices through {forwarders} forwarders ({PER_DATAGRAM} per PUSH_DATA), \
         accepted {accepted}, rejected {rejected}"
    );
    println!(
        "lorawan: {:.0} uplinks/s acknowledged (durable), gateway CPU {cpu:.2} s = {:.0} uplinks per CPU-second, \
         {:.2} cores busy, peak RSS {rss:.1} MiB",
        uplinks as f64 / elapsed,
        uplinks as f64 / cpu,
        cpu / elapsed
    );
    bench_result(
        &format!(
            "LoRaWAN: {devices} ABP devices, {uplinks} uplinks (Cayenne LPP, 3 values each) from {forwarders} simulated packet forwarders over loopback UDP, {PER_DATAGRAM} per PUSH_DATA; each MIC-verified, counter saved, decrypted, decoded and stored, PUSH_ACK after the WAL"
        ),
        &format!(
            "{:.0} uplinks per gateway CPU-second (target 50,000 on one core), {:.0} uplinks/s end to end, peak RSS {rss:.1} MiB",
            uplinks as f64 / cpu,
            uplinks as f64 / elapsed
        ),
    );
}

/// One concentrator: send `frames` in PUSH_DATAs, at most [`WINDOW`] unacknowledged.
async fn forward(eui: Eui64, server: SocketAddr, frames: Vec<Vec<u8>>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    let datagrams: Vec<Vec<u8>> = frames
        .chunks(PER_DATAGRAM)
        .enumerate()
        .map(|(n, chunk)| {
            let packets: Vec<Rxpk> = chunk.iter().map(|phy| received(phy, n as u32, -80, 7.0)).collect();
            gwmp::push_data(2, n as u16, eui, &packets)
        })
        .collect();
    let (mut sent, mut acked) = (0, 0);
    let mut buf = [0u8; 64];
    while acked < datagrams.len() {
        while sent < datagrams.len() && sent - acked < WINDOW {
            socket.send(&datagrams[sent]).await.unwrap();
            sent += 1;
        }
        let len = tokio::time::timeout(std::time::Duration::from_secs(30), socket.recv(&mut buf))
            .await
            .expect("the gateway stopped acknowledging")
            .unwrap();
        if let Ok(Downstream::PushAck { .. }) = gwmp::decode_downstream(&buf[..len]) {
            acked += 1;
        }
    }
}
