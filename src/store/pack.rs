//! Append-only pack files: where chunk bytes live on disk.
//!
//! # Data format
//! ```text
//! pack   := header record*
//! header := "CLAWPACK" version:u32le reserved:u32le                      (16 bytes)
//! record := "CHNK" flags:u8 raw_len:u32le stored_len:u32le id:[u8;32]
//!           payload:[u8; stored_len] crc:u32le                            (49 + stored_len bytes)
//! ```
//! `flags & 1` means the payload is zstd-compressed; `id` is the SHA-256 of the uncompressed
//! bytes; `crc` is CRC-32 (IEEE) of everything in the record before it. A pack is appended to until it
//! passes [`PACK_TARGET`] bytes, then sealed (never written again) and a new one started. Packs
//! are the unit the replicator uploads, so the local and remote layouts match.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ids::{ChunkId, PackId};
use crate::store::error::{IoContext, Result, StoreError};
use crate::store::room::Room;

/// Magic at the start of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"CLAWPACK";
/// Pack format version.
pub const PACK_VERSION: u32 = 1;
/// Length of the pack header.
pub const HEADER_LEN: u64 = 16;
/// Length of a record's header: everything before the payload (magic, flags, two lengths, id).
pub const HEADER_BYTES: usize = 4 + 1 + 4 + 4 + 32;
/// Bytes of a record besides its payload: the header and the CRC.
pub const RECORD_OVERHEAD: u64 = HEADER_BYTES as u64 + 4;
/// A pack is sealed once it reaches this size.
pub const PACK_TARGET: u64 = 8 << 20;
const RECORD_MAGIC: &[u8; 4] = b"CHNK";
const FLAG_ZSTD: u8 = 1;

/// Where a chunk's record sits and how to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLoc {
    /// The pack file.
    pub pack: PackId,
    /// Offset of the record within the pack.
    pub offset: u64,
    /// Length of the payload as stored.
    pub stored_len: u32,
    /// Length of the chunk's plaintext.
    pub raw_len: u32,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
}

/// A chunk and where its record is.
pub type Located = (ChunkId, ChunkLoc);

/// Path of pack `id` under `dir`.
pub fn pack_path(dir: &Path, id: PackId) -> PathBuf {
    dir.join(format!("{id}.pack"))
}

/// Whether `data` is worth handing to zstd. Already compressed or encrypted bytes (media, model
/// files, archives) are close to uniformly distributed; a byte histogram of a 1 KiB sample tells
/// them apart for ~1 µs, where zstd takes ~20 µs per chunk to find it cannot shrink one.
///
/// The measure is the collision entropy of the sample, `-log2(Σ p²)`: 7.7 bits for random
/// bytes in a 1 KiB sample, 4–6 for text, JSON, base64 or SQLite pages. Below 7 bits is worth
/// a try. A chunk that is a repeat of random bytes would be misjudged, at the cost of storing
/// it uncompressed; content is never affected.
pub fn worth_compressing(data: &[u8]) -> bool {
    const SPAN: usize = 256;
    const SPANS: usize = 4;
    let mut counts = [0u32; 256];
    let mut n = 0u64;
    if data.len() <= SPAN * SPANS {
        data.iter().for_each(|&b| counts[b as usize] += 1);
        n = data.len() as u64;
    } else {
        let step = (data.len() - SPAN) / (SPANS - 1);
        for k in 0..SPANS {
            data[k * step..k * step + SPAN]
                .iter()
                .for_each(|&b| counts[b as usize] += 1);
            n += SPAN as u64;
        }
    }
    if n < 64 {
        return true;
    }
    let squares: u64 = counts.iter().map(|&c| u64::from(c) * u64::from(c)).sum();
    // Σ p² > 2^-7, in integers.
    squares * 128 > n * n
}

/// A record ready to be written, in three parts (header, payload, CRC), so that a batch of
/// records goes out in one `writev` without its payloads being copied.
pub struct Record<'a> {
    head: [u8; HEADER_BYTES],
    payload: Cow<'a, [u8]>,
    crc: [u8; 4],
}

impl<'a> Record<'a> {
    /// Encodes chunk `data` (whose id is `id`). Compression is skipped for chunks that do not
    /// look [worth compressing](worth_compressing), and when it saves less than 1/32 of the
    /// chunk.
    pub fn encode(id: &ChunkId, data: &'a [u8]) -> Record<'a> {
        thread_local! {
            // A compression context per thread: creating one per chunk costs more than
            // compressing.
            static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
                std::cell::RefCell::new(zstd::bulk::Compressor::new(1).ok());
        }
        let compressed = if worth_compressing(data) {
            ZSTD.with(|z| z.borrow_mut().as_mut().and_then(|c| c.compress(data).ok()))
        } else {
            None
        };
        let (flags, payload) = match compressed {
            Some(c) if c.len() + data.len() / 32 < data.len() => (FLAG_ZSTD, Cow::Owned(c)),
            _ => (0, Cow::Borrowed(data)),
        };
        let mut head = [0u8; HEADER_BYTES];
        head[..4].copy_from_slice(RECORD_MAGIC);
        head[4] = flags;
        head[5..9].copy_from_slice(&(data.len() as u32).to_le_bytes());
        head[9..13].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[13..].copy_from_slice(&id.0);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&payload);
        Record {
            head,
            payload,
            crc: crc.finalize().to_le_bytes(),
        }
    }

    /// A whole record made elsewhere, if its header, length and CRC check out.
    pub fn parse(rec: &'a [u8]) -> Option<Record<'a>> {
        check_crc(rec)?;
        let end = rec.len() - 4;
        Some(Record {
            head: rec[..HEADER_BYTES].try_into().ok()?,
            payload: Cow::Borrowed(&rec[HEADER_BYTES..end]),
            crc: rec[end..].try_into().ok()?,
        })
    }

    /// The chunk this record holds.
    pub fn id(&self) -> ChunkId {
        ChunkId(self.head[13..].try_into().expect("32 bytes"))
    }

    /// Where this record is once written at `offset` of `pack`, and the chunk it holds.
    pub fn location(&self, pack: PackId, offset: u64) -> (ChunkId, ChunkLoc) {
        header_location(pack, offset, &self.head).expect("an encoded header parses")
    }

    /// Length of the whole record.
    pub fn len(&self) -> u64 {
        RECORD_OVERHEAD + self.payload.len() as u64
    }

    /// Always false: a record has at least its header and CRC.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The record's bytes, in order.
    pub fn parts(&self) -> [&[u8]; 3] {
        [&self.head, &self.payload, &self.crc]
    }

    /// The record as one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len() as usize);
        self.parts().iter().for_each(|p| v.extend_from_slice(p));
        v
    }
}

/// Encodes one record as one buffer: see [`Record::encode`].
pub fn encode_record(id: &ChunkId, data: &[u8]) -> Vec<u8> {
    Record::encode(id, data).to_vec()
}

/// What a record's header says.
struct RecordHeader {
    compressed: bool,
    raw_len: u32,
    stored_len: u32,
    id: ChunkId,
}

fn parse_header(buf: &[u8]) -> Option<RecordHeader> {
    if buf.len() < HEADER_BYTES || &buf[..4] != RECORD_MAGIC {
        return None;
    }
    Some(RecordHeader {
        compressed: buf[4] & FLAG_ZSTD != 0,
        raw_len: u32::from_le_bytes(buf[5..9].try_into().ok()?),
        stored_len: u32::from_le_bytes(buf[9..13].try_into().ok()?),
        id: ChunkId(buf[13..HEADER_BYTES].try_into().ok()?),
    })
}

/// Decodes a whole record read from `pack` at `offset`, checking its CRC and that it holds `want`.
pub fn decode_record(pack: PackId, offset: u64, rec: &[u8], want: &ChunkId) -> Result<Vec<u8>> {
    let corrupt = |detail: &str| StoreError::CorruptPack {
        pack,
        offset,
        detail: detail.to_string(),
    };
    let h = parse_header(rec).ok_or_else(|| corrupt("bad record header"))?;
    let end = HEADER_BYTES + h.stored_len as usize;
    if rec.len() != end + 4 {
        return Err(corrupt("record length does not match its header"));
    }
    let crc = u32::from_le_bytes(rec[end..].try_into().expect("4 bytes"));
    if crc32fast::hash(&rec[..end]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    if h.id != *want {
        return Err(corrupt("record holds another chunk than the index says"));
    }
    let payload = &rec[HEADER_BYTES..end];
    if h.compressed {
        thread_local! {
            // A context per thread: making one per chunk cost more than decompressing it.
            static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
        }
        UNZSTD
            .with(|z| {
                z.borrow_mut()
                    .as_mut()
                    .and_then(|d| d.decompress(payload, h.raw_len as usize).ok())
            })
            .filter(|d| d.len() == h.raw_len as usize)
            .ok_or_else(|| corrupt("compressed payload does not decode"))
    } else {
        Ok(payload.to_vec())
    }
}

/// The chunk a record header at `offset` of `pack` names, and where its record is, if `head`
/// (at least [`HEADER_BYTES`]) is a record header at all. Nothing is checked beyond the magic:
/// the caller checks the record's CRC when it reads it.
pub fn header_location(pack: PackId, offset: u64, head: &[u8]) -> Option<(ChunkId, ChunkLoc)> {
    let h = parse_header(head)?;
    let loc = ChunkLoc {
        pack,
        offset,
        stored_len: h.stored_len,
        raw_len: h.raw_len,
        compressed: h.compressed,
    };
    Some((h.id, loc))
}

/// The chunk id a record names in its header, if it has a header at all.
pub fn record_id(rec: &[u8]) -> Option<ChunkId> {
    parse_header(rec).map(|h| h.id)
}

/// The (id, plaintext length) of a whole record whose length and CRC check out, without
/// decompressing it.
pub fn check_crc(rec: &[u8]) -> Option<(ChunkId, u32)> {
    let h = parse_header(rec)?;
    let end = HEADER_BYTES + h.stored_len as usize;
    if rec.len() != end + 4 {
        return None;
    }
    let crc = u32::from_le_bytes(rec[end..].try_into().ok()?);
    (crc32fast::hash(&rec[..end]) == crc).then_some((h.id, h.raw_len))
}

/// An open pack being appended to.
pub struct PackWriter {
    /// The pack's id.
    pub id: PackId,
    file: File,
    len: u64,
}

impl PackWriter {
    /// Creates pack `id` in `dir` (it must not exist).
    pub fn create(dir: &Path, id: PackId) -> Result<PackWriter> {
        let path = pack_path(dir, id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating pack {}", path.display()))?;
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(PACK_MAGIC);
        header.extend_from_slice(&PACK_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        file.write_all(&header)
            .ctx(|| format!("writing pack {}", path.display()))?;
        Ok(PackWriter {
            id,
            file,
            len: HEADER_LEN,
        })
    }

    /// Reopens pack `id` for appending after a restart. Records torn by a crash at the end are
    /// cut off; returns the locations of the intact records so the index can be checked, and
    /// whether anything was cut.
    pub fn reopen(dir: &Path, id: PackId) -> Result<(PackWriter, Vec<Located>, bool)> {
        let path = pack_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .ctx(|| format!("opening pack {}", path.display()))?;
        let (good_len, records) = scan(&file, id)?;
        let actual = file.metadata().ctx(|| "stat pack".into())?.len();
        let torn = actual != good_len;
        if torn {
            tracing::warn!(pack = %id, actual, good_len, "cutting a torn record off the end of the open pack");
            file.set_len(good_len)
                .ctx(|| "truncating torn pack".into())?;
        }
        Ok((
            PackWriter {
                id,
                file,
                len: good_len,
            },
            records,
            torn,
        ))
    }

    /// Current length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when only the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Appends encoded records; returns the offset of the first. They go out in as few
    /// `writev` calls as the kernel allows (one, on a local file system), so a crash of the
    /// process leaves whole records in the page cache. When a write fails (a full disk), the
    /// pack is cut back to where it was, so the next append starts on a record boundary.
    ///
    /// Records that would reach into the room kept free for the catalogue are refused
    /// ([`StoreError::Full`]): a full disk must cost versions, never the catalogue.
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<u64> {
        let off = self.len;
        let total: u64 = records.iter().map(Record::len).sum();
        {
            use std::os::fd::AsRawFd;
            // A file system that cannot say how full it is is written to as before.
            if let Ok(room) = Room::of_fd(self.file.as_raw_fd()) {
                room.check(total)?;
            }
        }
        let mut slices: Vec<IoSlice<'_>> = records
            .iter()
            .flat_map(|r| r.parts().map(IoSlice::new))
            .collect();
        let mut bufs = &mut slices[..];
        let mut result = Ok(());
        while !bufs.is_empty() {
            // At most IOV_MAX slices a call; the rest go in the next.
            let n = bufs.len().min(1024);
            match self.file.write_vectored(&bufs[..n]) {
                Ok(0) => {
                    result = Err(std::io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(k) => IoSlice::advance_slices(&mut bufs, k),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(pack = %self.id, error = %cut, "could not cut a failed append off the pack; the next open cuts it");
            }
            return Err(StoreError::Io {
                what: format!("appending to pack {}", self.id),
                source: e,
            });
        }
        self.len += total;
        Ok(off)
    }

    /// Starts writing the pack's pages out, without waiting: a sealed pack is synced at the
    /// next barrier, which then finds little left to do.
    pub fn start_writeback(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an fd this writer owns; no memory is passed.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .ctx(|| format!("syncing pack {}", self.id))
    }
}

/// Reads pack headers and records sequentially; returns the length up to the last intact record.
pub fn scan(file: &File, id: PackId) -> Result<(u64, Vec<Located>)> {
    let len = file.metadata().ctx(|| "stat pack".into())?.len();
    let mut header = [0u8; 16];
    if len < HEADER_LEN {
        return Ok((0, Vec::new()));
    }
    file.read_exact_at(&mut header, 0)
        .ctx(|| "reading pack header".into())?;
    if &header[..8] != PACK_MAGIC {
        return Err(StoreError::CorruptPack {
            pack: id,
            offset: 0,
            detail: "not a pack file".into(),
        });
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != PACK_VERSION {
        return Err(StoreError::CorruptPack {
            pack: id,
            offset: 0,
            detail: format!("unknown pack version {version}"),
        });
    }
    let mut off = HEADER_LEN;
    let mut out = Vec::new();
    let mut hdr = [0u8; HEADER_BYTES];
    while off + RECORD_OVERHEAD <= len {
        if file.read_exact_at(&mut hdr, off).is_err() {
            break;
        }
        let Some((cid, loc)) = header_location(id, off, &hdr) else {
            break;
        };
        let rec_len = RECORD_OVERHEAD + loc.stored_len as u64;
        if off + rec_len > len {
            break;
        }
        let mut rec = vec![0u8; rec_len as usize];
        file.read_exact_at(&mut rec, off)
            .ctx(|| "reading pack record".into())?;
        let body = rec_len as usize - 4;
        let crc = u32::from_le_bytes(rec[body..].try_into().expect("4 bytes"));
        if crc32fast::hash(&rec[..body]) != crc {
            break;
        }
        out.push((cid, loc));
        off += rec_len;
    }
    Ok((off, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_flips() {
        let data = b"hello hello hello hello hello hello hello hello".repeat(100);
        let id = ChunkId::of(&data);
        let rec = encode_record(&id, &data);
        assert!(rec.len() < data.len(), "compressible data is compressed");
        assert_eq!(decode_record(PackId(1), 16, &rec, &id).unwrap(), data);
        for i in [0, 5, 20, 60, rec.len() - 1] {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_record(PackId(1), 16, &bad, &id).is_err(),
                "flip at {i}"
            );
        }
        let other = ChunkId::of(b"x");
        assert!(decode_record(PackId(1), 16, &rec, &other).is_err());
    }

    #[test]
    fn incompressible_chunks_skip_zstd_and_others_do_not() {
        use rand::{RngCore, SeedableRng};
        let mut random = vec![0u8; 16 << 10];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut random);
        let words = [
            "agent", "memory", "tool", "session", "user", "said", "model", "ok",
        ];
        let mut text = String::new();
        for i in 0..60_000 {
            text.push_str(words[(random[i % random.len()] as usize + i / 7) % words.len()]);
            text.push(if random[(i * 31) % random.len()] < 20 {
                '\n'
            } else {
                ' '
            });
        }
        let zstd_output = zstd::bulk::compress(text.as_bytes(), 3).unwrap();
        assert!(zstd_output.len() > 32 << 10, "{}", zstd_output.len());
        let json =
            br#"{"role":"assistant","content":"ok, saved it to MEMORY.md","ts":1763}"#.repeat(300);
        let base64 = hex::encode(&random).into_bytes();
        let mut page = vec![0u8; 4096];
        page[..1000].copy_from_slice(&random[..1000]);
        assert!(!worth_compressing(&random));
        assert!(!worth_compressing(&zstd_output[8 << 10..24 << 10]));
        assert!(worth_compressing(&json));
        assert!(worth_compressing(&base64), "hex digits compress");
        assert!(worth_compressing(&page), "a page that is mostly zeros");
        assert!(worth_compressing(b"short"));
        // Skipped or not, every record decodes to its bytes.
        for data in [&random[..], &json[..], &page[..]] {
            let id = ChunkId::of(data);
            assert_eq!(
                decode_record(PackId(1), 16, &encode_record(&id, data), &id).unwrap(),
                data
            );
        }
    }

    #[test]
    fn torn_tail_is_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path(), PackId(3)).unwrap();
        let a = vec![1u8; 5000];
        let off = w.append(&[Record::encode(&ChunkId::of(&a), &a)]).unwrap();
        assert_eq!(off, HEADER_LEN);
        drop(w);
        let b = vec![2u8; 5000];
        let rec_b = encode_record(&ChunkId::of(&b), &b);
        let mut f = OpenOptions::new()
            .append(true)
            .open(pack_path(dir.path(), PackId(3)))
            .unwrap();
        f.write_all(&rec_b[..rec_b.len() / 2]).unwrap();
        drop(f);
        let (w, recs, torn) = PackWriter::reopen(dir.path(), PackId(3)).unwrap();
        assert!(torn);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].0, ChunkId::of(&a));
        assert_eq!(
            w.len(),
            HEADER_LEN + recs[0].1.stored_len as u64 + RECORD_OVERHEAD
        );
    }
}
