//! Modbus TCP framing (the MBAP header) for the gateway's TCP connections.
//!
//! tokio-modbus frames its TCP client through tokio-util's `Framed`, which gives every
//! connection an 8 KiB read buffer and an 8 KiB write buffer, and answers and requests walk
//! through them over time, so all of it becomes resident: 16 MiB on a site of 1,000 devices,
//! about a third of the gateway's memory there. A Modbus TCP frame is at most 260 bytes, so
//! this client keeps no buffer between requests: it writes each request in one piece, then
//! reads the answer's 7-byte header and exactly the PDU that header announces.
//!
//! The PDUs stay tokio-modbus's: a request is its [`Request`], and answers are decoded by its
//! [`Response`] and [`ExceptionResponse`]. Only the header and the encoding of requests are
//! here. RTU (on a serial line, or through a serial server over TCP) still goes through
//! tokio-modbus's own client: there is one such connection per line, not one per device.

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_modbus::bytes::Bytes;
use tokio_modbus::{ExceptionResponse, ProtocolError, Request, Response};

/// Transaction id, protocol id, length, unit id.
const HEADER: usize = 7;
/// The largest PDU (Modbus Application Protocol v1.1b3, section 4.1).
const MAX_PDU: usize = 253;

/// One Modbus TCP connection, used for one request at a time.
#[derive(Debug)]
pub(crate) struct TcpClient {
    stream: TcpStream,
    next_transaction: u16,
}

impl TcpClient {
    pub(crate) fn new(stream: TcpStream) -> Self {
        TcpClient { stream, next_transaction: 0 }
    }

    /// Send `request` to `unit` and read its answer: `Ok(Err(code))` is an exception response.
    /// An answer whose transaction id, unit id or function code is not the request's is an
    /// error (the connection should then be dropped: it is out of step).
    pub(crate) async fn call(&mut self, unit: u8, request: &Request<'_>) -> tokio_modbus::Result<Response> {
        let transaction = self.next_transaction;
        self.next_transaction = transaction.wrapping_add(1);
        let frame = encode(transaction, unit, request)?;
        self.stream.write_all(&frame).await?;

        // Read what arrives (an answer usually comes in one piece) until the header, then the
        // whole PDU it announces, is in.
        let mut buf = [0u8; HEADER + MAX_PDU];
        let mut have = 0;
        let mut read_to = async |buf: &mut [u8], have: &mut usize, want: usize| -> io::Result<()> {
            while *have < want {
                match self.stream.read(&mut buf[*have..]).await? {
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the device closed the connection",
                        ));
                    }
                    n => *have += n,
                }
            }
            Ok(())
        };
        read_to(&mut buf, &mut have, HEADER).await?;
        let answered_transaction = u16::from_be_bytes([buf[0], buf[1]]);
        let protocol = u16::from_be_bytes([buf[2], buf[3]]);
        let length = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        let answered_unit = buf[6];
        if protocol != 0 {
            return Err(
                invalid(format!("the answer's protocol identifier is {protocol}, not 0 (Modbus)")).into()
            );
        }
        // The length counts the unit id and the PDU, which holds at least a function code.
        if !(2..=MAX_PDU + 1).contains(&length) {
            return Err(invalid(format!("the answer's header announces {length} bytes, not 2 to 254")).into());
        }
        let end = HEADER + length - 1;
        read_to(&mut buf, &mut have, end).await?;
        if have > end {
            // One request at a time: nothing may follow the answer.
            return Err(invalid(format!("{} bytes followed the answer", have - end)).into());
        }
        let pdu = Bytes::copy_from_slice(&buf[HEADER..end]);
        let result = if pdu[0] & 0x80 != 0 {
            Err(ExceptionResponse::try_from(pdu)?)
        } else {
            Ok(Response::try_from(pdu)?)
        };
        if (answered_transaction, answered_unit) != (transaction, unit) {
            return Err(ProtocolError::HeaderMismatch {
                message: format!(
                    "sent transaction {transaction} to unit {unit}, the answer is for transaction \
                     {answered_transaction} of unit {answered_unit}"
                ),
                result,
            }
            .into());
        }
        let function = match &result {
            Ok(response) => response.function_code(),
            Err(exception) => exception.function,
        };
        if function != request.function_code() {
            return Err(
                ProtocolError::FunctionCodeMismatch { request: request.function_code(), result }.into()
            );
        }
        Ok(result.map_err(|e| e.exception))
    }

    /// Close the connection (a FIN, so the device frees its side at once).
    pub(crate) async fn disconnect(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The whole frame of `request`: header and PDU.
fn encode(transaction: u16, unit: u8, request: &Request<'_>) -> io::Result<Vec<u8>> {
    let mut pdu = Vec::with_capacity(16);
    pdu.push(request.function_code().value());
    let put = |pdu: &mut Vec<u8>, v: u16| pdu.extend_from_slice(&v.to_be_bytes());
    let count = |n: usize, most: usize, what: &str| {
        if n == 0 || n > most {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{n} {what} in one request: Modbus allows 1 to {most}"),
            ));
        }
        Ok(n as u16)
    };
    match request {
        Request::ReadCoils(address, quantity)
        | Request::ReadDiscreteInputs(address, quantity)
        | Request::ReadInputRegisters(address, quantity)
        | Request::ReadHoldingRegisters(address, quantity) => {
            put(&mut pdu, *address);
            put(&mut pdu, *quantity);
        }
        Request::WriteSingleCoil(address, on) => {
            put(&mut pdu, *address);
            put(&mut pdu, if *on { 0xFF00 } else { 0x0000 });
        }
        Request::WriteMultipleCoils(address, coils) => {
            let n = count(coils.len(), 1968, "coils")?;
            put(&mut pdu, *address);
            put(&mut pdu, n);
            let packed = pack_bits(coils);
            pdu.push(packed.len() as u8);
            pdu.extend_from_slice(&packed);
        }
        Request::WriteSingleRegister(address, word) => {
            put(&mut pdu, *address);
            put(&mut pdu, *word);
        }
        Request::WriteMultipleRegisters(address, words) => {
            let n = count(words.len(), 123, "registers")?;
            put(&mut pdu, *address);
            put(&mut pdu, n);
            pdu.push((2 * n) as u8);
            words.iter().for_each(|w| put(&mut pdu, *w));
        }
        Request::ReportServerId => {}
        Request::MaskWriteRegister(address, and, or) => {
            put(&mut pdu, *address);
            put(&mut pdu, *and);
            put(&mut pdu, *or);
        }
        Request::ReadWriteMultipleRegisters(read_address, quantity, write_address, words) => {
            let n = count(words.len(), 121, "registers")?;
            put(&mut pdu, *read_address);
            put(&mut pdu, *quantity);
            put(&mut pdu, *write_address);
            put(&mut pdu, n);
            pdu.push((2 * n) as u8);
            words.iter().for_each(|w| put(&mut pdu, *w));
        }
        Request::ReadDeviceIdentification(code, object) => {
            // MEI type 14: Read Device Identification.
            pdu.extend_from_slice(&[0x0E, code.value(), *object]);
        }
        Request::Custom(_, data) => pdu.extend_from_slice(data),
    }
    if pdu.len() > MAX_PDU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a request of {} bytes: a Modbus PDU holds at most {MAX_PDU}", pdu.len()),
        ));
    }
    let mut frame = Vec::with_capacity(HEADER + pdu.len());
    frame.extend_from_slice(&transaction.to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes());
    frame.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    frame.push(unit);
    frame.extend_from_slice(&pdu);
    Ok(frame)
}

/// Coils packed eight to a byte, the first in the lowest bit.
fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut packed = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, on)| **on) {
        packed[i / 8] |= 1 << (i % 8);
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use tokio::net::TcpListener;
    use tokio_modbus::ExceptionCode;

    #[test]
    fn requests_are_encoded_as_the_specification_s_examples() {
        // Modbus Application Protocol v1.1b3, the examples of 6.3, 6.11 and 6.12, behind a
        // header for transaction 0x1234 to unit 17.
        let frame = |request: Request<'_>| encode(0x1234, 17, &request).unwrap();
        assert_eq!(
            frame(Request::ReadHoldingRegisters(0x006B, 3)),
            [0x12, 0x34, 0, 0, 0, 6, 17, 0x03, 0x00, 0x6B, 0x00, 0x03]
        );
        let coils = [true, false, true, true, false, false, true, true, true, false];
        assert_eq!(
            frame(Request::WriteMultipleCoils(0x0013, Cow::Borrowed(&coils))),
            [0x12, 0x34, 0, 0, 0, 9, 17, 0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01]
        );
        assert_eq!(
            frame(Request::WriteMultipleRegisters(0x0001, Cow::Borrowed(&[0x000A, 0x0102]))),
            [0x12, 0x34, 0, 0, 0, 11, 17, 0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02]
        );
        assert_eq!(frame(Request::WriteSingleCoil(0x00AC, true))[7..], [0x05, 0x00, 0xAC, 0xFF, 0x00]);
        assert_eq!(frame(Request::WriteSingleRegister(0x0001, 0x0003))[7..], [0x06, 0x00, 0x01, 0x00, 0x03]);
    }

    #[test]
    fn requests_beyond_the_protocol_s_limits_are_refused_before_sending() {
        let words = vec![0u16; 124];
        let e = encode(0, 1, &Request::WriteMultipleRegisters(0, Cow::Borrowed(&words))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("124 registers"), "{e}");
        assert!(encode(0, 1, &Request::WriteMultipleRegisters(0, Cow::Borrowed(&words[..123]))).is_ok());
        assert!(encode(0, 1, &Request::WriteMultipleCoils(0, Cow::Borrowed(&[]))).is_err());
    }

    /// A device on loopback that reads one request and answers with `answer(request)`, written
    /// in pieces of `piece` bytes (a TCP stream may deliver an answer in any cut).
    async fn device(answer: fn(&[u8]) -> Vec<u8>, piece: usize) -> TcpClient {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 260];
            let n = s.read(&mut request).await.unwrap();
            for chunk in answer(&request[..n]).chunks(piece) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        TcpClient::new(TcpStream::connect(addr).await.unwrap())
    }

    /// An answer to `request` with its header (same transaction and unit) and `pdu`.
    fn reply(request: &[u8], pdu: &[u8]) -> Vec<u8> {
        let mut out = request[..4].to_vec();
        out.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        out.push(request[6]);
        out.extend_from_slice(pdu);
        out
    }

    #[tokio::test]
    async fn an_answer_cut_into_single_bytes_is_read_whole() {
        let mut c = device(|r| reply(r, &[0x03, 0x04, 0x12, 0x34, 0xAB, 0xCD]), 1).await;
        let got = c.call(9, &Request::ReadHoldingRegisters(100, 2)).await.unwrap().unwrap();
        assert_eq!(got, Response::ReadHoldingRegisters(vec![0x1234, 0xABCD]));
    }

    #[tokio::test]
    async fn an_exception_answer_is_the_device_s_code() {
        let mut c = device(|r| reply(r, &[0x84, 0x02]), 260).await;
        let got = c.call(9, &Request::ReadInputRegisters(100, 2)).await.unwrap();
        assert_eq!(got, Err(ExceptionCode::IllegalDataAddress));
    }

    /// A good answer to the one-register read `r`, with byte `at` set to `to`.
    fn patched(r: &[u8], at: usize, to: u8) -> Vec<u8> {
        let mut a = reply(r, &[0x03, 0x02, 0x00, 0x01]);
        a[at] = to;
        a
    }

    /// What a one-register read from unit 9 gives when the device answers with `answer`.
    async fn failure(answer: fn(&[u8]) -> Vec<u8>) -> tokio_modbus::Error {
        let mut c = device(answer, 260).await;
        c.call(9, &Request::ReadHoldingRegisters(0, 1)).await.unwrap_err()
    }

    #[tokio::test]
    async fn an_answer_out_of_step_is_an_error() {
        // Another transaction's answer (a late one), another unit's, another function's.
        let e = failure(|r| patched(r, 1, 1)).await;
        assert!(e.to_string().contains("the answer is for transaction 1 of unit 9"), "{e}");
        let e = failure(|r| patched(r, 6, 10)).await;
        assert!(e.to_string().contains("of unit 10"), "{e}");
        let e = failure(|r| patched(r, 7, 0x04)).await;
        assert!(
            matches!(e, tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch { .. })),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_malformed_header_or_a_closed_connection_is_an_error() {
        let e = failure(|r| patched(r, 3, 1)).await;
        assert!(e.to_string().contains("protocol identifier is 1"), "{e}");
        let e = failure(|r| [&r[..4], &[0, 0, 9][..]].concat()).await;
        assert!(e.to_string().contains("announces 0 bytes"), "{e}");
        // Half a header, then the device hangs up.
        let e = failure(|r| r[..3].to_vec()).await;
        assert!(
            matches!(&e, tokio_modbus::Error::Transport(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e}"
        );
    }
}
