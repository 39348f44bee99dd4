//! RFC 1035 zone file text: rendering and parsing. The zone-file DNS provider keeps
//! every record it finds (foreign ones verbatim) and only changes the record sets the
//! plan asks for. Pure text in, text out.

use std::collections::BTreeMap;

use crate::model::{RecordSet, RecordType};

/// The SOA of a zone file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soa {
    pub ttl: u32,
    pub mname: String,
    pub rname: String,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

/// One line of a zone: absolute name (no trailing dot), TTL, type, RDATA as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub name: String,
    pub ttl: u32,
    pub kind: String,
    pub rdata: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Without the trailing dot.
    pub origin: String,
    pub soa: Soa,
    /// Every record but the SOA, each value on its own line.
    pub lines: Vec<Line>,
}

impl Zone {
    /// A new zone with a placeholder name server (`localhost.`): replace the SOA and NS
    /// in the file and tlsward keeps them.
    pub fn new(origin: &str, ttl: u32, serial: u32) -> Zone {
        let origin = origin.trim_end_matches('.').to_ascii_lowercase();
        Zone {
            soa: Soa {
                ttl: 3600,
                mname: "localhost".into(),
                rname: format!("hostmaster.{origin}"),
                serial,
                refresh: 3600,
                retry: 600,
                expire: 604_800,
                minimum: ttl,
            },
            lines: vec![Line {
                name: origin.clone(),
                ttl: 3600,
                kind: "NS".into(),
                rdata: "localhost.".into(),
            }],
            origin,
        }
    }

    /// The record sets tlsward reasons about; other types appear as `Other`.
    pub fn record_sets(&self) -> Vec<RecordSet> {
        let mut sets: BTreeMap<(String, RecordType), (u32, Vec<String>)> = BTreeMap::new();
        for line in &self.lines {
            let (kind, value) = match line.kind.as_str() {
                "A" => (RecordType::A, line.rdata.clone()),
                "AAAA" => (RecordType::AAAA, line.rdata.clone()),
                "CNAME" => (RecordType::CNAME, line.rdata.trim_end_matches('.').to_ascii_lowercase()),
                "TXT" => (RecordType::TXT, unquote_txt(&line.rdata)),
                _ => (RecordType::Other, format!("{} {}", line.kind, line.rdata)),
            };
            let e = sets.entry((line.name.clone(), kind)).or_insert((line.ttl, Vec::new()));
            e.1.push(value);
        }
        sets.into_iter()
            .map(|((name, kind), (ttl, values))| RecordSet::new(name, kind, ttl, values))
            .collect()
    }

    /// Replaces (or with `None`, removes) the record set `name`/`kind`.
    pub fn set(&mut self, name: &str, kind: RecordType, replacement: Option<&RecordSet>) {
        let k = kind.as_str();
        self.lines.retain(|l| !(l.name == name && l.kind == k));
        if let Some(set) = replacement {
            for v in &set.values {
                let rdata = match kind {
                    RecordType::CNAME => format!("{v}."),
                    RecordType::TXT => quote_txt(v),
                    _ => v.clone(),
                };
                self.lines.push(Line {
                    name: name.to_string(),
                    ttl: set.ttl,
                    kind: k.to_string(),
                    rdata,
                });
            }
        }
    }

    pub fn render(&self) -> String {
        let s = &self.soa;
        let mut out = format!(
            "; Zone {origin}. maintained by tlsward: records without tlsward's ownership record are kept as they are.\n$ORIGIN {origin}.\n@\t{}\tIN\tSOA\t{}. {}. {} {} {} {} {}\n",
            s.ttl,
            s.mname,
            s.rname,
            s.serial,
            s.refresh,
            s.retry,
            s.expire,
            s.minimum,
            origin = self.origin
        );
        let mut lines = self.lines.clone();
        lines.sort();
        lines.dedup();
        for l in lines {
            out.push_str(&format!("{}.\t{}\tIN\t{}\t{}\n", l.name, l.ttl, l.kind, l.rdata));
        }
        out
    }
}

fn quote_txt(v: &str) -> String {
    // At most 255 octets a string (cut between characters), `""` for empty text.
    crate::dns::content(RecordType::TXT, v)
}

pub fn unquote_txt(rdata: &str) -> String {
    let mut out = String::new();
    let mut chars = rdata.chars();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => in_quotes = !in_quotes,
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c if in_quotes => out.push(c),
            c if !c.is_whitespace() => out.push(c),
            _ => {}
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Strips a comment (outside quotes) from a line.
fn strip_comment(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_quotes = !in_quotes,
            ';' if !in_quotes => return &line[..i],
            _ => {}
        }
        escaped = false;
    }
    line
}

/// A line's grouping parentheses (outside quoted strings: `"a (b"` is text) as a
/// depth change, and the line with them blanked out.
fn ungroup(content: &str) -> (i32, String) {
    let mut delta = 0;
    let mut out = String::with_capacity(content.len());
    let mut in_quotes = false;
    let mut escaped = false;
    for c in content.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => in_quotes = !in_quotes,
            '(' if !in_quotes => {
                delta += 1;
                out.push(' ');
                continue;
            }
            ')' if !in_quotes => {
                delta -= 1;
                out.push(' ');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (delta, out)
}

/// Splits on whitespace, keeping quoted strings whole (quotes included).
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                cur.push(c);
                in_quotes = !in_quotes;
            }
            c if c.is_whitespace() && !in_quotes => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn absolute(name: &str, origin: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name == "@" {
        origin.to_string()
    } else if let Some(abs) = name.strip_suffix('.') {
        abs.to_string()
    } else {
        format!("{name}.{origin}")
    }
}

const CLASSES: [&str; 4] = ["IN", "CH", "HS", "CS"];

/// Parses a zone file of `origin` (entries are joined across parentheses).
pub fn parse(text: &str, origin: &str) -> Result<Zone, ParseError> {
    let mut origin = origin.trim_end_matches('.').to_ascii_lowercase();
    let mut default_ttl: Option<u32> = None;
    let mut last_name: Option<String> = None;
    let mut soa = None;
    let mut lines = Vec::new();
    let mut pending = String::new();
    let mut pending_start = 0;
    let mut depth = 0i32;
    let mut starts_blank = false;
    for (i, raw) in text.lines().enumerate() {
        let content = strip_comment(raw);
        if depth == 0 {
            pending_start = i + 1;
            starts_blank = content.starts_with([' ', '\t']);
        }
        let (delta, ungrouped) = ungroup(content);
        depth += delta;
        pending.push(' ');
        pending.push_str(&ungrouped);
        if depth > 0 {
            continue;
        }
        let entry = std::mem::take(&mut pending);
        let toks = tokens(&entry);
        if toks.is_empty() {
            continue;
        }
        let err = |message: String| ParseError {
            line: pending_start,
            message,
        };
        match toks[0].as_str() {
            "$ORIGIN" => {
                origin = toks
                    .get(1)
                    .ok_or_else(|| err("$ORIGIN needs a name".into()))?
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                continue;
            }
            "$TTL" => {
                default_ttl = Some(
                    toks.get(1)
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| err("$TTL needs seconds".into()))?,
                );
                continue;
            }
            t if t.starts_with('$') => return Err(err(format!("{t} is not supported"))),
            _ => {}
        }
        let mut rest = toks.as_slice();
        let name = if starts_blank {
            last_name
                .clone()
                .ok_or_else(|| err("a record without an owner name".into()))?
        } else {
            let n = absolute(&rest[0], &origin);
            rest = &rest[1..];
            n
        };
        last_name = Some(name.clone());
        let mut ttl = None;
        while let Some(t) = rest.first() {
            if let Ok(v) = t.parse::<u32>() {
                ttl = Some(v);
            } else if !CLASSES.contains(&t.to_ascii_uppercase().as_str()) {
                break;
            }
            rest = &rest[1..];
        }
        let kind = rest
            .first()
            .ok_or_else(|| err("a record without a type".into()))?
            .to_ascii_uppercase();
        let rdata: Vec<&String> = rest[1..].iter().collect();
        let ttl = ttl.or(default_ttl).unwrap_or(3600);
        if kind == "SOA" {
            let n = |i: usize| -> Result<u32, ParseError> {
                rdata
                    .get(i)
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| err(format!("SOA field {} is not a number", i + 1)))
            };
            soa = Some(Soa {
                ttl,
                mname: absolute(rdata.first().ok_or_else(|| err("SOA without MNAME".into()))?, &origin),
                rname: absolute(rdata.get(1).ok_or_else(|| err("SOA without RNAME".into()))?, &origin),
                serial: n(2)?,
                refresh: n(3)?,
                retry: n(4)?,
                expire: n(5)?,
                minimum: n(6)?,
            });
            continue;
        }
        let rdata_text = match kind.as_str() {
            "CNAME" | "NS" | "PTR" => format!(
                "{}.",
                absolute(
                    rdata.first().ok_or_else(|| err(format!("{kind} without a target")))?,
                    &origin
                )
            ),
            _ => rdata.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
        };
        if rdata_text.is_empty() {
            return Err(err(format!("{kind} record without data")));
        }
        lines.push(Line {
            name,
            ttl,
            kind,
            rdata: rdata_text,
        });
    }
    if depth != 0 {
        return Err(ParseError {
            line: pending_start,
            message: "unbalanced parentheses".into(),
        });
    }
    let soa = soa.ok_or(ParseError {
        line: 1,
        message: "the zone has no SOA record".into(),
    })?;
    Ok(Zone { origin, soa, lines })
}

/// The next SOA serial. A zone that counts by date (YYYYMMDDnn, or a new zone at 0)
/// moves to today's date when that is larger; a zone that counts up keeps counting.
pub fn next_serial(current: u32, today_yyyymmdd: u32) -> u32 {
    let counts_by_date = current == 0 || current >= 1_970_010_100;
    if counts_by_date {
        current.wrapping_add(1).max(today_yyyymmdd.saturating_mul(100))
    } else {
        current.wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_zone_parses_with_relative_names_and_parentheses() {
        let text = "$ORIGIN z.example.\n$TTL 300\n@ IN SOA ns1 admin (\n  2024010100 ; serial\n  3600 600 604800 60 )\n  IN NS ns1\nns1 IN A 192.0.2.1\nwww 60 IN CNAME lb.example.net.\n@ IN MX 10 mail\ntxt IN TXT \"a;b\" \"c\"\n";
        let z = parse(text, "z.example.").unwrap();
        assert_eq!(z.soa.serial, 2024010100);
        assert_eq!(z.soa.mname, "ns1.z.example");
        let sets = z.record_sets();
        assert!(sets.contains(&RecordSet::new(
            "www.z.example",
            RecordType::CNAME,
            60,
            vec!["lb.example.net".into()]
        )));
        assert!(sets.contains(&RecordSet::new(
            "txt.z.example",
            RecordType::TXT,
            300,
            vec!["a;bc".into()]
        )));
        assert!(sets.contains(&RecordSet::new(
            "z.example",
            RecordType::Other,
            300,
            vec!["MX 10 mail".into(), "NS ns1.z.example.".into()]
        )));
    }

    #[test]
    fn render_then_parse_round_trips() {
        let mut z = Zone::new("z.example.", 60, 2026112500);
        z.set(
            "www.z.example",
            RecordType::A,
            Some(&RecordSet::new(
                "www.z.example",
                RecordType::A,
                60,
                vec!["203.0.113.10".into()],
            )),
        );
        z.set(
            "_tlsward.www.z.example",
            RecordType::TXT,
            Some(&RecordSet::new(
                "_tlsward.www.z.example",
                RecordType::TXT,
                60,
                vec!["heritage=tlsward,tlsward/owner=o".into()],
            )),
        );
        let back = parse(&z.render(), "z.example.").unwrap();
        assert_eq!(back.record_sets(), z.record_sets());
        assert_eq!(back.soa, z.soa);
    }

    #[test]
    fn parentheses_and_semicolons_inside_quotes_are_text() {
        let text = "$ORIGIN z.example.\n@ 3600 IN SOA ns. h. ( 1 2 3 4\n 5 )\na 60 IN TXT \"x (y; z\" ; a comment\nb 60 IN TXT \"\\\" )\"\n";
        let z = parse(text, "z.example").unwrap();
        let sets = z.record_sets();
        let txt = |n: &str| sets.iter().find(|s| s.name == n).unwrap().values.clone();
        assert_eq!(txt("a.z.example"), ["x (y; z"]);
        assert_eq!(txt("b.z.example"), ["\" )"]);
        assert_eq!(z.soa.minimum, 5);
    }

    #[test]
    fn long_txt_values_are_split_and_joined_back() {
        let long = "x".repeat(600);
        let mut z = Zone::new("z.example.", 60, 1);
        z.set(
            "t.z.example",
            RecordType::TXT,
            Some(&RecordSet::new("t.z.example", RecordType::TXT, 60, vec![long.clone()])),
        );
        let back = parse(&z.render(), "z.example").unwrap();
        assert_eq!(
            back.record_sets()
                .iter()
                .find(|r| r.kind == RecordType::TXT)
                .unwrap()
                .values,
            vec![long]
        );
    }

    #[test]
    fn serials_move_forward_and_follow_the_date() {
        assert_eq!(next_serial(0, 20261125), 2026112500);
        assert_eq!(next_serial(7, 20261125), 8, "a counting zone keeps counting");
        assert_eq!(next_serial(2026112500, 20261125), 2026112501);
        assert_eq!(next_serial(2026112599, 20261125), 2026112600);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("$ORIGIN z.example.\n@ IN SOA a b 1 2 3\n", "z.example").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            parse("www IN A 1.2.3.4\n", "z.example")
                .unwrap_err()
                .message
                .contains("no SOA")
        );
    }
}
