//! The known change, recorded by the in-process profiler and diffed: at
//! revision A the fixture allocates 100 × 1 KiB in `kilobyte_blocks` and
//! 512 B in `old_block`; at revision B, 150 × 1 KiB, plus 4 KiB in the new
//! `new_block`, and no `old_block`. The diff must say +51200 B (+50) in
//! `kilobyte_blocks`, +4096 B (+1, new) in `new_block` and −512 B (−1, gone)
//! in `old_block`, nothing else; the flame graph must be well-formed and
//! hold all three frames, red, red and blue, with their parents coloured by
//! the change of their subtree.

#[path = "support/svg.rs"]
mod svg;

use std::alloc::System;
use std::hint::black_box;

use heapprobe::diff::{Diff, Folded, Options, Side, Weight};
use heapprobe::profile::{Profile, View};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[derive(Clone, Copy)]
enum Revision {
    A,
    B,
}

#[inline(never)]
fn kilobyte_blocks(n: usize, keep: &mut Vec<Box<[u8]>>) {
    for _ in 0..n {
        keep.push(black_box(vec![1u8; 1024].into_boxed_slice()));
    }
}

#[inline(never)]
fn old_block(keep: &mut Vec<Box<[u8]>>) {
    keep.push(black_box(vec![2u8; 512].into_boxed_slice()));
}

#[inline(never)]
fn new_block(keep: &mut Vec<Box<[u8]>>) {
    keep.push(black_box(vec![3u8; 4096].into_boxed_slice()));
}

#[inline(never)]
fn known_change(revision: Revision, keep: &mut Vec<Box<[u8]>>) {
    match revision {
        Revision::A => {
            kilobyte_blocks(100, keep);
            old_block(keep);
        }
        Revision::B => {
            kilobyte_blocks(150, keep);
            new_block(keep);
        }
    }
}

/// The scope's exact profile; `None` (and a loud line) where the profiler
/// is unavailable.
fn record(revision: Revision) -> Option<Profile> {
    let mut keep = Vec::with_capacity(200);
    let ((), profile) = GLOBAL.profile(|| known_change(revision, &mut keep));
    if profile.samples() == 0 {
        eprintln!("SKIPPED: the in-process profiler is unavailable here:\n{profile}");
        return None;
    }
    Some(profile)
}

const KB: &str = "diff::kilobyte_blocks";
const NEW: &str = "diff::new_block";
const OLD: &str = "diff::old_block";

#[test]
fn the_known_change_shows_in_the_right_stacks_with_signed_bytes_and_counts() {
    let (Some(a), Some(b)) = (record(Revision::A), record(Revision::B)) else { return };
    // The profiles are exact: the scopes' own counters.
    assert_eq!(a.exact().unwrap().bytes_allocated, 100 * 1024 + 512);
    assert_eq!(b.exact().unwrap().bytes_allocated, 150 * 1024 + 4096);
    let before = Side::from_profile(&a, View::AllocatedBytes, "revision A").unwrap();
    let after = Side::from_profile(&b, View::AllocatedBytes, "revision B").unwrap();
    assert_eq!(before.weights().weight(), Some(Weight::Bytes));
    assert_eq!(before.counts().unwrap().weight(), Some(Weight::Count));
    let diff = Diff::new(before, after, &Options::default()).unwrap();
    let summary = diff.summary();
    eprintln!("{summary}");

    let grew: Vec<(i128, Option<i128>, String)> =
        diff.grew(10).iter().map(|r| (r.delta(), r.count_delta(), r.site())).collect();
    assert_eq!(grew.len(), 2, "{summary}");
    assert_eq!((grew[0].0, grew[0].1), (51200, Some(50)));
    assert!(grew[0].2.starts_with(KB), "{summary}");
    assert_eq!((grew[1].0, grew[1].1), (4096, Some(1)));
    assert!(grew[1].2.starts_with(NEW), "{summary}");
    let shrank: Vec<(i128, Option<i128>, String)> =
        diff.shrank(10).iter().map(|r| (r.delta(), r.count_delta(), r.site())).collect();
    assert_eq!(shrank.len(), 1, "{summary}");
    assert_eq!((shrank[0].0, shrank[0].1), (-512, Some(-1)));
    assert!(shrank[0].2.starts_with(OLD), "{summary}");
    assert_eq!(diff.totals(), (100 * 1024 + 512, 150 * 1024 + 4096));
    assert_eq!(diff.count_totals(), Some((101, 151)));

    // The summary's lines, as a reader sees them.
    let line = |frame: &str| {
        summary
            .lines()
            .find(|l| l.contains(&format!("  {frame} <- ")))
            .unwrap_or_else(|| panic!("no {frame}:\n{summary}"))
    };
    assert!(line(KB).trim_start().starts_with("+51200 B  +50  "), "{summary}");
    assert!(line(NEW).trim_start().starts_with("+4096 B   +1  ") && line(NEW).ends_with("(new)"), "{summary}");
    assert!(line(OLD).trim_start().starts_with("-512 B  -1  ") && line(OLD).ends_with("(gone)"), "{summary}");
    assert!(summary.contains("  change: +54784 B (+53.2%), count +50 (+49.5%)\n"), "{summary}");

    // The flame graph: well-formed, all three frames, each with the right
    // colour sign, and the parent red for its subtree's growth.
    let frames = svg::frames(&diff.svg());
    let one = |name: &str| {
        let found = svg::named(&frames, name);
        assert_eq!(found.len(), 1, "one {name} frame");
        found[0].clone()
    };
    let kb = one(KB);
    assert!(kb.is_red() && kb.delta == 51200 && (kb.before, kb.after) == (102400, 153600), "{kb:?}");
    let new = one(NEW);
    assert!(new.is_red() && new.delta == 4096 && new.class.contains("new") && new.width == 4096, "{new:?}");
    let old = one(OLD);
    assert!(old.is_blue() && old.delta == -512 && old.class.contains("gone"), "{old:?}");
    // The vanished stack is drawn as wide as it was.
    assert_eq!(old.width, 512, "{old:?}");
    let parent = one("diff::known_change");
    assert!(parent.is_red() && parent.delta == 51200 + 4096 - 512, "{parent:?}");
    assert_eq!(parent.width, 150 * 1024 + 4096 + 512);
    // Its tooltip has the figures.
    assert!(kb.title.contains("before: 102400 B") && kb.title.contains("count: 100 → 150 (+50)"), "{}", kb.title);
}

#[test]
fn the_profilers_folded_files_carry_their_weight_and_refuse_to_mix() {
    let Some(a) = record(Revision::A) else { return };
    let dir = std::env::temp_dir().join(format!("heapprobe-diff-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (bytes, objects) = (dir.join("a.folded"), dir.join("a.count.folded"));
    a.write_folded(&bytes, View::AllocatedBytes).unwrap();
    a.write_folded(&objects, View::AllocatedObjects).unwrap();
    let text = std::fs::read_to_string(&bytes).unwrap();
    assert!(text.starts_with("# heapprobe: weight=bytes view=alloc_space\n"), "{text}");
    let b = Folded::read(&bytes).unwrap();
    let c = Folded::read(&objects).unwrap();
    assert_eq!((b.weight(), c.weight()), (Some(Weight::Bytes), Some(Weight::Count)));
    assert_eq!((b.total(), c.total()), (100 * 1024 + 512, 101));
    let err = Diff::new(Side::new(b.clone()), Side::new(c.clone()), &Options::default()).unwrap_err().to_string();
    assert!(err.contains("is weighted by bytes and") && err.contains("by count"), "{err}");
    // As a pair, they are one side with counts.
    let side = Side::with_counts(b, c).unwrap();
    assert_eq!(side.counts().unwrap().total(), 101);
    let _ = std::fs::remove_dir_all(dir);
}
