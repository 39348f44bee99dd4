//! Deadlines on the outside world, in one place: the HTTP client every HTTP peer is
//! reached with (each exchange bounded from connect to the last byte of the answer),
//! and how an error is shown with its whole cause chain. No call to a peer may wait
//! without a bound; a caller that needs a longer exchange says so explicitly.

use std::error::Error as StdError;
use std::time::Duration;

/// The error and every cause below it, `outer: inner: innermost`, with repeats
/// (wrappers that print their source again) left out.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Whether an error, or any cause below it, is a timed-out I/O operation.
pub fn timed_out(e: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// An HTTP client whose every request (connect, TLS, request, whole response body)
/// ends within `deadline`; `root_pem` adds a CA to trust (a private ACME server).
/// HTTP/1.1, pooled: one exchange per connection at a time, so one that stalls
/// shares nothing with the others.
pub fn http_client(deadline: Duration, root_pem: Option<&[u8]>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(deadline)
        .timeout(deadline)
        .http1_only()
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(pem) = root_pem {
        builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem)?);
    }
    builder.build()
}

/// What a Kubernetes client is for: single requests get the request deadline on every
/// read; watch streams may sit idle for minutes between events (kube-runtime's watcher
/// has its own idle timeout), so only connecting and writing are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeUse {
    Requests,
    Watches,
}

/// A client for the cluster in `$KUBECONFIG` or the pod's service account, with
/// deadlines, and the API server's URL (for messages).
pub async fn kube_client(deadline: Duration, usage: KubeUse) -> Result<(kube::Client, String), String> {
    let mut config = kube::Config::infer().await.map_err(|e| chain(&e))?;
    let server = config.cluster_url.to_string();
    config.connect_timeout = Some(deadline);
    config.write_timeout = Some(deadline);
    // kube's own retry of 429/503/504 waits up to 15 times with a backoff growing to
    // 1,000 s: one request could outlive any deadline. A refused request fails its step
    // instead, and the pass retries on its own backoff (10 s doubling to 5 min).
    config.default_retry = false;
    if usage == KubeUse::Requests {
        config.read_timeout = Some(deadline);
        // Count from the request, not from when a pooled connection went idle.
        config.reset_reader_on_write = true;
    }
    let client = kube::Client::try_from(config).map_err(|e| chain(&e))?;
    Ok((client, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("middle: inner")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = Outer(Middle(std::io::Error::other("inner")));
        assert_eq!(chain(&e), "outer: middle: inner");
    }
}
