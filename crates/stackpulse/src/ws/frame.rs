//! Server WebSocket frames, encoded once and written as they are.
//!
//! A server frame is unmasked (RFC 6455 §5.1), so the bytes of a frame depend only
//! on its opcode and payload: an event's frame is the same for every `/ws`
//! subscriber. [`text`] encodes header + payload into one [`Bytes`]; the hub keeps
//! it on the event ([`crate::hub::StampedEvent::ws_frame`]) and the raw writer
//! ([`super::raw`]) hands the same bytes to every socket in one vectored write,
//! with no per-connection framing. Every frame here is final (FIN set) and
//! unfragmented: a 2-byte header up to 125 bytes of payload, 4 bytes up to 65,535,
//! 10 bytes above.

use bytes::{BufMut, Bytes, BytesMut};

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const PONG: u8 = 0xA;

/// The FIN bit of a frame's first byte.
const FIN: u8 = 0x80;

/// A ping with no payload, as the writer sends every `--ping-interval`.
pub const EMPTY_PING: &[u8] = &[FIN | PING, 0];
/// A close with no code, as sent when the client vanished without a close.
pub const EMPTY_CLOSE: &[u8] = &[FIN | CLOSE, 0];

/// The length of the header of a frame carrying `len` bytes of payload.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Writes the header of a final, unmasked frame with `opcode` and `len` bytes of payload.
pub fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(FIN | (opcode & 0x0F));
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// A complete frame: header and payload in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A complete text frame.
pub fn text(payload: &str) -> Bytes {
    encode(TEXT, payload.as_bytes())
}

/// A close frame with `code` and `reason` (the caller keeps the reason within
/// 123 bytes, see [`super::driver::truncate_reason`]).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = BytesMut::with_capacity(2 + reason.len());
    payload.put_u16(code);
    payload.put_slice(reason.as_bytes());
    encode(CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// The bytes tungstenite writes for the same frame (the server role: unmasked).
    fn tungstenite_bytes(frame: Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.format(&mut out).expect("format");
        out
    }

    #[test]
    fn text_frames_are_byte_identical_to_tungstenite_around_each_length_boundary() {
        for len in [
            0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537, 200_000,
        ] {
            let payload = "x".repeat(len);
            let ours = text(&payload);
            let theirs = tungstenite_bytes(Frame::message(
                payload.clone().into_bytes(),
                OpCode::Data(Data::Text),
                true,
            ));
            assert_eq!(ours.len(), header_len(len) + len, "length {len}");
            assert_eq!(&ours[..], &theirs[..], "length {len}");
        }
    }

    #[test]
    fn control_frames_are_byte_identical_to_tungstenite() {
        let ping = tungstenite_bytes(Frame::ping(Vec::new()));
        assert_eq!(EMPTY_PING, &ping[..]);
        let close_frame = tungstenite_bytes(Frame::close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::from(4008),
                reason: "slow consumer".into(),
            },
        )));
        assert_eq!(&close(4008, "slow consumer")[..], &close_frame[..]);
        let empty = tungstenite_bytes(Frame::close(None));
        assert_eq!(EMPTY_CLOSE, &empty[..]);
    }
}
