// Makes vectors.json: LoRaWAN 1.0.x frames and keys computed by an independent implementation,
// the npm package lora-packet (0.9.3). fieldgate's tests check that its own code reads these
// frames and builds the same bytes.
//
//   cd "$(mktemp -d)" && npm install lora-packet@0.9.3 && \
//     NODE_PATH=$PWD/node_modules node /path/to/make-vectors.js > /path/to/vectors.json
const lora = require("lora-packet");

const hex = (s) => Buffer.from(s, "hex");
const appKey = hex("2b7e151628aed2a6abf7158809cf4f3c");
const joinEui = "70b3d57ed0000001";
const devEui = "0004a30b001c0530";
const devNonce = "1b2f";      // big-endian, as lora-packet shows it
const joinNonce = "00a3c5";
const netId = "000013";
const devAddr = "26011f3a";

// The device's JoinRequest.
const jr = lora.fromFields(
  { MType: "Join Request", AppEUI: hex(joinEui), DevEUI: hex(devEui), DevNonce: hex(devNonce) },
  null, null, appKey);

// The server's JoinAccept, encrypted with the AppKey as it goes on air (lora-packet encrypts
// when it is given the key), and its plaintext as lora-packet's decryptJoinAccept reads it.
const ja = lora.fromFields(
  { MType: "Join Accept", AppNonce: hex(joinNonce), NetID: hex(netId), DevAddr: hex(devAddr),
    DLSettings: 0, RxDelay: 1 },
  null, null, appKey);
const encrypted = ja.getPHYPayload();
const plain = lora.decryptJoinAccept(lora.fromWire(encrypted), appKey);

const keys = lora.generateSessionKeys10(appKey, hex(netId), hex(joinNonce), hex(devNonce));

// Data frames in the new session: a confirmed uplink past a 16-bit rollover (FCnt 70000, whose
// upper bytes enter the MIC), and a downlink that acknowledges it and carries a setpoint.
const fcntUp = 70000;
// The upper 16 bits of the counter, in wire (little-endian) order as lora-packet wants them.
const msb = Buffer.from([(fcntUp >>> 16) & 0xff, (fcntUp >>> 24) & 0xff]);
// lora-packet encrypts with the 16 bits of FCnt when it builds a frame, so the payload is
// encrypted here with the full counter (its decrypt takes the upper bytes) and the MIC
// recalculated with them.
const upFields = { MType: "Confirmed Data Up", DevAddr: hex(devAddr), FCtrl: { ADR: true },
  FCnt: fcntUp & 0xffff, FPort: 2 };
const upPayload = hex("03670110056700ff");
const cipher = lora.decrypt(lora.fromFields({ ...upFields, payload: upPayload }), keys.AppSKey, keys.NwkSKey, msb);
const up = lora.fromFields({ ...upFields, payload: cipher });
lora.recalculateMIC(up, keys.NwkSKey, null, msb);
if (!lora.decrypt(up, keys.AppSKey, keys.NwkSKey, msb).equals(upPayload)) throw new Error("uplink does not decrypt");
const down = lora.fromFields(
  { MType: "Unconfirmed Data Down", DevAddr: hex(devAddr), FCtrl: { ACK: true }, FCnt: 5,
    FPort: 10, payload: hex("040101") },
  keys.AppSKey, keys.NwkSKey);

process.stdout.write(JSON.stringify({
  generator: "lora-packet 0.9.3 (make-vectors.js)",
  app_key: appKey.toString("hex"),
  join_eui: joinEui, dev_eui: devEui, dev_nonce: devNonce, join_nonce: joinNonce, net_id: netId,
  dev_addr: devAddr,
  join_request: jr.getPHYPayload().toString("hex"),
  join_accept: encrypted.toString("hex"),
  join_accept_plain: plain.toString("hex"),
  nwk_s_key: keys.NwkSKey.toString("hex"),
  app_s_key: keys.AppSKey.toString("hex"),
  uplink: { fcnt: fcntUp, port: 2, payload: "03670110056700ff", phy: up.getPHYPayload().toString("hex"),
            mic_ok: lora.verifyMIC(up, keys.NwkSKey, null, msb) },
  downlink: { fcnt: 5, port: 10, payload: "040101", ack: true, phy: down.getPHYPayload().toString("hex") },
}, null, 2) + "\n");
