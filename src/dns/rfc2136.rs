//! RFC 2136 dynamic updates signed with TSIG (RFC 8945).
//!
//! All changes for a zone travel in one UPDATE message, so the server applies them
//! all or none (a diff too large for one 64 KiB message is split between names, never
//! within one). Its prerequisite section re-checks the ownership tlsward planned from
//! (the exact ownership TXT RRset, or a still-free name), so a concurrent change by
//! someone else makes the update fail instead of clobbering their records.
//!
//! State is read with one TSIG-signed AXFR over TCP: a consistent snapshot of the
//! whole zone in one exchange, which shows foreign records of every type (a CNAME may
//! not join them) — targeted queries would cost several round trips per host and
//! still miss types nobody asked for.
//!
//! Messages are built with `hickory-proto` and signed with its `TSigner`; the transport
//! is a few lines of tokio here rather than `hickory-net`'s client, so that a refused
//! signature is reported from the TSIG error field (BADSIG, BADKEY, BADTIME) by key
//! name, and an update too large for UDP, or a truncated answer, goes over TCP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType as WireType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::registry::{Change, Guard, ZoneDiff};
use super::{DnsError, DnsProvider};
use crate::config::{Rfc2136Spec, TsigAlgorithm as ConfigAlgorithm};
use crate::model::{RecordSet, RecordType};

/// Largest update sent over UDP (the EDNS-safe size); larger ones go over TCP.
const UDP_LIMIT: usize = 1232;
/// Room for one UPDATE message's records, below the 64 KiB limit (TSIG and header aside).
const MESSAGE_BUDGET: usize = 60_000;
const TIMEOUT: Duration = Duration::from_secs(3);
const UDP_ATTEMPTS: u32 = 2;
const FUDGE: u16 = 300;

pub struct Rfc2136Provider {
    name: String,
    server: SocketAddr,
    zone: Name,
    zone_text: String,
    key_name: String,
    signer: TSigner,
    /// Bounds each whole exchange, however the server dribbles its answer.
    deadline: Duration,
}

/// Reads a TSIG secret: either bare base64, or `tsig-keygen` output (`secret "…";`).
pub fn parse_tsig_secret(text: &str) -> Result<Vec<u8>, String> {
    let b64 = match text.find("secret") {
        Some(i) => text[i..]
            .split('"')
            .nth(1)
            .ok_or("a `secret \"…\";` line without a quoted value")?,
        None => text.trim(),
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("the secret is not base64: {e}"))
}

fn wire_type(kind: RecordType) -> WireType {
    match kind {
        RecordType::A => WireType::A,
        RecordType::AAAA => WireType::AAAA,
        RecordType::CNAME => WireType::CNAME,
        RecordType::TXT => WireType::TXT,
        RecordType::Other => WireType::ANY,
    }
}

fn fqdn(name: &str) -> Result<Name, String> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).map_err(|e| format!("`{name}`: {e}"))
}

fn rdata(kind: RecordType, value: &str) -> Result<RData, String> {
    Ok(match kind {
        RecordType::A => RData::A(A(value.parse::<Ipv4Addr>().map_err(|e| format!("{value}: {e}"))?)),
        RecordType::AAAA => RData::AAAA(AAAA(value.parse::<Ipv6Addr>().map_err(|e| format!("{value}: {e}"))?)),
        RecordType::CNAME => RData::CNAME(CNAME(fqdn(value)?)),
        RecordType::TXT => RData::TXT(TXT::new(
            value
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        )),
        RecordType::Other => return Err("tlsward never writes records of other types".into()),
    })
}

/// A prerequisite or update record: `class` NONE/ANY carry no data (RFC 2136 §2.4, §2.5).
fn bare(name: Name, kind: WireType, class: DNSClass) -> Record {
    let mut r = Record::update0(name, 0, kind);
    r.dns_class = class;
    r
}

fn describe_rcode(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::Refused => "REFUSED: the server does not allow this update (check allow-update for the key)",
        ResponseCode::NotAuth => "NOTAUTH: the server is not authoritative for the zone, or refused the key",
        ResponseCode::NotZone => "NOTZONE: a name is outside the zone",
        ResponseCode::YXDomain | ResponseCode::YXRRSet | ResponseCode::NXRRSet | ResponseCode::NXDomain => {
            "the zone changed since tlsward read it (a prerequisite failed); the next pass re-reads it"
        }
        ResponseCode::ServFail => "SERVFAIL: the server failed to apply the update",
        ResponseCode::FormErr => "FORMERR: the server could not parse the update",
        ResponseCode::NotImp => "NOTIMP: the server does not support dynamic updates",
        _ => "an unexpected response code",
    }
}

impl Rfc2136Provider {
    /// `deadline` bounds each whole exchange (an UPDATE with its retries, a zone transfer).
    pub fn new(name: &str, spec: &Rfc2136Spec, secret: &[u8], deadline: Duration) -> Result<Self, DnsError> {
        let invalid = |detail: String| DnsError::Config {
            provider: name.to_string(),
            detail,
        };
        let algorithm = match spec.tsig.algorithm {
            ConfigAlgorithm::HmacSha256 => TsigAlgorithm::HmacSha256,
            ConfigAlgorithm::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        let key_name = fqdn(&spec.tsig.name).map_err(invalid)?;
        let signer = TSigner::new(secret.to_vec(), algorithm, key_name, FUDGE).map_err(|e| invalid(e.to_string()))?;
        Ok(Rfc2136Provider {
            name: name.to_string(),
            server: spec
                .server
                .parse()
                .map_err(|e| invalid(format!("server `{}`: {e}", spec.server)))?,
            zone: fqdn(&spec.zone).map_err(invalid)?,
            zone_text: spec.zone.trim_end_matches('.').to_ascii_lowercase(),
            key_name: spec.tsig.name.clone(),
            signer,
            deadline,
        })
    }

    /// Runs one exchange (`step` names it) within the request deadline.
    async fn within<T>(&self, step: &str, exchange: impl Future<Output = Result<T, DnsError>>) -> Result<T, DnsError> {
        tokio::time::timeout(self.deadline, exchange).await.unwrap_or_else(|_| {
            Err(self.unreachable(format!(
                "{step}: no complete answer within {}s (deadlines.request)",
                self.deadline.as_secs()
            )))
        })
    }

    fn unreachable(&self, detail: String) -> DnsError {
        DnsError::Server {
            provider: self.name.clone(),
            server: self.server.to_string(),
            detail,
        }
    }

    fn tsig_error(&self, detail: String) -> DnsError {
        DnsError::Tsig {
            provider: self.name.clone(),
            server: self.server.to_string(),
            key: self.key_name.clone(),
            detail,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Checks a response's TSIG: a server-side TSIG error is named, a bad MAC rejected.
    fn check_signature(
        &self,
        bytes: &[u8],
        message: &Message,
        verifier: &mut hickory_proto::rr::TSigVerifier,
    ) -> Result<(), DnsError> {
        match message.signature.as_ref().map(|s| s.data.error) {
            Some(Some(error)) => {
                let what = match error {
                    TsigError::BadSig => "BADSIG: the server rejected the signature (wrong secret)".to_string(),
                    TsigError::BadKey => {
                        "BADKEY: the server does not know this key (wrong name or algorithm)".to_string()
                    }
                    TsigError::BadTime => {
                        "BADTIME: the clocks of tlsward and the server differ by more than 5 minutes".to_string()
                    }
                    other => format!("TSIG error {other:?}"),
                };
                return Err(self.tsig_error(what));
            }
            // An unsigned refusal is the server's answer to an update it would not
            // attribute to the key; an unsigned success cannot be trusted.
            None if message.metadata.response_code != ResponseCode::NoError => {
                return Err(self.rcode_error(message.metadata.response_code));
            }
            None => {
                return Err(self.tsig_error("the response is not signed: is the key configured on the server?".into()));
            }
            Some(None) => {}
        }
        verifier
            .verify(bytes)
            .map(|_| ())
            .map_err(|e| self.tsig_error(format!("the response's signature does not verify: {e}")))
    }

    /// Sends one signed message and returns the verified answer.
    async fn exchange(&self, mut message: Message) -> Result<Message, DnsError> {
        let mut verifier = message
            .finalize(&self.signer, Self::now())
            .map_err(|e| self.tsig_error(format!("cannot sign: {e}")))?
            .ok_or_else(|| self.tsig_error("no verifier for the response".into()))?;
        let bytes = message
            .to_vec()
            .map_err(|e| self.unreachable(format!("cannot encode the message: {e}")))?;
        let id = message.metadata.id;
        let mut answer = None;
        if bytes.len() <= UDP_LIMIT {
            answer = Some(self.within("UPDATE over UDP", self.udp(&bytes, id)).await?);
        }
        let raw = match answer {
            Some(raw) if !Message::from_vec(&raw).map(|m| m.metadata.truncation).unwrap_or(false) => raw,
            _ => self.within("UPDATE over TCP", self.tcp(&bytes, 1)).await?.remove(0),
        };
        let response = Message::from_vec(&raw).map_err(|e| self.unreachable(format!("unreadable response: {e}")))?;
        self.check_signature(&raw, &response, &mut verifier)?;
        Ok(response)
    }

    async fn udp(&self, bytes: &[u8], id: u16) -> Result<Vec<u8>, DnsError> {
        let bind: SocketAddr = if self.server.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        socket
            .connect(self.server)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let mut last = String::new();
        for _ in 0..UDP_ATTEMPTS {
            socket.send(bytes).await.map_err(|e| self.unreachable(e.to_string()))?;
            let mut buf = vec![0u8; 65_535];
            loop {
                match tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                        buf.truncate(n);
                        return Ok(buf);
                    }
                    Ok(Ok(_)) => continue, // a stray datagram: keep waiting for ours
                    Ok(Err(e)) => {
                        last = e.to_string();
                        break;
                    }
                    Err(_) => {
                        last = format!("no answer within {}s", TIMEOUT.as_secs());
                        break;
                    }
                }
            }
        }
        Err(self.unreachable(last))
    }

    /// Sends one message over TCP and reads answers until `done` says the exchange is
    /// complete (one for an update; the closing SOA for a zone transfer).
    async fn tcp_with(&self, bytes: &[u8], mut done: impl FnMut(&Message) -> bool) -> Result<Vec<Vec<u8>>, DnsError> {
        let io = |e: std::io::Error| self.unreachable(e.to_string());
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(self.server))
            .await
            .map_err(|_| self.unreachable(format!("no TCP connection within {}s", TIMEOUT.as_secs())))?
            .map_err(io)?;
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .map_err(io)?;
        stream.write_all(bytes).await.map_err(io)?;
        let mut out = Vec::new();
        loop {
            let mut len = [0u8; 2];
            tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
                .await
                .map_err(|_| self.unreachable("the TCP answer stopped".into()))?
                .map_err(io)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            tokio::time::timeout(TIMEOUT, stream.read_exact(&mut buf))
                .await
                .map_err(|_| self.unreachable("the TCP answer stopped".into()))?
                .map_err(io)?;
            let message = Message::from_vec(&buf).map_err(|e| self.unreachable(format!("unreadable response: {e}")))?;
            let finished = done(&message) || message.metadata.response_code != ResponseCode::NoError;
            out.push(buf);
            if finished {
                return Ok(out);
            }
        }
    }

    async fn tcp(&self, bytes: &[u8], count: usize) -> Result<Vec<Vec<u8>>, DnsError> {
        let mut seen = 0;
        self.tcp_with(bytes, |_| {
            seen += 1;
            seen >= count
        })
        .await
    }

    fn rcode_error(&self, code: ResponseCode) -> DnsError {
        DnsError::Rejected {
            provider: self.name.clone(),
            server: self.server.to_string(),
            detail: format!("{} (zone {})", describe_rcode(code), self.zone_text),
        }
    }

    /// Builds the UPDATE for a diff (RFC 2136 §2.4 prerequisites, §2.5 updates): one
    /// message, or — when it would pass the 64 KiB a DNS message can hold — several,
    /// each carrying whole names (a name's guard with all of its changes).
    pub fn update_messages(&self, diff: &ZoneDiff) -> Result<Vec<Message>, String> {
        use std::collections::BTreeMap;
        let mut units: BTreeMap<String, (Vec<&Guard>, Vec<&Change>)> = BTreeMap::new();
        for g in &diff.guards {
            units.entry(g.host()).or_default().0.push(g);
        }
        for c in &diff.changes {
            units
                .entry(super::registry::host_of_record(&c.record().name))
                .or_default()
                .1
                .push(c);
        }
        let encoded = |m: &Message| m.to_vec().map(|b| b.len()).map_err(|e| e.to_string());
        let mut messages = Vec::new();
        let mut current = self.new_update();
        // The message's size when last encoded, and an upper bound of what was added
        // since (records without name compression): encoding the whole message only
        // when the bound passes the budget keeps 10,000 names linear, not quadratic.
        let (mut known, mut added) = (encoded(&current)?, 0usize);
        for (guards, changes) in units.values() {
            let (answers, authorities) = (current.answers.len(), current.authorities.len());
            for g in guards {
                add_guard(&mut current, g)?;
            }
            for c in changes {
                add_change(&mut current, c)?;
            }
            added += current.answers[answers..]
                .iter()
                .chain(&current.authorities[authorities..])
                .map(uncompressed_len)
                .sum::<usize>();
            if known + added <= MESSAGE_BUDGET {
                continue;
            }
            // Measured encoded, since name compression only reaches the first 16 KiB.
            (known, added) = (encoded(&current)?, 0);
            if known > MESSAGE_BUDGET && answers + authorities > 0 {
                let mut next = self.new_update();
                next.answers = current.answers.split_off(answers);
                next.authorities = current.authorities.split_off(authorities);
                messages.push(std::mem::replace(&mut current, next));
                known = encoded(&current)?;
            }
        }
        if !current.answers.is_empty() || !current.authorities.is_empty() {
            messages.push(current);
        }
        Ok(messages)
    }

    fn new_update(&self) -> Message {
        let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Update);
        m.add_query(Query::query(self.zone.clone(), WireType::SOA));
        m
    }
}

/// A record's size on the wire without name compression (an upper bound of its share of
/// a message).
fn uncompressed_len(record: &Record) -> usize {
    use hickory_proto::serialize::binary::BinEncodable;
    record.to_bytes().map(|b| b.len()).unwrap_or(512)
}

fn add_guard(m: &mut Message, guard: &Guard) -> Result<(), String> {
    match guard {
        Guard::Owned { ownership } => {
            // "RRset exists (value dependent)": exactly the records tlsward saw.
            let name = fqdn(&ownership.name)?;
            for v in &ownership.values {
                m.add_answer(Record::from_rdata(name.clone(), 0, rdata(RecordType::TXT, v)?));
            }
        }
        Guard::Free { name, cname } => {
            let host = fqdn(name)?;
            m.add_answer(bare(
                fqdn(&super::registry::ownership_name(name))?,
                WireType::TXT,
                DNSClass::NONE,
            ));
            if *cname {
                // "Name is not in use": a CNAME may not join anything.
                m.add_answer(bare(host, WireType::ANY, DNSClass::NONE));
            } else {
                for &t in super::registry::managed_types(name) {
                    m.add_answer(bare(host.clone(), wire_type(t), DNSClass::NONE));
                }
            }
        }
    }
    Ok(())
}

fn add_change(m: &mut Message, change: &Change) -> Result<(), String> {
    let set = change.record();
    let name = fqdn(&set.name)?;
    // Delete the RRset, then (for an upsert) add its new records.
    m.add_authority(bare(name.clone(), wire_type(set.kind), DNSClass::ANY));
    if let Change::Upsert(set) = change {
        for v in &set.values {
            m.add_authority(Record::from_rdata(name.clone(), set.ttl, rdata(set.kind, v)?));
        }
    }
    Ok(())
}

fn to_record_sets(records: Vec<Record>, zone: &str) -> Vec<RecordSet> {
    use std::collections::BTreeMap;
    let mut sets: BTreeMap<(String, RecordType), (u32, Vec<String>)> = BTreeMap::new();
    for r in records {
        let name = r.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        if !(name == zone || name.ends_with(&format!(".{zone}"))) {
            continue;
        }
        let (kind, value) = match &r.data {
            RData::A(a) => (RecordType::A, a.0.to_string()),
            RData::AAAA(a) => (RecordType::AAAA, a.0.to_string()),
            RData::CNAME(c) => (
                RecordType::CNAME,
                c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
            ),
            RData::TXT(t) => (
                RecordType::TXT,
                t.txt_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            ),
            other => (RecordType::Other, format!("{} {other}", r.record_type())),
        };
        let e = sets.entry((name, kind)).or_insert((r.ttl, Vec::new()));
        e.1.push(value);
    }
    sets.into_iter()
        .map(|((name, kind), (ttl, values))| RecordSet::new(name, kind, ttl, values))
        .collect()
}

#[async_trait]
impl DnsProvider for Rfc2136Provider {
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError> {
        let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        m.add_query(Query::query(self.zone.clone(), WireType::AXFR));
        let mut verifier = m
            .finalize(&self.signer, Self::now())
            .map_err(|e| self.tsig_error(format!("cannot sign: {e}")))?
            .ok_or_else(|| self.tsig_error("no verifier for the response".into()))?;
        let bytes = m.to_vec().map_err(|e| self.unreachable(e.to_string()))?;
        let mut soas = 0;
        let transfer = self.tcp_with(&bytes, |msg| {
            soas += msg.answers.iter().filter(|r| r.record_type() == WireType::SOA).count();
            soas >= 2
        });
        let raw = self.within("zone transfer (AXFR)", transfer).await?;
        let mut records = Vec::new();
        for buf in raw {
            let msg = Message::from_vec(&buf).map_err(|e| self.unreachable(e.to_string()))?;
            if msg.signature.is_some() || records.is_empty() {
                self.check_signature(&buf, &msg, &mut verifier)?;
            }
            if msg.metadata.response_code != ResponseCode::NoError {
                return Err(self.rcode_error(msg.metadata.response_code));
            }
            records.extend(msg.answers.into_iter().filter(|r| r.record_type() != WireType::SOA));
        }
        Ok(to_record_sets(records, &self.zone_text))
    }

    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError> {
        if diff.changes.is_empty() {
            return Ok(());
        }
        let messages = self.update_messages(diff).map_err(|detail| DnsError::Config {
            provider: self.name.clone(),
            detail,
        })?;
        for message in messages {
            let response = self.exchange(message).await?;
            if response.metadata.response_code != ResponseCode::NoError {
                return Err(self.rcode_error(response.metadata.response_code));
            }
        }
        Ok(())
    }
}
