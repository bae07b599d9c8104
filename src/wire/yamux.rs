//! yamux frames, as HashiCorp's `github.com/hashicorp/yamux` writes them: a 12-byte header
//! (version 0, type, flags, stream id, length, all big-endian), then `length` bytes of data for
//! data frames. The session that runs them is `runtime::mux`.

/// Frame header size.
pub(crate) const HEADER: usize = 12;
/// The initial (and, here, the only) window of every stream, both ways.
pub(crate) const WINDOW: u32 = 256 * 1024;

/// Frame types.
pub(crate) const TYPE_DATA: u8 = 0;
pub(crate) const TYPE_WINDOW_UPDATE: u8 = 1;
pub(crate) const TYPE_PING: u8 = 2;
pub(crate) const TYPE_GO_AWAY: u8 = 3;

/// Flags.
pub(crate) const SYN: u16 = 1;
pub(crate) const ACK: u16 = 2;
pub(crate) const FIN: u16 = 4;
pub(crate) const RST: u16 = 8;

/// Go-away codes.
pub(crate) const GO_AWAY_NORMAL: u32 = 0;
pub(crate) const GO_AWAY_PROTOCOL: u32 = 1;
pub(crate) const GO_AWAY_INTERNAL: u32 = 2;

/// One frame header.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]

pub(crate) struct Header {
    pub kind: u8,
    pub flags: u16,
    pub stream: u32,
    pub length: u32,
}

impl Header {
    pub(crate) fn new(kind: u8, flags: u16, stream: u32, length: u32) -> Header {
        Header {
            kind,
            flags,
            stream,
            length,
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[1] = self.kind;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// A header, or what is wrong with it (an unknown version or type).
    pub(crate) fn decode(b: &[u8; HEADER]) -> std::result::Result<Header, String> {
        if b[0] != 0 {
            return Err(format!("yamux version {} (expected 0)", b[0]));
        }
        if b[1] > TYPE_GO_AWAY {
            return Err(format!("unknown yamux frame type {}", b[1]));
        }
        Ok(Header {
            kind: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}
