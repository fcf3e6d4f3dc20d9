//! Frame names that a terminal or an XML reader would choke on (issue 21,
//! point 8): a function whose symbol holds an escape sequence, U+FFFE and
//! U+FFFF allocates in a scoped profile; the summary, the folded stacks and
//! the flame graph show the characters as visible escapes, and the SVG is
//! valid XML.

use std::alloc::System;
use std::hint::black_box;

use heapprobe::profile::View;
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

/// An unmangled symbol: its name reaches the profile as it is.
#[export_name = "heapprobe_evil_\u{1b}[31m_\u{fffe}_\u{ffff}"]
#[inline(never)]
fn evil() -> Vec<u8> {
    black_box(vec![1u8; 4096])
}

#[test]
fn frame_names_are_escaped_in_every_output() {
    let (v, profile) = GLOBAL.profile(evil);
    drop(v);
    if profile.samples() == 0 {
        eprintln!("SKIPPED: the in-process profiler is unavailable here:\n{profile}");
        return;
    }
    let folded = profile.folded(View::AllocatedBytes);
    assert!(folded.contains(r"heapprobe_evil_\u{1b}[31m_\u{fffe}_\u{ffff}"), "{folded}");
    let text = format!("{profile}\n{}", profile.top_sites_text(View::AllocatedBytes, 5));
    let raw =
        |s: &str| s.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{fffe}' | '\u{ffff}'));
    assert!(!raw(&folded), "{folded:?}");
    assert!(!raw(&text), "{text:?}");
    let svg = std::env::temp_dir().join(format!("heapprobe-names-{}.svg", std::process::id()));
    profile.write_flamegraph(&svg, View::AllocatedBytes, "names").unwrap();
    let xml = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(!raw(&xml), "a character XML forbids in the SVG");
    assert!(xml.contains("heapprobe_evil_"), "the frame is drawn");
}
