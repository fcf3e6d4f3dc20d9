//! The allocation snapshot's file format (`tests/snapshots/NAME.allocs`):
//! written by [`crate::snapshot`] (feature `profile`), read here too, so
//! that `cargo heapprobe diff` takes a snapshot as either side with the
//! `diff` feature alone.

use std::collections::BTreeMap;

use super::{Error, Folded, Side, Weight};
use crate::stats::Stats;

/// The first line of every snapshot file.
pub(crate) const FIRST_LINE: &str = "# heapprobe allocation snapshot";

/// The stacks of a snapshot: bytes allocated and allocations per stack.
pub(crate) type Stacks = BTreeMap<String, (u64, u64)>;

/// The counters, in the file's order.
// Written only by `crate::snapshot` (feature `profile`).
#[cfg_attr(not(feature = "profile"), allow(dead_code))]
pub(crate) fn counters(stats: &Stats) -> [(&'static str, String); 18] {
    [
        ("allocations", stats.allocations.to_string()),
        ("deallocations", stats.deallocations.to_string()),
        ("reallocations", stats.reallocations.to_string()),
        ("bytes_allocated", stats.bytes_allocated.to_string()),
        ("bytes_deallocated", stats.bytes_deallocated.to_string()),
        ("bytes_reallocated", stats.bytes_reallocated.to_string()),
        ("reallocations_grown", stats.reallocations_grown.to_string()),
        ("bytes_grown", stats.bytes_grown.to_string()),
        ("reallocations_shrunk", stats.reallocations_shrunk.to_string()),
        ("bytes_shrunk", stats.bytes_shrunk.to_string()),
        ("reallocations_moved", stats.reallocations_moved.to_string()),
        ("bytes_moved", stats.bytes_moved.to_string()),
        ("allocation_failures", stats.allocation_failures.to_string()),
        ("current", stats.current.to_string()),
        ("peak", stats.peak.to_string()),
        ("size_histogram", format!("{:?}", stats.size_histogram)),
        ("grow_histogram", format!("{:?}", stats.grow_histogram)),
        ("shrink_histogram", format!("{:?}", stats.shrink_histogram)),
    ]
}

// Written only by `crate::snapshot` (feature `profile`).
#[cfg_attr(not(feature = "profile"), allow(dead_code))]
pub(crate) const STACKS_COMMENT: &str =
    "# stacks: bytes allocated and allocations per stack; frames root first, from the \
                              snapshot's closure to the allocation site";

/// A snapshot's stacks as one side of a diff: bytes, with the counts.
pub(crate) fn side(stacks: &Stacks, origin: &str) -> Result<Side, Error> {
    let mut bytes = Folded::new(Some(Weight::Bytes), origin);
    let mut counts = Folded::new(Some(Weight::Count), &format!("{origin} (counts)"));
    for (stack, (b, c)) in stacks {
        bytes.add(stack, *b);
        counts.add(stack, *c);
    }
    if stacks.is_empty() {
        // A block that allocated nothing: one empty stack, so the diff
        // shows every stack of the other side as new or gone.
        bytes.add("[nothing allocated]", 0);
        counts.add("[nothing allocated]", 0);
    }
    Side::with_counts(bytes, counts)
}

/// A snapshot file, read back.
#[cfg_attr(not(feature = "profile"), allow(dead_code))]
pub(crate) struct Stored {
    pub(crate) allocations: u64,
    pub(crate) bytes: u64,
    pub(crate) stacks: Option<Stacks>,
}

impl Stored {
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Stored, Error> {
        let malformed = |line: usize, text: &str, why: &str| Error::Malformed {
            origin: origin.to_owned(),
            line,
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
        match lines.next() {
            Some((_, first)) if first.starts_with(FIRST_LINE) => {}
            Some((n, first)) => return Err(malformed(n, first, "not a heapprobe allocation snapshot")),
            None => return Err(Error::Empty { origin: origin.to_owned() }),
        }
        let keys: Vec<&str> = counters(&Stats::default()).iter().map(|(k, _)| *k).collect();
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        let mut stacks = None;
        for (n, line) in lines.by_ref() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(malformed(n, line, "not `key: value`"));
            };
            let value = value.trim();
            match key {
                "name" => {}
                "stacks" if value.is_empty() => {
                    stacks = Some(Stacks::new());
                    break;
                }
                "stacks" if value.starts_with("not recorded") => break,
                key if keys.contains(&key) => {
                    let key = keys[keys.iter().position(|k| *k == key).unwrap_or(0)];
                    if !key.ends_with("histogram") && value.parse::<i128>().is_err() {
                        return Err(malformed(n, line, "the value is not an integer"));
                    }
                    seen.insert(key, value.to_owned());
                }
                _ => return Err(malformed(n, line, "unknown key")),
            }
        }
        if let Some(stacks) = stacks.as_mut() {
            // The sums over every stack line: with them in a u64, so is
            // every stack's (a stack may be listed twice) and every frame's.
            let mut totals = (0u64, 0u64);
            for (n, line) in lines {
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut fields = line.rsplitn(3, ' ');
                let (count, bytes, stack) = (fields.next(), fields.next(), fields.next());
                let (Some(count), Some(bytes), Some(stack)) = (count, bytes, stack) else {
                    return Err(malformed(n, line, "not `STACK BYTES ALLOCATIONS`"));
                };
                let (Ok(bytes), Ok(count)) = (bytes.parse::<u64>(), count.parse::<u64>()) else {
                    return Err(malformed(n, line, "not `STACK BYTES ALLOCATIONS`"));
                };
                let (Some(total_bytes), Some(total_count)) = (totals.0.checked_add(bytes), totals.1.checked_add(count))
                else {
                    return Err(malformed(
                        n,
                        line,
                        "the stacks' bytes or allocations add up past 18446744073709551615 (u64::MAX) here: \
                         the snapshot's total cannot be represented",
                    ));
                };
                totals = (total_bytes, total_count);
                let entry = stacks.entry(stack.to_owned()).or_default();
                // Each at most its total.
                entry.0 += bytes;
                entry.1 += count;
            }
        }
        let number = |key: &str| -> Result<u64, Error> {
            seen.get(key).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                malformed(0, key, "a required figure is missing (the file was cut short, or edited by hand)")
            })
        };
        Ok(Stored { allocations: number("allocations")?, bytes: number("bytes_allocated")?, stacks })
    }

    pub(crate) fn side(&self, origin: &str) -> Result<Side, Error> {
        match &self.stacks {
            Some(stacks) => side(stacks, origin),
            None => Err(Error::Empty { origin: format!("{origin} (its stacks were not recorded)") }),
        }
    }
}

/// A snapshot file as one side of a diff (bytes and counts).
pub(crate) fn side_of(text: &str, origin: &str) -> Result<Side, Error> {
    Stored::parse(text, origin)?.side(origin)
}

#[cfg(test)]
mod tests {
    use super::{Stored, FIRST_LINE};

    fn file(stacks: &str) -> String {
        format!("{FIRST_LINE}\nname: x\nallocations: 2\nbytes_allocated: 2\nstacks:\n{stacks}")
    }

    /// A stack listed twice is summed; sums that do not fit in a u64 are
    /// rejected with the file and line, not wrapped (nor a panic).
    #[test]
    fn repeated_stacks_add_up_and_totals_past_u64_are_rejected_with_the_line() {
        let stored = Stored::parse(&file("main;f 10 1\nmain;f 5 2\nmain;g 1 1\n"), "x.allocs").unwrap();
        let stacks = stored.stacks.unwrap();
        assert_eq!(stacks["main;f"], (15, 3));
        assert_eq!(stacks["main;g"], (1, 1));
        let max = u64::MAX;
        for text in [
            format!("main;f {max} 1\nmain;f {max} 1\n"),
            format!("main;f 1 {max}\nmain;f 1 1\n"),
            format!("main;f {max} 1\nmain;g 1 1\n"),
        ] {
            let err = Stored::parse(&file(&text), "x.allocs").err().expect("accepted an unrepresentable total");
            let err = err.to_string();
            assert!(err.starts_with("x.allocs:7: "), "{err}");
            assert!(err.contains("add up past 18446744073709551615"), "{err}");
        }
        // The largest representable total is fine.
        let side = super::side_of(&file(&format!("main;f {} 1\nmain;g 1 1\n", max - 1)), "x.allocs").unwrap();
        assert_eq!(side.weights().total(), max);
    }
}
