//! The server side of the WebSocket protocol (RFC 6455) for the feed: unmasked frames
//! out, masked frames in. The feed writes frames that were built once for many
//! connections, so it frames its own messages rather than going through a
//! message-at-a-time library.
//!
//! One extension, permessage-deflate (RFC 7692), which browsers offer on every
//! connection: the server keeps its compression context within a batch of messages
//! that many connections share (see [`Deflater`]), and the client compresses each of
//! its messages on its own (`client_no_context_takeover`), so a connection keeps no
//! compression state of its own.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Append a final text frame carrying `payload` (which must be UTF-8).
pub fn put_text_frame(out: &mut BytesMut, payload: &[u8]) {
    put_frame(out, OP_TEXT, payload);
}

pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_text_frame(&mut out, payload);
    out.freeze()
}

pub fn pong_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 2);
    put_frame(&mut out, OP_PONG, payload);
    out.freeze()
}

/// A close frame with `code`, or with no status at all.
pub fn close_frame(code: Option<u16>) -> Bytes {
    let mut out = BytesMut::with_capacity(4);
    match code {
        Some(code) => put_frame(&mut out, OP_CLOSE, &code.to_be_bytes()),
        None => put_frame(&mut out, OP_CLOSE, &[]),
    }
    out.freeze()
}

/// A close frame with this payload (a code and a reason).
pub fn close_frame_with(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + payload.len());
    put_frame(&mut out, OP_CLOSE, payload);
    out.freeze()
}

fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    put_frame_with(out, 0x80 | opcode, payload);
}

/// How long a frame's header is, from its first two bytes.
pub fn header_len(second_byte: u8) -> usize {
    match second_byte & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

fn put_frame_with(out: &mut BytesMut, first_byte: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.put_u8(first_byte);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

/// The `Sec-WebSocket-Extensions` answer when the feed compresses.
const DEFLATE_RESPONSE: &str = "permessage-deflate; client_no_context_takeover";

/// The same, to an offer that named the server's window: accepting one repeats it
/// (RFC 7692 §7.1.2.1).
const DEFLATE_RESPONSE_WINDOW: &str =
    "permessage-deflate; client_no_context_takeover; server_max_window_bits=15";

/// The empty stored block that ends a flushed deflate stream: left off the wire
/// (RFC 7692 §7.2.1) and put back before inflating.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The `Sec-WebSocket-Extensions` answer to the first of the client's offers (header
/// values, in order) that is a permessage-deflate the feed can accept, if one is. It
/// cannot accept `server_no_context_takeover` or a window under 15 bits: a batch of
/// messages is compressed once, each referring to those before it, for every
/// connection. An offer with an unknown or repeated parameter is declined, as RFC 7692
/// §5 asks.
pub fn deflate_answer<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            if !parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
            {
                return None;
            }
            let mut seen: Vec<String> = Vec::new();
            let acceptable = parts.all(|param| {
                let (name, value) = match param.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (param, None),
                };
                let name = name.to_ascii_lowercase();
                if seen.contains(&name) {
                    return false;
                }
                let bits_ok = |v: &str| v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b));
                let ok = match (name.as_str(), value) {
                    ("client_no_context_takeover", None) => true,
                    ("client_max_window_bits", None) => true,
                    ("client_max_window_bits", Some(v)) => bits_ok(v),
                    ("server_max_window_bits", Some(v)) => v == "15",
                    _ => false,
                };
                seen.push(name);
                ok
            });
            let answer = if seen.iter().any(|p| p == "server_max_window_bits") {
                DEFLATE_RESPONSE_WINDOW
            } else {
                DEFLATE_RESPONSE
            };
            acceptable.then_some(answer)
        })
}

/// Compresses text messages into permessage-deflate frames. Messages put between two
/// [`Deflater::reset`]s form one deflate stream: each may refer to the ones before it,
/// so they must reach a client in order, with no other compressed message between
/// them, and all of them from the first. A client that joins in the middle is sent
/// the rest uncompressed: a message without RSV1 leaves the client's inflater alone.
pub struct Deflater {
    compress: Compress,
    scratch: Vec<u8>,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater {
            compress: Compress::new(Compression::fast(), false),
            scratch: Vec::new(),
        }
    }
}

impl Deflater {
    /// Start a new run: what follows refers to nothing before it.
    pub fn reset(&mut self) {
        self.compress.reset();
    }

    /// Append `payload` (UTF-8) as one compressed, final text frame.
    pub fn put_text_frame(&mut self, out: &mut BytesMut, payload: &[u8]) {
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.reserve(payload.len() / 2 + 64);
        let start = self.compress.total_in();
        loop {
            let done = (self.compress.total_in() - start) as usize;
            if scratch.capacity() - scratch.len() < 16 {
                scratch.reserve(scratch.capacity().max(64));
            }
            self.compress
                .compress_vec(&payload[done..], scratch, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer");
            // Flushed once all input is taken and the output had room to spare.
            let done = (self.compress.total_in() - start) as usize;
            if done == payload.len() && scratch.len() < scratch.capacity() {
                break;
            }
        }
        debug_assert!(scratch.ends_with(&SYNC_TAIL));
        let body = &scratch[..scratch.len() - SYNC_TAIL.len()];
        // FIN, RSV1 (compressed), text.
        put_frame_with(out, 0x80 | 0x40 | OP_TEXT, body);
    }
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client closes, with its status code if it gave one.
    Close(Option<u16>),
}

/// Why the connection cannot go on: the close code to send, and what went wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: u16,
    pub reason: &'static str,
}

fn fail(code: u16, reason: &'static str) -> ReadError {
    ReadError::Protocol(ProtocolError { code, reason })
}

#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol: close with this code.
    Protocol(ProtocolError),
    /// The connection ended or failed.
    Io,
}

/// Reads client messages, with messages limited to `max_message` bytes.
pub struct Reader<R> {
    io: R,
    buf: BytesMut,
    /// A fragmented message being received: its opcode, whether it is compressed,
    /// and what came so far.
    partial: Option<(u8, bool, BytesMut)>,
    max_message: usize,
    /// permessage-deflate was agreed on: client messages may be compressed, each on
    /// its own.
    deflate: bool,
    /// Made at the first compressed message (a few KiB a connection otherwise).
    inflate: Option<Decompress>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max_message: usize) -> Self {
        Reader {
            io,
            buf: BytesMut::with_capacity(4096),
            partial: None,
            max_message,
            deflate: false,
            inflate: None,
        }
    }

    /// Accept compressed messages (permessage-deflate was agreed on).
    pub fn with_deflate(mut self) -> Self {
        self.deflate = true;
        self
    }

    /// The next message. Cancel-safe: what was read stays buffered.
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            if let Some(msg) = self.parse()? {
                return Ok(msg);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ReadError::Io),
                Ok(_) => {}
            }
        }
    }

    /// A whole message from what is buffered, if there is one.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some((fin, rsv1, opcode, payload)) = self.frame()? else {
                return Ok(None);
            };
            if rsv1 && !matches!(opcode, OP_TEXT | OP_BINARY) {
                return Err(fail(
                    CLOSE_PROTOCOL,
                    "RSV1 on a control or continuation frame",
                ));
            }
            match opcode {
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Incoming::Close(code)));
                }
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CONTINUATION => {
                    let Some((_, _, so_far)) = self.partial.as_mut() else {
                        return Err(fail(
                            CLOSE_PROTOCOL,
                            "a continuation frame without a message",
                        ));
                    };
                    if so_far.len() + payload.len() > self.max_message {
                        return Err(fail(CLOSE_TOO_BIG, "message too big"));
                    }
                    so_far.extend_from_slice(&payload);
                    if fin {
                        let (op, compressed, whole) = self.partial.take().expect("a message");
                        return self.finish(op, compressed, whole).map(Some);
                    }
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(fail(
                            CLOSE_PROTOCOL,
                            "a new message inside a fragmented one",
                        ));
                    }
                    if fin {
                        return self.finish(opcode, rsv1, payload).map(Some);
                    }
                    self.partial = Some((opcode, rsv1, payload));
                }
                _ => unreachable!("checked in frame"),
            }
        }
    }

    /// One frame from the buffer, unmasked: (fin, rsv1, opcode, payload).
    fn frame(&mut self) -> Result<Option<(bool, bool, u8, BytesMut)>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv1 = b[0] & 0x40 != 0;
        let opcode = b[0] & 0x0F;
        let reserved = if self.deflate { 0x30 } else { 0x70 };
        if b[0] & reserved != 0 {
            return Err(fail(CLOSE_PROTOCOL, "reserved bits set"));
        }
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(fail(CLOSE_PROTOCOL, "unknown opcode"));
        }
        if b[1] & 0x80 == 0 {
            return Err(fail(CLOSE_PROTOCOL, "client frames must be masked"));
        }
        let (len, header) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(None),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            n => (u64::from(n), 2),
        };
        if opcode >= OP_CLOSE && (!fin || len > 125) {
            return Err(fail(
                CLOSE_PROTOCOL,
                "a control frame must be whole and short",
            ));
        }
        if len > self.max_message as u64 {
            return Err(fail(CLOSE_TOO_BIG, "message too big"));
        }
        let len = len as usize;
        let total = header + 4 + len;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mask: [u8; 4] = self.buf[header..header + 4].try_into().expect("4 bytes");
        self.buf.advance(header + 4);
        let mut payload = self.buf.split_to(len);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Some((fin, rsv1, opcode, payload)))
    }

    fn finish(
        &mut self,
        opcode: u8,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<Incoming, ReadError> {
        let payload = if compressed {
            let inflate = self.inflate.get_or_insert_with(|| Decompress::new(false));
            inflate_message(inflate, &payload, self.max_message)?
        } else {
            payload.to_vec()
        };
        if opcode == OP_BINARY {
            return Ok(Incoming::Binary);
        }
        String::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| fail(CLOSE_INVALID_DATA, "a text message that is not UTF-8"))
    }
}

/// Inflate one compressed client message on its own (`client_no_context_takeover`),
/// to at most `max` bytes.
fn inflate_message(
    inflate: &mut Decompress,
    payload: &[u8],
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    inflate.reset(false);
    let input = [payload, &SYNC_TAIL[..]].concat();
    let mut out = Vec::with_capacity((payload.len() * 4).max(64).min(max + 1));
    loop {
        let (before_in, before_out) = (inflate.total_in(), out.len());
        let status = inflate
            .decompress_vec(
                &input[inflate.total_in() as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .map_err(|_| {
                fail(
                    CLOSE_INVALID_DATA,
                    "a compressed message that does not inflate",
                )
            })?;
        if out.len() > max {
            return Err(fail(CLOSE_TOO_BIG, "message too big"));
        }
        let all_in = inflate.total_in() as usize == input.len();
        let room = out.len() < out.capacity();
        if matches!(status, flate2::Status::StreamEnd) || (all_in && room) {
            return Ok(out);
        }
        if !room {
            out.reserve(out.capacity().min(max + 1 - out.len()).max(64));
        } else if inflate.total_in() == before_in && out.len() == before_out {
            return Err(fail(
                CLOSE_INVALID_DATA,
                "a compressed message that does not inflate",
            ));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, String>> {
        read_from(Reader::new(&bytes[..], max)).await
    }

    async fn read_all_deflate(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, String>> {
        read_from(Reader::new(&bytes[..], max).with_deflate()).await
    }

    /// Every message `r` reads, and the protocol error that ended them if one did.
    async fn read_from(mut r: Reader<&[u8]>) -> Vec<Result<Incoming, String>> {
        let mut out = Vec::new();
        loop {
            match r.next().await {
                Ok(m) => out.push(Ok(m)),
                Err(ReadError::Io) => return out,
                Err(ReadError::Protocol(p)) => {
                    out.push(Err(format!("{} {}", p.code, p.reason)));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn messages_of_every_length_form_and_fragmented_ones_are_read() {
        let long = "x".repeat(70_000);
        let mid = "y".repeat(300);
        let mut bytes = client_frame(0x81, b"{\"type\":\"ping\"}");
        bytes.extend(client_frame(0x81, mid.as_bytes()));
        bytes.extend(client_frame(0x81, long.as_bytes()));
        // "hello" in two fragments with a ping between them.
        bytes.extend(client_frame(0x01, b"hel"));
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, b"lo"));
        bytes.extend(client_frame(0x82, b"\x00\x01"));
        bytes.extend(client_frame(0x88, &1000u16.to_be_bytes()));
        let got = read_all(bytes, 100_000).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::Text("{\"type\":\"ping\"}".into())),
                Ok(Incoming::Text(mid)),
                Ok(Incoming::Text(long)),
                Ok(Incoming::Ping(Bytes::from_static(b"p"))),
                Ok(Incoming::Text("hello".into())),
                Ok(Incoming::Binary),
                Ok(Incoming::Close(Some(1000))),
            ]
        );
    }

    #[tokio::test]
    async fn protocol_errors_name_their_close_code() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0x81, 0x02, b'h', b'i'],
                "1002 client frames must be masked",
            ),
            (client_frame(0xC1, b"x"), "1002 reserved bits set"),
            (client_frame(0x83, b"x"), "1002 unknown opcode"),
            (
                client_frame(0x80, b"x"),
                "1002 a continuation frame without a message",
            ),
            (
                client_frame(0x09, b"x"),
                "1002 a control frame must be whole and short",
            ),
            (
                client_frame(0x81, &[0xFF, 0xFE]),
                "1007 a text message that is not UTF-8",
            ),
            (client_frame(0x81, &[b'a'; 200]), "1009 message too big"),
            (
                [
                    client_frame(0x01, &[b'a'; 60]),
                    client_frame(0x80, &[b'a'; 60]),
                ]
                .concat(),
                "1009 message too big",
            ),
            (
                [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
                "1002 a new message inside a fragmented one",
            ),
        ];
        for (bytes, want) in cases {
            let got = read_all(bytes, 100).await;
            assert_eq!(got.last(), Some(&Err(want.to_string())), "{want}");
        }
    }

    /// A client's compressed message: raw deflate, flushed, without the tail.
    fn client_deflate(payload: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(payload.len() + 64);
        c.compress_vec(payload, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn permessage_deflate_is_accepted_only_in_a_form_the_feed_can_keep() {
        let plain = Some(DEFLATE_RESPONSE);
        // What Chromium and Firefox send.
        assert_eq!(
            deflate_answer(["permessage-deflate; client_max_window_bits"]),
            plain
        );
        assert_eq!(deflate_answer(["permessage-deflate"]), plain);
        // An offer naming the server's window is answered with it.
        assert_eq!(
            deflate_answer([
                "Permessage-Deflate; client_no_context_takeover; client_max_window_bits=10; server_max_window_bits=15"
            ]),
            Some(DEFLATE_RESPONSE_WINDOW)
        );
        // A later offer, or another header line, may be the acceptable one.
        assert_eq!(
            deflate_answer(["permessage-deflate; server_no_context_takeover, permessage-deflate"]),
            plain
        );
        assert_eq!(
            deflate_answer(["x-webkit-deflate-frame", "permessage-deflate"]),
            plain
        );
        for declined in [
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; something_else",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(deflate_answer([declined]), None, "{declined}");
        }
    }

    #[tokio::test]
    async fn compressed_client_messages_are_inflated_each_on_its_own() {
        let sub = br#"{"type":"subscribe","jobs":["j_1"],"types":[],"after":0}"#;
        let packed = client_deflate(sub);
        let mut bytes = client_frame(0xC1, &packed);
        // Fragmented: RSV1 on the first frame only, a ping between.
        let (a, b) = packed.split_at(5);
        bytes.extend(client_frame(0x41, a));
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, b));
        // An uncompressed message between compressed ones.
        bytes.extend(client_frame(0x81, b"plain"));
        bytes.extend(client_frame(0xC1, &client_deflate(b"{\"type\":\"ping\"}")));
        let text = String::from_utf8(sub.to_vec()).unwrap();
        assert_eq!(
            read_all_deflate(bytes, 1_000).await,
            vec![
                Ok(Incoming::Text(text.clone())),
                Ok(Incoming::Ping(Bytes::from_static(b"p"))),
                Ok(Incoming::Text(text)),
                Ok(Incoming::Text("plain".into())),
                Ok(Incoming::Text("{\"type\":\"ping\"}".into())),
            ]
        );

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                client_frame(0xC9, b"x"),
                "1002 RSV1 on a control or continuation frame",
            ),
            (
                [
                    client_frame(0x41, &packed[..3]),
                    client_frame(0xC0, &packed[3..]),
                ]
                .concat(),
                "1002 RSV1 on a control or continuation frame",
            ),
            (client_frame(0xA1, b"x"), "1002 reserved bits set"),
            (
                client_frame(0xC1, &[0xFF; 20]),
                "1007 a compressed message that does not inflate",
            ),
            // 200 KB of one byte compress to a few hundred: the limit is on what
            // comes out.
            (
                client_frame(0xC1, &client_deflate(&[b'a'; 200_000])),
                "1009 message too big",
            ),
        ];
        for (bytes, want) in cases {
            let got = read_all_deflate(bytes, 1_000).await;
            assert_eq!(got.last(), Some(&Err(want.to_string())), "{want}");
        }
        // Without the extension agreed, RSV1 is a protocol error.
        assert_eq!(
            read_all(client_frame(0xC1, &packed), 1_000).await,
            vec![Err("1002 reserved bits set".to_string())]
        );
    }

    /// The frames of `bytes` as (compressed, payload).
    pub(crate) fn server_frames(bytes: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let header = header_len(bytes[at + 1]);
            let len = match header {
                2 => usize::from(bytes[at + 1] & 0x7F),
                4 => usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                _ => u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
            };
            assert_eq!(bytes[at] & 0xBF, 0x81, "a final text frame");
            out.push((
                bytes[at] & 0x40 != 0,
                bytes[at + header..at + header + len].to_vec(),
            ));
            at += header + len;
        }
        out
    }

    /// A browser's side: one inflater for the connection's life.
    pub(crate) fn inflate_with_context(inflate: &mut Decompress, body: &[u8]) -> Vec<u8> {
        let input = [body, &SYNC_TAIL[..]].concat();
        let mut out = Vec::with_capacity(64 * 1024);
        let before = inflate.total_in();
        inflate
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!((inflate.total_in() - before) as usize, input.len());
        out
    }

    #[test]
    fn a_run_of_compressed_messages_inflates_in_order_and_a_reset_starts_afresh() {
        let messages: Vec<String> = (0..40)
            .map(|i| {
                format!(r#"{{"seq":{i},"type":"item_progress","data":{{"done":{i},"total":40}}}}"#)
            })
            .collect();
        let mut d = Deflater::default();
        let mut first = BytesMut::new();
        for m in &messages[..20] {
            d.put_text_frame(&mut first, m.as_bytes());
        }
        d.reset();
        let mut second = BytesMut::new();
        for m in &messages[20..] {
            d.put_text_frame(&mut second, m.as_bytes());
        }
        let raw: usize = messages.iter().map(String::len).sum();
        assert!(
            first.len() + second.len() < raw / 2,
            "{} of {raw} bytes",
            first.len() + second.len()
        );

        // A client that had both runs, with an uncompressed message between them.
        let mut client = Decompress::new(false);
        let mut got = Vec::new();
        for (compressed, body) in server_frames(&first) {
            assert!(compressed);
            got.push(inflate_with_context(&mut client, &body));
        }
        got.push(b"{\"type\":\"pong\"}".to_vec());
        for (_, body) in server_frames(&second) {
            got.push(inflate_with_context(&mut client, &body));
        }
        let mut want: Vec<Vec<u8>> = messages.iter().map(|m| m.clone().into_bytes()).collect();
        want.insert(20, b"{\"type\":\"pong\"}".to_vec());
        assert_eq!(got, want);

        // A client that joined at the second run.
        let mut late = Decompress::new(false);
        let got: Vec<Vec<u8>> = server_frames(&second)
            .iter()
            .map(|(_, body)| inflate_with_context(&mut late, body))
            .collect();
        assert_eq!(got, want[21..]);
    }

    #[test]
    fn frames_carry_their_length_in_the_shortest_form() {
        for (n, header) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
        ] {
            let f = text_frame(&vec![b'a'; n]);
            assert_eq!(f.len(), n + header, "{n}");
            assert_eq!(f[0], 0x81);
        }
        assert_eq!(&close_frame(Some(1009))[..], &[0x88, 0x02, 0x03, 0xF1]);
        assert_eq!(&close_frame(None)[..], &[0x88, 0x00]);
        assert_eq!(&pong_frame(b"p")[..], &[0x8A, 0x01, b'p']);
    }
}
