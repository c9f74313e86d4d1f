//! Reading one native frame off a connection: what is already in the
//! socket buffer without waiting (`read_ready`), or the rest as it comes
//! (`read_frame`), checking the size field before anything is allocated
//! for it. The accept loop and its admission rules are in `socket.rs`.

use std::io;
use std::os::fd::AsFd;

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use telem_core::record::wire::{check_total_size, parse_frame_body, FrameError, MAX_FRAME_SIZE};
use telem_core::record::Record;

/// Why a connection produced no record.
#[derive(Debug, Error)]
pub(super) enum ConnError {
    #[error("connection closed after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("read error")]
    Io(#[from] io::Error),
}

/// A frame as its bytes arrive. Bytes after the frame are not kept: a
/// connection carries one frame.
#[derive(Debug, Default)]
pub(super) struct FrameBuf {
    bytes: Vec<u8>,
    /// The frame's `total_size`, once its first four bytes are in (and
    /// checked).
    total: Option<usize>,
}

impl FrameBuf {
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(super) fn is_complete(&self) -> bool {
        self.total == Some(self.bytes.len())
    }

    /// Bytes that may still belong to the frame: exactly those missing
    /// once its size is known, else as many as the largest frame holds.
    pub(super) fn room(&self) -> usize {
        self.total.unwrap_or(MAX_FRAME_SIZE as usize) - self.bytes.len()
    }

    /// Takes what of `data` belongs to the frame; refuses a size field
    /// out of bounds before anything is allocated for it.
    pub(super) fn extend(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        if self.total.is_none() {
            let take = data.len().min(4 - self.bytes.len());
            self.bytes.extend_from_slice(&data[..take]);
            data = &data[take..];
            let Ok(size) = <[u8; 4]>::try_from(self.bytes.as_slice()) else {
                return Ok(());
            };
            let total = u32::from_ne_bytes(size);
            check_total_size(total)?;
            self.total = Some(total as usize);
            self.bytes.reserve_exact(total as usize - 4);
        }
        let take = data.len().min(self.room());
        self.bytes.extend_from_slice(&data[..take]);
        Ok(())
    }

    pub(super) fn truncated(&self) -> ConnError {
        ConnError::Truncated {
            got: self.bytes.len(),
            want: self.total.unwrap_or(4),
        }
    }

    pub(super) fn parse(&self) -> Result<Record, FrameError> {
        parse_frame_body(&self.bytes[4..])
    }
}

/// What reading without waiting found.
pub(super) enum Ready {
    /// The whole frame, parsed.
    Record(Box<Record>),
    /// Not all of it yet.
    Partial,
    /// Closed before sending anything.
    Closed,
    /// Closed early, malformed or unreadable.
    Failed(ConnError),
}

/// Reads what of the frame is already in the socket buffer, without
/// waiting; `scratch` holds at least one frame.
pub(super) fn read_ready(stream: impl AsFd, frame: &mut FrameBuf, scratch: &mut [u8]) -> Ready {
    use rustix::io::Errno;
    use rustix::net::{recv, RecvFlags};
    loop {
        let want = frame.room().min(scratch.len());
        match recv(&stream, &mut scratch[..want], RecvFlags::DONTWAIT).map(|(n, _)| n) {
            Ok(0) if frame.is_empty() => return Ready::Closed,
            Ok(0) => return Ready::Failed(frame.truncated()),
            Ok(n) => {
                if let Err(e) = frame.extend(&scratch[..n]) {
                    return Ready::Failed(e.into());
                }
                if frame.is_complete() {
                    return match frame.parse() {
                        Ok(r) => Ready::Record(Box::new(r)),
                        Err(e) => Ready::Failed(e.into()),
                    };
                }
            }
            Err(Errno::AGAIN) => return Ready::Partial,
            Err(Errno::INTR) => {}
            Err(e) => return Ready::Failed(ConnError::Io(e.into())),
        }
    }
}

/// The peer's uid and pid (`SO_PEERCRED`), if they can be read.
pub(super) fn peer(stream: impl AsFd) -> (Option<u32>, Option<i32>) {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(c) => (Some(c.uid.as_raw()), Some(c.pid.as_raw_nonzero().get())),
        Err(_) => (None, None),
    }
}

/// Reads until the frame is whole.
pub(super) async fn read_frame(
    stream: &mut UnixStream,
    frame: &mut FrameBuf,
) -> Result<Record, ConnError> {
    while !frame.is_complete() {
        read_some(stream, frame).await?;
    }
    Ok(frame.parse()?)
}

/// Waits for and takes some bytes of the frame; end of stream before the
/// frame is whole is [`ConnError::Truncated`].
pub(super) async fn read_some(
    stream: &mut UnixStream,
    frame: &mut FrameBuf,
) -> Result<(), ConnError> {
    let mut chunk = [0u8; 4096];
    let want = frame.room().min(chunk.len());
    let n = stream.read(&mut chunk[..want]).await?;
    if n == 0 {
        return Err(frame.truncated());
    }
    Ok(frame.extend(&chunk[..n])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use telem_core::record::wire::encode_frame;

    fn frame() -> Vec<u8> {
        encode_frame(&telem_core::record::sample())
    }

    #[test]
    fn a_frame_fed_byte_by_byte_is_whole_exactly_at_its_last_byte() {
        let bytes = frame();
        let mut f = FrameBuf::default();
        for (i, b) in bytes.iter().enumerate() {
            assert!(!f.is_complete(), "whole after {i} bytes");
            f.extend(std::slice::from_ref(b)).unwrap();
        }
        assert!(f.is_complete());
        assert_eq!(f.parse().unwrap(), telem_core::record::sample());
    }

    #[test]
    fn bytes_after_the_frame_are_not_taken() {
        let mut bytes = frame();
        let len = bytes.len();
        bytes.extend_from_slice(b"trailing");
        let mut f = FrameBuf::default();
        f.extend(&bytes).unwrap();
        assert!(f.is_complete());
        assert_eq!(f.bytes.len(), len);
        assert_eq!(f.room(), 0);
    }

    #[test]
    fn a_size_out_of_bounds_is_refused_before_the_rest_arrives() {
        let mut f = FrameBuf::default();
        f.extend(&[0xff, 0xff]).unwrap();
        assert_eq!(f.room(), MAX_FRAME_SIZE as usize - 2);
        assert!(matches!(
            f.extend(&[0xff, 0xff, 1, 2, 3]),
            Err(FrameError::TooLarge(u32::MAX))
        ));
        assert!(
            f.bytes.capacity() < 64,
            "nothing reserved for a refused size"
        );
        let mut g = FrameBuf::default();
        assert!(matches!(
            g.extend(&4u32.to_ne_bytes()),
            Err(FrameError::TooSmall(4))
        ));
    }

    #[test]
    fn a_truncated_frame_says_how_much_arrived() {
        let bytes = frame();
        let mut f = FrameBuf::default();
        f.extend(&bytes[..10]).unwrap();
        let e = f.truncated().to_string();
        assert_eq!(
            e,
            format!("connection closed after 10 of {} bytes", bytes.len())
        );
    }
}
