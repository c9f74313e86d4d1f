//! A block cache in front of a file. Parsing reads many small pieces (a
//! symbol name at a time, a stack word at a time); inside the sandbox each
//! read is a host call, so small reads are served from 64 KiB blocks read
//! once, and large ones (a DWARF section) go straight to the file. Memory
//! stays bounded: the cache is dropped whole when it reaches its cap.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

use crate::core::ReadAt;

const BLOCK: u64 = 64 * 1024;
/// Reads at least this large bypass the cache.
const DIRECT: usize = 16 * 1024;
/// Most blocks kept (16 MiB).
const MAX_BLOCKS: usize = 256;

/// Exact reads at offsets, cached by block.
pub struct Blocks<R: ReadAt> {
    src: R,
    len: u64,
    cache: RefCell<HashMap<u64, Box<[u8]>>>,
}

impl<R: ReadAt> Blocks<R> {
    /// A cache over `src`.
    pub fn new(src: R) -> Self {
        let len = src.len();
        Blocks {
            src,
            len,
            cache: RefCell::new(HashMap::new()),
        }
    }
}

impl<R: ReadAt> ReadAt for Blocks<R> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        if buf.len() >= DIRECT {
            return self.src.read_exact_at(offset, buf);
        }
        let mut cache = self.cache.borrow_mut();
        let mut pos = offset;
        while pos < end {
            let start = pos - pos % BLOCK;
            if !cache.contains_key(&start) {
                if cache.len() >= MAX_BLOCKS {
                    cache.clear();
                }
                let n = BLOCK.min(self.len - start) as usize;
                let mut b = vec![0u8; n].into_boxed_slice();
                self.src.read_exact_at(start, &mut b)?;
                cache.insert(start, b);
            }
            let block = &cache[&start];
            let from = (pos - start) as usize;
            let take = ((end - pos) as usize).min(block.len() - from);
            let at = (pos - offset) as usize;
            buf[at..at + take].copy_from_slice(&block[from..from + take]);
            pos += take as u64;
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// `Read + Seek` over [`Blocks`], for `object`'s `ReadCache`.
pub struct Cursor<R: ReadAt> {
    /// The cached source.
    pub blocks: Blocks<R>,
    pos: u64,
}

impl<R: ReadAt> Cursor<R> {
    /// A cursor at 0.
    pub fn new(src: R) -> Self {
        Cursor {
            blocks: Blocks::new(src),
            pos: 0,
        }
    }
}

impl<R: ReadAt> Read for Cursor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.blocks.len().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.blocks.read_exact_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt> Seek for Cursor<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.blocks.len() as i128;
        let new = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        // Offsets come from the file's headers: a seek outside 0..2^64 is
        // an error, not a wrapped position.
        self.pos = u64::try_from(new)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek outside 0..2^64"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_match_the_source_across_blocks_and_evictions() {
        let data: Vec<u8> = (0..(BLOCK as usize * 3 + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        let b = Blocks::new(&data[..]);
        let mut seed = 7u64;
        for _ in 0..5000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let off = seed % data.len() as u64;
            let len = ((seed >> 33) % 40_000) as usize;
            let mut buf = vec![0u8; len];
            let r = b.read_exact_at(off, &mut buf);
            if off as usize + len <= data.len() {
                r.unwrap();
                assert_eq!(buf, &data[off as usize..off as usize + len]);
            } else {
                assert!(r.is_err(), "a missing byte is an error");
            }
        }
    }
}
