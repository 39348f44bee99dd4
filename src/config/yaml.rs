//! YAML text to a JSON value plus the position of every key and value in it.
//!
//! This is the only place that sees YAML syntax; everything after it works on
//! `serde_json::Value` and asks `Positions` where a JSON pointer came from. It never
//! interprets what the values mean.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput};
use serde_json::{Map, Number, Value};

/// A 1-based line and column in the config text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// Where each value (and each mapping key) sits, keyed by JSON pointer (`/sites/0/name`).
#[derive(Debug, Default)]
pub struct Positions {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Positions {
    /// The position of the value at `pointer`, or of its nearest ancestor that has one.
    pub fn value(&self, pointer: &str) -> Pos {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Pos::START,
            }
        }
    }

    /// The position of the mapping key that names `pointer`, else of its value.
    pub fn key(&self, pointer: &str) -> Pos {
        self.keys.get(pointer).copied().unwrap_or_else(|| self.value(pointer))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. An empty document is `null`.
pub fn parse(text: &str) -> Result<(Value, Positions), SyntaxError> {
    let mut loader = Loader {
        parser: Parser::new_from_str(text),
        positions: Positions::default(),
        record: true,
        anchors: HashMap::new(),
    };
    let value = loader.document()?;
    Ok((value, loader.positions))
}

/// Every document of a multi-document stream (`---` between them), one at a time,
/// each with the position where it starts; empty documents are skipped. Positions
/// inside a document are not kept: a stream can be large, and only one document's
/// values are alive at once.
pub fn documents(text: &str) -> Documents<'_> {
    Documents {
        loader: Loader {
            parser: Parser::new_from_str(text),
            positions: Positions::default(),
            record: false,
            anchors: HashMap::new(),
        },
        start: Pos::START,
        done: false,
    }
}

pub struct Documents<'a> {
    loader: Loader<'a>,
    start: Pos,
    done: bool,
}

impl Iterator for Documents<'_> {
    type Item = Result<(Value, Pos), SyntaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let (ev, span) = match self.loader.next() {
                Ok(next) => next,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => self.done = true,
                Event::DocumentStart(_) => {
                    self.start = Pos::of(&span);
                    self.loader.anchors.clear();
                }
                ev => match self.loader.node(ev, span, "") {
                    Ok(Value::Null) => {}
                    Ok(value) => return Some(Ok((value, self.start))),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
            }
        }
        None
    }
}

struct Loader<'a> {
    parser: Parser<'a, StrInput<'a>>,
    positions: Positions,
    /// Whether to keep the position of every value (one config) or not (a stream).
    record: bool,
    anchors: HashMap<usize, Value>,
}

impl<'a> Loader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(scan_error(&e)),
            None => Err(SyntaxError {
                pos: Pos::START,
                message: "unexpected end of YAML input".into(),
            }),
        }
    }

    fn document(&mut self) -> Result<Value, SyntaxError> {
        let mut value = Value::Null;
        let mut documents = 0;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(value),
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(SyntaxError {
                            pos: Pos::of(&span),
                            message: "expected one YAML document, found a second one".into(),
                        });
                    }
                }
                ev => value = self.node(ev, span, "")?,
            }
        }
    }

    fn node(&mut self, ev: Event<'a>, span: Span, pointer: &str) -> Result<Value, SyntaxError> {
        if self.record {
            self.positions.values.insert(pointer.to_string(), Pos::of(&span));
        }
        let (value, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let forced_string = tag.as_ref().is_some_and(|t| t.suffix == "str");
                (scalar(&text, style, forced_string), anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    let child = if self.record {
                        format!("{pointer}/{}", items.len())
                    } else {
                        String::new()
                    };
                    items.push(self.node(ev, span, &child)?);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                loop {
                    let (ev, key_span) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = match ev {
                        Event::Scalar(text, ..) => text.into_owned(),
                        _ => {
                            return Err(SyntaxError {
                                pos: Pos::of(&key_span),
                                message: "mapping keys must be plain strings".into(),
                            });
                        }
                    };
                    let child = if self.record {
                        format!("{pointer}/{}", escape_pointer(&key))
                    } else {
                        String::new()
                    };
                    if map.contains_key(&key) {
                        return Err(SyntaxError {
                            pos: Pos::of(&key_span),
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    if self.record {
                        self.positions.keys.insert(child.clone(), Pos::of(&key_span));
                    }
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span, &child)?;
                    map.insert(key, value);
                }
                (Value::Object(map), anchor)
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(v) => (v.clone(), 0),
                None => {
                    return Err(SyntaxError {
                        pos: Pos::of(&span),
                        message: "alias to an unknown anchor".into(),
                    });
                }
            },
            other => {
                return Err(SyntaxError {
                    pos: Pos::of(&span),
                    message: format!("unexpected YAML event {other:?}"),
                });
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }
}

fn scan_error(e: &ScanError) -> SyntaxError {
    SyntaxError {
        pos: Pos {
            line: e.marker().line(),
            col: e.marker().col() + 1,
        },
        message: format!("YAML syntax error: {}", e.info()),
    }
}

/// Escapes a key for use as one JSON pointer segment (RFC 6901).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Resolves a scalar with the YAML 1.2 core schema; quoted scalars are always strings.
fn scalar(text: &str, style: ScalarStyle, forced_string: bool) -> Value {
    if forced_string || style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = integer(text) {
        return Value::Number(n);
    }
    if looks_like_float(text)
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

fn integer(text: &str) -> Option<Number> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if neg {
        let v = i64::try_from(magnitude).ok()?;
        Some(Number::from(-v))
    } else {
        Some(Number::from(magnitude))
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['-', '+']);
    !t.is_empty()
        && t.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '.')
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_the_core_schema() {
        let (v, _) = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 30d\ng: 0x10\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":1,"b":"1","c":true,"d":null,"e":1.5,"f":"30d","g":16})
        );
    }

    #[test]
    fn positions_point_at_keys_and_values() {
        let (_, p) = parse("sites:\n  - name: a\n    hosts: [x.example]\n").unwrap();
        assert_eq!(p.value("/sites/0/name"), Pos { line: 2, col: 11 });
        assert_eq!(p.key("/sites/0/hosts"), Pos { line: 3, col: 5 });
        assert_eq!(p.value("/sites/0/hosts/0"), Pos { line: 3, col: 13 });
        // unknown pointers fall back to the nearest ancestor
        assert_eq!(p.value("/sites/0/route/to"), Pos { line: 2, col: 5 });
    }

    #[test]
    fn duplicate_keys_are_errors_with_their_position() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 1 });
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("YAML syntax error"), "{}", e.message);
        assert!(e.pos.line >= 1);
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let (v, _) = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(v["b"], serde_json::json!({"k": 1}));
    }
}
