//! Any datagram, either way: the server's decoder of what forwarders send, and field-sim's of
//! what the server sends. Neither may panic; a PUSH_DATA that decodes re-encodes to one that
//! decodes to the same packets.
#![no_main]

use fieldgate_adapters::lorawan::gwmp::{self, Upstream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gwmp::decode_downstream(data);
    if let Ok(Upstream::PushData { version, token, gateway, data }) = gwmp::decode(data) {
        let packets: Vec<_> = data.rxpk.into_iter().filter_map(Result::ok).collect();
        let again = gwmp::push_data(version, token, gateway, &packets);
        match gwmp::decode(&again) {
            Ok(Upstream::PushData { data, .. }) => {
                assert_eq!(data.rxpk.len(), packets.len());
            }
            other => panic!("a re-encoded PUSH_DATA did not decode: {other:?}"),
        }
    }
});
