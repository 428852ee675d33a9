//! Class A receive windows by region (LoRaWAN Regional Parameters RP002-1.0.x): where and when
//! a downlink answering an uplink goes.
//!
//! A class A device listens twice after each uplink: RX1, `RECEIVE_DELAY1` (1 s, or 5 s after
//! a JoinRequest) after the end of the uplink, on a channel and rate derived from the uplink's;
//! and RX2, one second later, on a fixed channel and rate. The concentrator times its
//! transmission on its own microsecond counter, so a downlink is `tmst` of the uplink plus the
//! delay. Only EU868 and US915 are known so far; the config refuses others.

use super::gwmp::{DataRate, Rxpk, Txpk};
use std::time::Duration;

/// Delay from the end of an uplink to RX1, for data frames and for JoinAccepts.
pub const RECEIVE_DELAY1: Duration = Duration::from_secs(1);
pub const JOIN_ACCEPT_DELAY1: Duration = Duration::from_secs(5);
/// RX2 opens one second after RX1.
pub const RX2_AFTER_RX1: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Eu868,
    Us915,
}

/// Which receive window a downlink was scheduled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Rx1,
    Rx2,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Rx1 => "rx1",
            Window::Rx2 => "rx2",
        }
    }
}

impl Region {
    pub fn parse(name: &str) -> Option<Region> {
        match name.to_ascii_uppercase().as_str() {
            "EU868" => Some(Region::Eu868),
            "US915" => Some(Region::Us915),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Eu868 => "EU868",
            Region::Us915 => "US915",
        }
    }

    /// RX2's frequency (MHz) and data rate, as the JoinAccept's DLSettings announce them.
    pub fn rx2(self) -> (f64, &'static str) {
        match self {
            Region::Eu868 => (869.525, "SF12BW125"),
            Region::Us915 => (923.3, "SF12BW500"),
        }
    }

    /// The RX2 data rate index for DLSettings (RX1 offset 0).
    pub fn dl_settings(self) -> u8 {
        match self {
            Region::Eu868 => 0,
            Region::Us915 => 8,
        }
    }

    /// Transmit power for downlinks, in dBm (within each region's limits for the channels used).
    pub fn power(self) -> u8 {
        match self {
            Region::Eu868 => 14,
            Region::Us915 => 20,
        }
    }

    /// RX1's frequency and data rate for an uplink heard at `freq` with `datr`.
    pub fn rx1(self, freq: f64, datr: &DataRate) -> Option<(f64, String)> {
        let DataRate::Lora(dr) = datr else { return None };
        match self {
            Region::Eu868 => Some((freq, dr.clone())),
            Region::Us915 => {
                let channel = if dr.ends_with("BW500") {
                    64 + ((freq - 903.0) / 1.6).round() as i64
                } else {
                    ((freq - 902.3) / 0.2).round() as i64
                };
                if !(0..72).contains(&channel) {
                    return None;
                }
                let down = match dr.as_str() {
                    "SF10BW125" => "SF12BW500",
                    "SF9BW125" => "SF11BW500",
                    "SF8BW125" => "SF10BW500",
                    "SF7BW125" | "SF8BW500" => "SF9BW500",
                    _ => return None,
                };
                Some((923.3 + 0.6 * (channel % 8) as f64, down.to_owned()))
            }
        }
    }

    /// The largest FRMPayload (with FOpts) a downlink at `datr` can carry.
    pub fn max_payload(self, datr: &str) -> usize {
        let sf = spreading_factor(datr).unwrap_or(12);
        match (self, datr.ends_with("BW500")) {
            (Region::Eu868, _) if sf >= 10 => 51,
            (Region::Eu868, _) if sf == 9 => 115,
            (Region::Eu868, _) => 222,
            (Region::Us915, _) if sf >= 12 => 33,
            (Region::Us915, _) if sf == 11 => 109,
            (Region::Us915, _) => 222,
        }
    }

    /// The txpk answering `up`, `elapsed` after it was heard, or `None` when both windows are
    /// too close (or past) for the PULL_RESP to reach the concentrator `lead` ahead of them.
    pub fn schedule(
        self,
        up: &Rxpk,
        rx1_delay: Duration,
        elapsed: Duration,
        lead: Duration,
        data: Vec<u8>,
    ) -> Option<(Window, Txpk)> {
        let (window, delay, freq, datr) = if elapsed + lead <= rx1_delay
            && let Some((freq, dr)) = self.rx1(up.freq, &up.datr)
        {
            (Window::Rx1, rx1_delay, freq, dr)
        } else if elapsed + lead <= rx1_delay + RX2_AFTER_RX1 {
            let (freq, dr) = self.rx2();
            (Window::Rx2, rx1_delay + RX2_AFTER_RX1, freq, dr.to_owned())
        } else {
            return None;
        };
        let tmst = up.tmst.wrapping_add(delay.as_micros() as u32);
        let txpk = Txpk {
            imme: false,
            tmst: Some(tmst),
            freq,
            rfch: 0,
            powe: self.power(),
            datr: DataRate::Lora(datr),
            codr: "4/5".to_owned(),
            ipol: true,
            data,
        };
        Some((window, txpk))
    }
}

/// The spreading factor of a LoRa data rate such as `SF9BW125`.
pub fn spreading_factor(datr: &str) -> Option<u8> {
    datr.strip_prefix("SF")?.split("BW").next()?.parse().ok()
}

/// The SNR (dB) below which a LoRa receiver cannot demodulate at a spreading factor: the
/// reference for the margin a LinkCheckAns reports.
pub fn demodulation_floor(sf: u8) -> f64 {
    match sf {
        7 => -7.5,
        8 => -10.0,
        9 => -12.5,
        10 => -15.0,
        11 => -17.5,
        _ => -20.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rxpk(freq: f64, datr: &str, tmst: u32) -> Rxpk {
        Rxpk {
            tmst,
            time: None,
            freq,
            chan: None,
            rfch: None,
            stat: 1,
            modu: "LORA".into(),
            datr: DataRate::Lora(datr.into()),
            codr: None,
            rssi: -80,
            lsnr: Some(5.0),
            data: vec![],
        }
    }

    #[test]
    fn rx1_follows_the_uplink_and_rx2_is_fixed() {
        let up = rxpk(868.3, "SF9BW125", 4_294_000_000);
        let (w, tx) = Region::Eu868
            .schedule(&up, RECEIVE_DELAY1, Duration::from_millis(300), Duration::from_millis(100), vec![1])
            .unwrap();
        assert_eq!((w, tx.freq, tx.datr.clone()), (Window::Rx1, 868.3, DataRate::Lora("SF9BW125".into())));
        assert_eq!(tx.tmst, Some(4_294_000_000u32.wrapping_add(1_000_000)), "the counter wraps");
        assert!(tx.ipol && !tx.imme);
        let (w, tx) = Region::Eu868
            .schedule(&up, RECEIVE_DELAY1, Duration::from_millis(950), Duration::from_millis(100), vec![1])
            .unwrap();
        assert_eq!((w, tx.freq, tx.tmst), (Window::Rx2, 869.525, Some(up.tmst.wrapping_add(2_000_000))));
        assert!(
            Region::Eu868
                .schedule(
                    &up,
                    RECEIVE_DELAY1,
                    Duration::from_millis(1950),
                    Duration::from_millis(100),
                    vec![]
                )
                .is_none()
        );
        let (w, tx) = Region::Eu868
            .schedule(&up, JOIN_ACCEPT_DELAY1, Duration::from_secs(2), Duration::from_millis(100), vec![])
            .unwrap();
        assert_eq!((w, tx.tmst), (Window::Rx1, Some(up.tmst.wrapping_add(5_000_000))));
    }

    #[test]
    fn us915_maps_channels_and_rates() {
        // Uplink channel 9 (904.1 MHz) answers on downlink channel 1 (923.9 MHz).
        assert_eq!(
            Region::Us915.rx1(904.1, &DataRate::Lora("SF10BW125".into())),
            Some((923.9, "SF12BW500".into()))
        );
        assert_eq!(
            Region::Us915.rx1(903.0, &DataRate::Lora("SF8BW500".into())),
            Some((923.3, "SF9BW500".into()))
        );
        assert_eq!(Region::Us915.rx1(868.1, &DataRate::Lora("SF7BW125".into())), None);
        assert_eq!(Region::Eu868.max_payload("SF12BW125"), 51);
        assert_eq!(Region::Eu868.max_payload("SF7BW125"), 222);
        assert_eq!(Region::Us915.max_payload("SF12BW500"), 33);
    }
}
