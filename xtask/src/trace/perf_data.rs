//! perf's own count of what a `perf.data` holds, read from the file itself
//! (not from `perf script`'s text), so that the folded totals can be checked
//! against it: the sample records, and the samples perf says the kernel
//! dropped (`PERF_RECORD_LOST`, `PERF_RECORD_LOST_SAMPLES`).
//!
//! The layout is perf's (`tools/perf/Documentation/perf.data-file-format.txt`):
//! a header with the file offset and size of the data section, which is a
//! sequence of records, each starting with `perf_event_header` (`u32 type`,
//! `u16 misc`, `u16 size`).

use std::io::{BufReader, Read as _, Seek as _, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context as _};

/// `PERF_RECORD_LOST`: `u64 id, u64 lost`.
const RECORD_LOST: u32 = 2;
/// `PERF_RECORD_SAMPLE`.
const RECORD_SAMPLE: u32 = 9;
/// `PERF_RECORD_LOST_SAMPLES`: `u64 lost`.
const RECORD_LOST_SAMPLES: u32 = 13;
/// `PERF_RECORD_COMPRESSED` (`perf record -z`): records inside are zstd.
const RECORD_COMPRESSED: u32 = 81;

/// What perf itself recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sample records: one per probe hit perf kept.
    pub samples: u64,
    /// Samples the kernel dropped, by perf's own records: the larger of the
    /// sums of `PERF_RECORD_LOST` (ring-buffer overflows, written as they
    /// happen) and `PERF_RECORD_LOST_SAMPLES` (each event's lost count, read
    /// from the kernel at the end). They count the same losses.
    pub lost: u64,
}

/// Reads the counts of `path`, a `perf.data` written by `perf record -o`.
pub fn count(path: &Path) -> anyhow::Result<Counts> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let what = || format!("{} (reading its sample count)", path.display());
    let mut file = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 104];
    file.read_exact(&mut header).with_context(|| format!("{} is too short for perf.data", path.display()))?;
    if &header[..8] != b"PERFILE2" {
        bail!("{} is not a perf.data file written on this machine's byte order (no PERFILE2 magic)", path.display());
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    // magic, size, attr_size, attrs {offset, size}, data {offset, size}.
    let (data_offset, data_size) = (word(40), word(48));
    if data_size == 0 {
        bail!("{} has an empty data section: perf did not finish writing it (was it killed?)", path.display());
    }
    file.seek(SeekFrom::Start(data_offset)).with_context(what)?;
    let mut counts = Counts::default();
    let (mut lost, mut lost_samples) = (0u64, 0u64);
    let mut at = 0u64;
    let mut body = Vec::new();
    while at < data_size {
        let mut record = [0u8; 8];
        file.read_exact(&mut record).with_context(|| format!("{}: a record is cut off at {at}", what()))?;
        let kind = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
        let size = u64::from(u16::from_le_bytes(record[6..8].try_into().expect("2 bytes")));
        if size < 8 || at + size > data_size {
            bail!("{}: a record at {at} of the data section has a bad size {size}", what());
        }
        body.resize((size - 8) as usize, 0);
        file.read_exact(&mut body).with_context(|| format!("{}: a record is cut off at {at}", what()))?;
        let field = |i: usize| body.get(i * 8..i * 8 + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")));
        match kind {
            RECORD_SAMPLE => counts.samples += 1,
            RECORD_LOST => lost += field(1),
            RECORD_LOST_SAMPLES => lost_samples += field(0),
            RECORD_COMPRESSED => bail!(
                "{} is compressed (perf record -z): record without -z, or give the `perf script` text",
                path.display()
            ),
            _ => {}
        }
        at += size;
    }
    counts.lost = lost.max(lost_samples);
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A perf.data of `records` (type, body), with a minimal header.
    fn perf_data(records: &[(u32, Vec<u64>)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (kind, words) in records {
            data.extend(kind.to_le_bytes());
            data.extend(0u16.to_le_bytes());
            data.extend((8 + 8 * words.len() as u16).to_le_bytes());
            for w in words {
                data.extend(w.to_le_bytes());
            }
        }
        let mut file = b"PERFILE2".to_vec();
        for w in [104u64, 136, 0, 0, 104, data.len() as u64, 0, 0] {
            file.extend(w.to_le_bytes());
        }
        file.resize(104, 0);
        file.extend(data);
        file
    }

    #[test]
    fn counts_samples_and_the_larger_lost_count() {
        let dir = std::env::temp_dir().join(format!("xtask-perf-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf.data");
        let records = [
            (RECORD_SAMPLE, vec![1, 2, 3]),
            (68, vec![]),
            (RECORD_LOST, vec![7, 40]),
            (RECORD_SAMPLE, vec![1]),
            (RECORD_LOST, vec![7, 2]),
            (RECORD_LOST_SAMPLES, vec![45]),
            (RECORD_SAMPLE, vec![]),
        ];
        std::fs::write(&path, perf_data(&records)).unwrap();
        assert_eq!(count(&path).unwrap(), Counts { samples: 3, lost: 45 });
        std::fs::write(&path, perf_data(&records[..5])).unwrap();
        assert_eq!(count(&path).unwrap(), Counts { samples: 2, lost: 42 });
        let mut cut = perf_data(&records);
        cut.truncate(cut.len() - 4);
        std::fs::write(&path, &cut).unwrap();
        assert!(format!("{:#}", count(&path).unwrap_err()).contains("cut off"));
        std::fs::write(&path, [b'x'; 200]).unwrap();
        assert!(format!("{:#}", count(&path).unwrap_err()).contains("PERFILE2"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
