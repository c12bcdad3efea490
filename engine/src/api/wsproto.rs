//! The server side of the WebSocket protocol (RFC 6455) for the feed: unmasked frames
//! out, masked frames in. The feed writes frames that were built once for many
//! connections, so it frames its own messages rather than going through a
//! message-at-a-time library. No extension is negotiated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
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

fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.put_u8(0x80 | opcode);
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
    /// A fragmented message being received: its opcode and what came so far.
    partial: Option<(u8, BytesMut)>,
    max_message: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max_message: usize) -> Self {
        Reader {
            io,
            buf: BytesMut::with_capacity(4096),
            partial: None,
            max_message,
        }
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
            let Some((fin, opcode, payload)) = self.frame()? else {
                return Ok(None);
            };
            match opcode {
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Incoming::Close(code)));
                }
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CONTINUATION => {
                    let Some((_, so_far)) = self.partial.as_mut() else {
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
                        let (op, whole) = self.partial.take().expect("a message");
                        return finish(op, whole).map(Some);
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
                        return finish(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
                _ => unreachable!("checked in frame"),
            }
        }
    }

    /// One frame from the buffer, unmasked: (fin, opcode, payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, BytesMut)>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
        if b[0] & 0x70 != 0 {
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
        Ok(Some((fin, opcode, payload)))
    }
}

fn finish(opcode: u8, payload: BytesMut) -> Result<Incoming, ReadError> {
    if opcode == OP_BINARY {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload.to_vec())
        .map(Incoming::Text)
        .map_err(|_| fail(CLOSE_INVALID_DATA, "a text message that is not UTF-8"))
}

#[cfg(test)]
mod tests {
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
        let mut r = Reader::new(&bytes[..], max);
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
