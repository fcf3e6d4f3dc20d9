//! Reading heapprobe's differential flame graphs in tests: a strict XML
//! parse (matching tags, one root, defined entities only, no duplicate
//! attributes), then the frames with their colours and figures. Included
//! with `#[path]` by the tests that need it (it uses quick-xml).
#![allow(dead_code)]

use quick_xml::events::Event;
use quick_xml::Reader;

/// One frame (`<g class="f …">`) of a differential flame graph.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The frame's name (its tooltip's first line).
    pub name: String,
    /// Its classes: `f`, plus `new` or `gone`.
    pub class: String,
    /// Its fill, `rgb(r,g,b)`.
    pub fill: (u8, u8, u8),
    /// `data-before`, `data-after`, `data-delta`: its inclusive figures.
    pub before: u64,
    pub after: u64,
    pub delta: i128,
    /// `data-w`, `data-d`.
    pub width: u64,
    pub depth: usize,
    /// The tooltip.
    pub title: String,
}

impl Frame {
    /// Red: growth.
    pub fn is_red(&self) -> bool {
        self.fill.0 == 255 && self.fill.1 < 255 && self.fill.2 < 255 && self.fill.1 == self.fill.2
    }
    /// Blue: shrink.
    pub fn is_blue(&self) -> bool {
        self.fill.2 == 255 && self.fill.0 < 255 && self.fill.0 == self.fill.1
    }
    /// Grey: no change.
    pub fn is_grey(&self) -> bool {
        self.fill.0 == self.fill.1 && self.fill.1 == self.fill.2
    }
}

fn rgb(fill: &str) -> (u8, u8, u8) {
    let inner = fill.strip_prefix("rgb(").and_then(|f| f.strip_suffix(')')).unwrap_or_else(|| panic!("fill {fill:?}"));
    let parts: Vec<u8> = inner.split(',').map(|p| p.trim().parse().expect("a colour component")).collect();
    (parts[0], parts[1], parts[2])
}

/// Parses `svg` strictly (panicking on anything ill-formed) and returns its frames.
pub fn frames(svg: &str) -> Vec<Frame> {
    let mut reader = Reader::from_str(svg);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut roots = 0;
    let mut frames = Vec::new();
    let mut current: Option<Frame> = None;
    let mut in_title = false;
    loop {
        let event =
            reader.read_event().unwrap_or_else(|e| panic!("not well-formed at {}: {e}", reader.buffer_position()));
        match event {
            Event::Start(e) => {
                if depth == 0 {
                    roots += 1;
                    assert_eq!(e.name().as_ref(), b"svg", "the root is <svg>");
                }
                depth += 1;
                let attrs: Vec<(String, String)> = e
                    .attributes()
                    .map(|a| {
                        let a = a.expect("a well-formed attribute, not repeated");
                        (
                            String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                            a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                                .expect("defined entities")
                                .into_owned(),
                        )
                    })
                    .collect();
                let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                match e.name().as_ref() {
                    b"g" if get("class").is_some_and(|c| c.split(' ').any(|c| c == "f")) => {
                        let num = |k: &str| get(k).unwrap_or_else(|| panic!("a frame without {k}"));
                        current = Some(Frame {
                            name: String::new(),
                            class: get("class").unwrap(),
                            fill: (0, 0, 0),
                            before: num("data-before").parse().unwrap(),
                            after: num("data-after").parse().unwrap(),
                            delta: num("data-delta").trim_start_matches('+').parse().unwrap(),
                            width: num("data-w").parse().unwrap(),
                            depth: num("data-d").parse().unwrap(),
                            title: String::new(),
                        });
                    }
                    b"title" => in_title = true,
                    _ => {}
                }
            }
            Event::Empty(e) => {
                assert!(depth > 0, "an element outside the root");
                for a in e.attributes() {
                    let a = a.expect("a well-formed attribute, not repeated");
                    let value = a.normalized_value(quick_xml::XmlVersion::Explicit1_0).expect("defined entities");
                    if e.name().as_ref() == b"rect" && a.key.as_ref() == b"fill" {
                        if let Some(frame) = current.as_mut() {
                            frame.fill = rgb(&value);
                        }
                    }
                }
            }
            Event::Text(t) => {
                let text = t.decode().expect("UTF-8");
                assert!(depth > 0 || text.trim().is_empty(), "text outside the root: {text:?}");
                if in_title {
                    if let Some(frame) = current.as_mut() {
                        frame.title.push_str(&text);
                    }
                }
            }
            Event::GeneralRef(r) => {
                let text = match r.resolve_char_ref().expect("a valid character reference") {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().expect("UTF-8");
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .unwrap_or_else(|| panic!("undefined entity &{name};"))
                            .to_owned()
                    }
                };
                if in_title {
                    if let Some(frame) = current.as_mut() {
                        frame.title.push_str(&text);
                    }
                }
            }
            Event::End(e) => {
                depth = depth.checked_sub(1).expect("an end tag without a start");
                match e.name().as_ref() {
                    b"title" => in_title = false,
                    b"g" => {
                        if let Some(mut frame) = current.take() {
                            frame.name = frame.title.lines().next().unwrap_or_default().to_owned();
                            frames.push(frame);
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!((depth, roots), (0, 1), "every element closed, one root");
    assert!(!frames.is_empty(), "a flame graph with frames");
    frames
}

/// The frames named exactly `name`.
pub fn named<'f>(frames: &'f [Frame], name: &str) -> Vec<&'f Frame> {
    frames.iter().filter(|f| f.name == name).collect()
}
