//! The ACME issuer (RFC 8555, through `instant-acme`): an account created once and
//! kept in the store's state, orders for a site's hosts, HTTP-01 answered by tlsward's
//! solver endpoint or DNS-01 through the site's DNS provider (with the same ownership
//! rules as every other record), a key made here and sent only as a CSR.
//!
//! Challenge records and tokens are removed after every attempt, whether it succeeded
//! or not. Transient failures (a nonce storm past instant-acme's own retries, a server
//! that is restarting) are retried a few times with backoff inside one issuance; the
//! daemon's per-site backoff covers the rest.

mod http;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ca::generate_key;
use super::{IssueError, Issued, Issuer, Retryable, ServerRequest};
use crate::config::{AcmeSpec, DeadlinesSpec, KeyAlgorithm};
use crate::dns::DnsProvider;
use crate::dns::registry::{CHALLENGE_LABEL, DesiredName, diff_within};
use crate::model::{RecordSet, RecordType};
use crate::pki::PrivateKeyPem;
use crate::store::{StateFile, StateStore};

const ACCOUNT_FILE: &str = "account.json";
const ATTEMPTS: u32 = 4;
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn account_state(issuer: &str) -> String {
    format!("acme/{issuer}")
}

/// Where an issuer's CA's last long Retry-After is kept, so that a restart (or the
/// next `run --once`) keeps leaving it alone.
fn hold_state(issuer: &str) -> String {
    format!("acme/{issuer}-retry-after")
}

const HOLD_FILE: &str = "until";

/// Holds requests to the issuer's CA until the moment a previous process recorded,
/// when that is still ahead.
async fn restore_hold(name: &str, spec: &AcmeSpec, store: &dyn StateStore) {
    let until = match store.read_state(&hold_state(name)).await {
        Ok(files) => files
            .and_then(|f| f.get(HOLD_FILE).cloned())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| OffsetDateTime::parse(t.trim(), &time::format_description::well_known::Rfc3339).ok()),
        Err(e) => {
            tracing::warn!(issuer = %name, error = %e, "the recorded Retry-After cannot be read");
            None
        }
    };
    if let Some(until) = until.filter(|t| *t > OffsetDateTime::now_utc()) {
        tracing::info!(issuer = %name, until = %crate::plan::rfc3339(until), "the ACME server asked to be left alone before a restart (Retry-After): still holding");
        http::hold(&spec.directory, until);
    }
}

/// Where the leader publishes its pending HTTP-01 answers so that every replica behind
/// the solver Service can answer the CA (in a cluster: an owned ConfigMap all watch).
#[async_trait]
pub trait ChallengeBoard: Send + Sync {
    /// Replaces the published answers (token → key authorization) with `answers`.
    async fn publish(&self, answers: &BTreeMap<String, String>) -> Result<(), crate::store::StoreError>;
}

/// Answers of pending HTTP-01 challenges, served at `/.well-known/acme-challenge/<token>`:
/// this replica's own, and those another replica (the leader) published.
#[derive(Default)]
pub struct Http01Challenges {
    tokens: Mutex<HashMap<String, String>>,
    shared: Mutex<HashMap<String, String>>,
    board: Mutex<Option<Arc<dyn ChallengeBoard>>>,
}

impl Http01Challenges {
    pub fn answer(&self, token: &str) -> Option<String> {
        let own = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        own.or_else(|| {
            self.shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(token)
                .cloned()
        })
    }
    fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.into(), key_authorization.into());
    }
    fn remove(&self, token: &str) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
    }
    /// The answers another replica published, as last seen.
    pub fn set_shared(&self, answers: HashMap<String, String>) {
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = answers;
    }
    /// Where this replica publishes its own answers (set by the Kubernetes wiring).
    pub fn set_board(&self, board: Option<Arc<dyn ChallengeBoard>>) {
        *self.board.lock().unwrap_or_else(|e| e.into_inner()) = board;
    }
    /// Publishes this replica's pending answers, when there is a board.
    async fn publish(&self) -> Result<(), crate::store::StoreError> {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(board) = board else { return Ok(()) };
        let answers: BTreeMap<String, String> = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        board.publish(&answers).await
    }
}

/// Where the self-check reaches the gateway: its address (an IP or a hostname) and
/// plain-HTTP port.
#[derive(Clone, Debug)]
pub struct SelfCheck {
    pub address: String,
    pub port: u16,
}

/// How long the self-check waits for the gateway to serve an answer.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How an issuer proves control of a name.
pub enum Solver {
    /// The answers, and where to self-check them first (`None`: no address known, or
    /// `self_check: false`).
    Http01(Arc<Http01Challenges>, Option<SelfCheck>),
    Dns01 {
        provider_name: String,
        provider: Arc<dyn DnsProvider>,
        owner: String,
        ttl: u32,
        /// One challenge update at a time per provider: a zone is read, then written.
        lock: Arc<tokio::sync::Mutex<()>>,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

pub struct AcmeIssuer {
    name: String,
    spec: AcmeSpec,
    deadlines: DeadlinesSpec,
    store: Arc<dyn StateStore>,
    /// Replaced when the server no longer knows the stored account.
    account: tokio::sync::RwLock<Account>,
    solver: Solver,
    /// One permit per order open at once (`max_concurrent_orders`).
    orders: tokio::sync::Semaphore,
}

fn acme_error<'a>(issuer: &'a str, what: &'static str) -> impl Fn(instant_acme::Error) -> IssueError + 'a {
    move |e| {
        let detail = describe(&e);
        let issuer = issuer.to_string();
        if http::is_deadline(&e) {
            IssueError::Deadline { issuer, what, detail }
        } else if let Some(why) = retryable(&e) {
            IssueError::Retryable {
                issuer,
                what,
                detail,
                why,
            }
        } else {
            IssueError::Acme { issuer, what, detail }
        }
    }
}

/// Whether asking again may succeed, from the error's type: the problem document's
/// type (RFC 8555 §6.7), or a transport failure of our own client.
fn retryable(e: &instant_acme::Error) -> Option<Retryable> {
    const PREFIX: &str = "urn:ietf:params:acme:error:";
    match e {
        instant_acme::Error::Api(problem) => match problem.r#type.as_deref()?.strip_prefix(PREFIX)? {
            "badNonce" => Some(Retryable::BadNonce),
            "rateLimited" => Some(Retryable::RateLimited),
            _ => None,
        },
        instant_acme::Error::Other(inner) => inner
            .downcast_ref::<http::ExchangeError>()
            .and_then(|x| matches!(x, http::ExchangeError::Transport { .. }).then_some(Retryable::Unreachable)),
        _ => None,
    }
}

/// The error, with the ACME problem document's type and detail when there is one.
fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => {
            let kind = p
                .r#type
                .as_deref()
                .unwrap_or("problem")
                .trim_start_matches("urn:ietf:params:acme:error:");
            let mut text = format!("{kind}: {}", p.detail.as_deref().unwrap_or(""));
            for sub in &p.subproblems {
                text.push_str(&format!("; {}", sub.detail.as_deref().unwrap_or("")));
            }
            text
        }
        other => crate::deadline::chain(other),
    }
}

/// Whether the server refused the request's nonce (RFC 8555 §6.5): ask again.
fn bad_nonce(e: &IssueError) -> bool {
    matches!(
        e,
        IssueError::Retryable {
            why: Retryable::BadNonce,
            ..
        }
    )
}

impl AcmeIssuer {
    /// Restores the issuer's account from the store, or creates it (once) and saves it.
    pub async fn open(
        name: &str,
        spec: &AcmeSpec,
        deadlines: DeadlinesSpec,
        store: Arc<dyn StateStore>,
        solver: Solver,
    ) -> Result<AcmeIssuer, IssueError> {
        restore_hold(name, spec, store.as_ref()).await;
        let account = match stored_account(name, spec, deadlines, store.as_ref()).await? {
            Some(account) => account,
            None => {
                // A server may refuse any nonce (RFC 8555 §6.5): ask again with a fresh one.
                let mut attempt = 1;
                loop {
                    match create_account(name, spec, deadlines, store.as_ref()).await {
                        Err(e) if attempt < ATTEMPTS && bad_nonce(&e) => {
                            tracing::debug!(issuer = %name, attempt, "account creation: bad nonce; retrying");
                            attempt += 1;
                        }
                        other => break other?,
                    }
                }
            }
        };
        Ok(Self::with_account(name, spec, deadlines, store, solver, account))
    }

    /// Restores the stored account, creating nothing: `None` when there is none yet.
    pub async fn restore(
        name: &str,
        spec: &AcmeSpec,
        deadlines: DeadlinesSpec,
        store: Arc<dyn StateStore>,
        solver: Solver,
    ) -> Result<Option<AcmeIssuer>, IssueError> {
        restore_hold(name, spec, store.as_ref()).await;
        Ok(stored_account(name, spec, deadlines, store.as_ref())
            .await?
            .map(|account| Self::with_account(name, spec, deadlines, store, solver, account)))
    }

    fn with_account(
        name: &str,
        spec: &AcmeSpec,
        deadlines: DeadlinesSpec,
        store: Arc<dyn StateStore>,
        solver: Solver,
        account: Account,
    ) -> AcmeIssuer {
        AcmeIssuer {
            name: name.to_string(),
            spec: spec.clone(),
            deadlines,
            store,
            account: tokio::sync::RwLock::new(account),
            solver,
            orders: tokio::sync::Semaphore::new(spec.max_concurrent_orders.max(1)),
        }
    }

    /// The CA's suggested renewal window for a certificate (ARI, RFC 9773) and how long
    /// to wait before asking again; `None` when the CA offers no renewal information.
    pub async fn renewal_window(
        &self,
        chain_pem: &str,
    ) -> Result<Option<(OffsetDateTime, OffsetDateTime, Duration)>, IssueError> {
        let (aki, serial) = crate::pki::ari_certificate_id(chain_pem).map_err(|e| IssueError::Acme {
            issuer: self.name.clone(),
            what: "identify the certificate for ARI",
            detail: e.to_string(),
        })?;
        let id = CertificateIdentifier {
            authority_key_identifier: aki.into(),
            serial: serial.into(),
        };
        match self.account.read().await.renewal_info(&id).await {
            Ok((info, retry_after)) => Ok(Some((
                info.suggested_window.start,
                info.suggested_window.end,
                retry_after,
            ))),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(acme_error(&self.name, "fetch the renewal window")(e)),
        }
    }

    /// Records a hold on this issuer's CA beyond the next restart, when there is one.
    async fn record_hold(&self) {
        let Some(until) = http::held_until(&self.spec.directory) else {
            return;
        };
        let file = StateFile::public(HOLD_FILE, &crate::plan::rfc3339(until));
        if let Err(e) = self.store.write_state(&hold_state(&self.name), &[file]).await {
            tracing::warn!(issuer = %self.name, error = %e, "the Retry-After is not recorded; a restart will not know it");
        }
    }

    pub async fn account_id(&self) -> String {
        self.account.read().await.id().to_string()
    }

    /// One order within the order deadline; its challenge answers and records are
    /// removed afterwards whatever happened, the deadline included.
    async fn attempt(&self, request: &ServerRequest) -> Result<Issued, IssueError> {
        let mut http_tokens = Vec::new();
        let mut dns_values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let deadline = self.deadlines.order.to_std();
        let result = tokio::time::timeout(deadline, self.order(request, &mut http_tokens, &mut dns_values))
            .await
            .unwrap_or_else(|_| {
                Err(IssueError::Deadline {
                    issuer: self.name.clone(),
                    what: "complete the order",
                    detail: format!(
                        "hosts {}: not done within {}s (deadlines.order)",
                        request.hosts.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "),
                        deadline.as_secs()
                    ),
                })
            });
        if let Solver::Http01(tokens, _) = &self.solver {
            for t in http_tokens.iter() {
                tokens.remove(t);
            }
            if !http_tokens.is_empty()
                && let Err(e) = tokens.publish().await
            {
                tracing::warn!(issuer = %self.name, error = %e, "answered challenges not withdrawn from the board; the next order replaces them");
            }
        }
        if let Err(e) = self.release_dns(&dns_values).await {
            tracing::warn!(issuer = %self.name, error = %e, "challenge records not removed; the next pass removes them");
        }
        result
    }

    /// The profile to order: the configured one when the directory offers it.
    fn profile(&self, account: &Account) -> Option<String> {
        let wanted = self.spec.profile.as_deref()?;
        if account.profiles().any(|p| p.name == wanted) {
            return Some(wanted.to_string());
        }
        let offered: Vec<&str> = account.profiles().map(|p| p.name).collect();
        tracing::warn!(
            issuer = %self.name,
            profile = wanted,
            offered = %if offered.is_empty() { "none".to_string() } else { offered.join(", ") },
            "the ACME server does not offer this profile: ordering its default certificate"
        );
        None
    }

    async fn order(
        &self,
        request: &ServerRequest,
        http_tokens: &mut Vec<String>,
        dns_values: &mut BTreeMap<String, Vec<String>>,
    ) -> Result<Issued, IssueError> {
        let err = |what| acme_error(&self.name, what);
        let ids: Vec<Identifier> = request
            .hosts
            .iter()
            .map(|h| Identifier::Dns(h.as_str().to_string()))
            .collect();
        let account = self.account.read().await.clone();
        let profile = self.profile(&account);
        let new_order = |ids| match profile.as_deref() {
            Some(p) => NewOrder::new(ids).profile(p),
            None => NewOrder::new(ids),
        };
        let replaced = request
            .previous_chain_pem
            .as_deref()
            .and_then(|pem| crate::pki::ari_certificate_id(pem).ok());
        // Tell an ARI-aware CA which certificate this one replaces; a CA without ARI
        // refuses `replaces`, so ask again without it.
        let first = match &replaced {
            Some((aki, serial)) => {
                let id = CertificateIdentifier {
                    authority_key_identifier: aki.as_str().into(),
                    serial: serial.as_str().into(),
                };
                match account.new_order(&new_order(&ids).replaces(id)).await {
                    Err(instant_acme::Error::Unsupported(_)) => account.new_order(&new_order(&ids)).await,
                    other => other,
                }
            }
            None => account.new_order(&new_order(&ids)).await,
        };
        let mut order = match first {
            // The server forgot the account (a reset test CA, a private CA rebuilt): make a
            // new one, once, and carry on.
            Err(instant_acme::Error::Api(p))
                if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
            {
                tracing::warn!(issuer = %self.name, "the ACME server does not know the stored account; creating a new one");
                let fresh = create_account(&self.name, &self.spec, self.deadlines, self.store.as_ref()).await?;
                *self.account.write().await = fresh.clone();
                fresh
                    .new_order(&new_order(&ids))
                    .await
                    .map_err(err("create the order"))?
            }
            other => other.map_err(err("create the order"))?,
        };

        // Publish every pending challenge first, then tell the server they are ready.
        let mut http_checks: Vec<(String, String, String)> = Vec::new();
        let kind = match self.solver {
            Solver::Http01(..) => ChallengeType::Http01,
            Solver::Dns01 { .. } => ChallengeType::Dns01,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(err("read an authorization"))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let challenge = authz.challenge(kind.clone()).ok_or_else(|| IssueError::Acme {
                    issuer: self.name.clone(),
                    what: "pick a challenge",
                    detail: format!("the server offers no {kind:?} challenge"),
                })?;
                let host = challenge.identifier().to_string();
                match &self.solver {
                    Solver::Http01(tokens, _) => {
                        tokens.insert(&challenge.token, challenge.key_authorization().as_str());
                        http_tokens.push(challenge.token.clone());
                        http_checks.push((
                            host.clone(),
                            challenge.token.clone(),
                            challenge.key_authorization().as_str().to_string(),
                        ));
                    }
                    Solver::Dns01 { .. } => {
                        let name = format!("{CHALLENGE_LABEL}.{}", host.trim_start_matches("*."));
                        dns_values
                            .entry(name)
                            .or_default()
                            .push(challenge.key_authorization().dns_value());
                    }
                }
            }
        }
        self.publish_dns(&request.site, dns_values).await?;
        if let Solver::Http01(tokens, check) = &self.solver
            && !http_checks.is_empty()
        {
            tokens.publish().await.map_err(|e| IssueError::Acme {
                issuer: self.name.clone(),
                what: "publish the HTTP-01 answers to every replica",
                detail: e.to_string(),
            })?;
            if let Some(check) = check {
                // One client for every answer of the order.
                let client = crate::deadline::http_client(self.deadlines.request.to_std(), None).map_err(|e| {
                    IssueError::Acme {
                        issuer: self.name.clone(),
                        what: "self-check the HTTP-01 answer",
                        detail: crate::deadline::chain(&e),
                    }
                })?;
                for (host, token, key_authorization) in &http_checks {
                    self.self_check(&client, check, host, token, key_authorization).await?;
                }
            }
        }
        self.complete(&mut order, request, kind).await
    }

    async fn complete(
        &self,
        order: &mut instant_acme::Order,
        request: &ServerRequest,
        kind: ChallengeType,
    ) -> Result<Issued, IssueError> {
        let err = |what| acme_error(&self.name, what);
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(err("read an authorization"))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                if let Some(mut challenge) = authz.challenge(kind.clone()) {
                    challenge.set_ready().await.map_err(err("answer a challenge"))?;
                }
            }
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .timeout(Duration::from_secs(90));
        let status = order.poll_ready(&policy).await.map_err(err("wait for validation"))?;
        if status != OrderStatus::Ready {
            let mut why = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(authz)) = authorizations.next().await {
                for c in &authz.challenges {
                    if let Some(e) = &c.error {
                        why.push(format!(
                            "{}: {}",
                            e.r#type.as_deref().unwrap_or("error"),
                            e.detail.as_deref().unwrap_or("")
                        ));
                    }
                }
            }
            return Err(IssueError::Acme {
                issuer: self.name.clone(),
                what: "validate the hosts",
                detail: format!("order {status:?}: {}", why.join("; ")),
            });
        }
        let key = generate_key(KeyAlgorithm::EcdsaP256).map_err(|e| IssueError::Crypto {
            issuer: self.name.clone(),
            what: "make a key",
            detail: e.to_string(),
        })?;
        let names: Vec<String> = request.hosts.iter().map(|h| h.as_str().to_string()).collect();
        let csr = rcgen::CertificateParams::new(names)
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| IssueError::Crypto {
                issuer: self.name.clone(),
                what: "make the CSR",
                detail: e.to_string(),
            })?;
        order.finalize_csr(csr.der()).await.map_err(err("finalize the order"))?;
        let chain_pem = order
            .poll_certificate(&policy)
            .await
            .map_err(err("download the certificate"))?;
        Ok(Issued {
            chain_pem,
            key: PrivateKeyPem::new(key.serialize_pem()),
        })
    }

    /// Fetches the challenge answer through the gateway as the CA will, until it is the
    /// key authorization: a route, redirect or replica that would fail validation is
    /// found here, before the CA counts a failed attempt.
    async fn self_check(
        &self,
        client: &reqwest::Client,
        check: &SelfCheck,
        host: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), IssueError> {
        let url = format!(
            "http://{}:{}/.well-known/acme-challenge/{token}",
            check.address, check.port
        );
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let got = match client.get(&url).header(reqwest::header::HOST, host).send().await {
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    if status.is_success() && body.trim() == key_authorization {
                        return Ok(());
                    }
                    let shown: String = body.trim().chars().take(80).collect();
                    format!("answered {status} `{shown}`")
                }
                Err(e) => crate::deadline::chain(&e.without_url()),
            };
            if started.elapsed() > SELF_CHECK_TIMEOUT {
                return Err(IssueError::Acme {
                    issuer: self.name.clone(),
                    what: "self-check the HTTP-01 answer",
                    detail: format!(
                        "http://{host}/.well-known/acme-challenge/{token} through the gateway at {}:{} {got} instead of the key authorization, for {}s",
                        check.address,
                        check.port,
                        SELF_CHECK_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn publish_dns(&self, site: &str, values: &BTreeMap<String, Vec<String>>) -> Result<(), IssueError> {
        let Solver::Dns01 {
            provider_name,
            provider,
            owner,
            ttl,
            lock,
        } = &self.solver
        else {
            return Ok(());
        };
        if values.is_empty() {
            return Ok(());
        }
        let dns = |e: crate::dns::DnsError| IssueError::Acme {
            issuer: self.name.clone(),
            what: "publish the DNS-01 records",
            detail: e.to_string(),
        };
        let desired: Vec<DesiredName> = values
            .iter()
            .map(|(name, v)| DesiredName {
                host: name.clone(),
                site: site.to_string(),
                records: vec![RecordSet::new(name.clone(), RecordType::TXT, *ttl, v.clone())],
                alias: false,
            })
            .collect();
        let scope: BTreeSet<String> = values.keys().cloned().collect();
        {
            let _guard = lock.lock().await;
            let current = provider.records().await.map_err(dns)?;
            let d = diff_within(owner, *ttl, &desired, &current, Some(&scope));
            if let Some((name, why)) = d.conflicts.first() {
                return Err(IssueError::Acme {
                    issuer: self.name.clone(),
                    what: "publish the DNS-01 records",
                    detail: format!("dns provider `{provider_name}`: {name}: {why}"),
                });
            }
            provider.apply(&d).await.map_err(dns)?;
        }
        // Answer only once the provider's authoritative view has every value.
        let deadline = tokio::time::Instant::now() + VISIBLE_TIMEOUT;
        let mut delay = Duration::from_millis(100);
        loop {
            let current = provider.records().await.map_err(dns)?;
            let visible = values.iter().all(|(name, v)| {
                current
                    .iter()
                    .any(|r| r.kind == RecordType::TXT && &r.name == name && v.iter().all(|x| r.values.contains(x)))
            });
            if visible {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(IssueError::Acme {
                    issuer: self.name.clone(),
                    what: "publish the DNS-01 records",
                    detail: format!(
                        "dns provider `{provider_name}` does not show them after {}s",
                        VISIBLE_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn release_dns(&self, values: &BTreeMap<String, Vec<String>>) -> Result<(), crate::dns::DnsError> {
        let Solver::Dns01 {
            provider,
            owner,
            ttl,
            lock,
            ..
        } = &self.solver
        else {
            return Ok(());
        };
        if values.is_empty() {
            return Ok(());
        }
        let scope: BTreeSet<String> = values.keys().cloned().collect();
        let _guard = lock.lock().await;
        let current = provider.records().await?;
        provider
            .apply(&diff_within(owner, *ttl, &[], &current, Some(&scope)))
            .await
    }
}

async fn stored_account(
    name: &str,
    spec: &AcmeSpec,
    deadlines: DeadlinesSpec,
    store: &dyn StateStore,
) -> Result<Option<Account>, IssueError> {
    let stored = store
        .read_state(&account_state(name))
        .await?
        .and_then(|files| files.get(ACCOUNT_FILE).cloned())
        .and_then(|bytes| serde_json::from_slice::<StoredAccount>(&bytes).ok())
        .filter(|a| a.directory == spec.directory);
    match stored {
        Some(a) => Ok(Some(
            http_client(name, spec, deadlines)?
                .from_credentials(a.credentials)
                .await
                .map_err(acme_error(name, "restore the account"))?,
        )),
        None => Ok(None),
    }
}

/// An account builder whose every request to the server ends within the request deadline.
fn http_client(
    name: &str,
    spec: &AcmeSpec,
    deadlines: DeadlinesSpec,
) -> Result<instant_acme::AccountBuilder, IssueError> {
    let fail = |detail: String| IssueError::Acme {
        issuer: name.into(),
        what: "set up the HTTP client",
        detail,
    };
    let root = match &spec.ca_bundle_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| fail(format!("ca_bundle_file {path}: {e}")))?),
        None => None,
    };
    let client = http::DeadlineClient::new(deadlines.request.to_std(), root.as_deref()).map_err(|e| {
        fail(match &spec.ca_bundle_file {
            Some(path) => format!("ca_bundle_file {path}: {}", crate::deadline::chain(&e)),
            None => crate::deadline::chain(&e),
        })
    })?;
    Ok(Account::builder_with_http(Box::new(client)))
}

/// Registers a new account (with EAB when configured) and saves it in the store.
async fn create_account(
    name: &str,
    spec: &AcmeSpec,
    deadlines: DeadlinesSpec,
    store: &dyn StateStore,
) -> Result<Account, IssueError> {
    let contact: Vec<String> = spec.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &spec.eab {
        Some(eab) => {
            let fail = |detail: String| IssueError::Acme {
                issuer: name.into(),
                what: "read the EAB key",
                detail,
            };
            let text = crate::config::read_secret(
                &format!("issuers.{name}.acme.eab.hmac_key"),
                &eab.hmac_key_file,
                &eab.hmac_key_env,
            )
            .map_err(|e| fail(e.to_string()))?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim().trim_end_matches('='))
                .map_err(|e| fail(format!("not base64url: {e}")))?;
            Some(ExternalAccountKey::new(eab.kid.clone(), &key))
        }
        None => None,
    };
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = http_client(name, spec, deadlines)?
        .create(&new, spec.directory.clone(), eab.as_ref())
        .await
        .map_err(acme_error(name, "create the account"))?;
    let json = serde_json::to_string(&StoredAccount {
        directory: spec.directory.clone(),
        credentials,
    })
    .map_err(|e| IssueError::Acme {
        issuer: name.into(),
        what: "save the account",
        detail: e.to_string(),
    })?;
    store
        .write_state(&account_state(name), &[StateFile::secret(ACCOUNT_FILE, &json)])
        .await?;
    tracing::info!(issuer = %name, account = %account.id(), "ACME account created");
    Ok(account)
}

#[async_trait]
impl Issuer for AcmeIssuer {
    async fn issue(&self, request: &ServerRequest) -> Result<Issued, IssueError> {
        // Never closed: the permit only counts.
        let _order = self
            .orders
            .acquire()
            .await
            .expect("the orders semaphore is never closed");
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.attempt(request).await {
                // A rate limit is asked again only when the CA said when (the transport
                // waits for that moment): never sooner, and never without its word.
                Err(IssueError::Retryable {
                    why: Retryable::RateLimited,
                    ..
                }) if attempt < ATTEMPTS && http::held_until(&self.spec.directory).is_some() => {
                    attempt += 1;
                }
                Err(e @ IssueError::Retryable { why, .. }) if attempt < ATTEMPTS && why != Retryable::RateLimited => {
                    tracing::warn!(issuer = %self.name, site = %request.site, attempt, error = %e, "ACME attempt failed; retrying");
                    let jitter = 0.8 + 0.4 * rand::random::<f64>();
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    self.record_hold().await;
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }
    fn trust_anchor_pem(&self) -> Option<&str> {
        None
    }
    fn signer_fingerprint(&self) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str) -> instant_acme::Error {
        let doc =
            serde_json::json!({"type": format!("urn:ietf:params:acme:error:{kind}"), "detail": "x", "status": 400});
        instant_acme::Error::Api(serde_json::from_value(doc).unwrap())
    }

    #[test]
    fn errors_are_classified_by_problem_type_and_transport_not_by_message() {
        let classify = acme_error("le", "create an order");
        assert!(bad_nonce(&classify(problem("badNonce"))));
        assert!(matches!(
            classify(problem("rateLimited")),
            IssueError::Retryable {
                why: Retryable::RateLimited,
                ..
            }
        ));
        // A refusal that says "timed out" in its text is still a refusal.
        let doc = serde_json::json!({"type": "urn:ietf:params:acme:error:unauthorized", "detail": "Connection refused, timed out", "status": 403});
        let refused = instant_acme::Error::Api(serde_json::from_value(doc).unwrap());
        assert!(matches!(classify(refused), IssueError::Acme { .. }));
        assert!(matches!(classify(problem("malformed")), IssueError::Acme { .. }));
    }

    #[tokio::test]
    async fn a_connection_failure_is_retryable_and_a_deadline_is_not() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let source = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        let transport = instant_acme::Error::Other(Box::new(http::ExchangeError::Transport {
            method: "GET".into(),
            url: format!("http://127.0.0.1:{port}/"),
            source,
        }));
        assert!(matches!(
            acme_error("le", "fetch the directory")(transport),
            IssueError::Retryable {
                why: Retryable::Unreachable,
                ..
            }
        ));
        let late = instant_acme::Error::Other(Box::new(http::ExchangeError::Deadline {
            method: "GET".into(),
            url: "https://127.0.0.1:14000/dir".into(),
            deadline: Duration::from_secs(30),
        }));
        assert!(matches!(
            acme_error("le", "fetch the directory")(late),
            IssueError::Deadline { .. }
        ));
    }
}
