//! `--acme`: getting and renewing certificates from an ACME CA (RFC 8555), in the background.
//!
//! One task, beside the certificate poll: at start and at least every 10 minutes it looks at
//! each name's certificate in the state directory ([`store`]); a missing one, or one within
//! its renewal window, is ordered. Until a name has a certificate, its handshakes get a
//! self-signed fallback (`CertStore::with_acme`). A new certificate is written to the state
//! directory and swapped in by a reload, like a SIGHUP: no live connection is touched.
//!
//! Orders go one name at a time, each under the name's lock in the state directory, so
//! instances that share it make one order per name; the others find the new files at their
//! next certificate poll. A failed order is logged and tried again after 1 minute, doubling
//! to 1 hour; the certificate served until then stays.
//!
//! Challenges: HTTP-01 on the `--redirect-http` listener when there is one, else TLS-ALPN-01
//! on the TLS listeners; after a failed order the other kind is tried next (where both can be
//! answered). The answers are files in the state directory (`tls::acme`, `redirect`).
//!
//! The client is instant-acme (by a rustls maintainer; tokio and rustls like ours).

pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use instant_acme::{
    Account, AccountBuilder, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use tokio::time::Instant;

use crate::config::AcmeSettings;
use crate::reload::{self, Trigger};
use crate::state::State;

/// How often the certificates are looked at, at the longest.
const CHECK: Duration = Duration::from_secs(10 * 60);
/// A failed order's first wait, doubled at each failure up to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
const BACKOFF_LAST: Duration = Duration::from_secs(3600);
/// While another instance holds a name's lock, how soon to look again.
const BUSY: Duration = Duration::from_secs(30);

/// A name's failures so far, and when it may be tried again.
struct Failing {
    count: u32,
    until: Instant,
}

/// How an attempt at a name ended.
enum Obtained {
    Issued,
    /// Another instance renewed it meanwhile: its files are already there.
    ByAnother,
    /// Another instance is ordering it now.
    Busy,
}

/// Keeps every `--acme` name's certificate until the process stops.
pub async fn keep(state: Arc<State>) {
    let mut failing: HashMap<String, Failing> = HashMap::new();
    // Names whose next renewal was logged: once each, at the first look.
    let mut scheduled: HashSet<String> = HashSet::new();
    loop {
        let Some(acme) = state.process.acme.clone() else {
            return;
        };
        let http = !state.process.listening.redirect.is_empty();
        let mut next = Instant::now() + CHECK;
        for name in &acme.names {
            let now = Instant::now();
            let wait = due_in(&acme, name);
            if !wait.is_zero() {
                next = next.min(now + wait);
                if scheduled.insert(name.clone()) {
                    tracing::info!(
                        name = %name,
                        "acme: the certificate in the state directory is kept; renewal in {}h",
                        wait.as_secs() / 3600
                    );
                }
                continue;
            }
            if let Some(f) = failing.get(name)
                && f.until > now
            {
                next = next.min(f.until);
                continue;
            }
            let count = failing.get(name).map_or(0, |f| f.count);
            let kind = match (http, count % 2) {
                (true, 0) => ChallengeType::Http01,
                _ => ChallengeType::TlsAlpn01,
            };
            let attempt = tokio::select! {
                _ = state.shutdown.stopped() => return,
                attempt = obtain(&acme, name, kind) => attempt,
            };
            match attempt {
                Ok(Obtained::Issued) | Ok(Obtained::ByAnother) => {
                    failing.remove(name);
                    let _ = reload::from_files(&state, Trigger::Acme);
                }
                Ok(Obtained::Busy) => next = next.min(Instant::now() + BUSY),
                Err(e) => {
                    let count = count + 1;
                    let wait = BACKOFF_FIRST
                        .saturating_mul(1 << (count - 1).min(6))
                        .min(BACKOFF_LAST);
                    let serving = match acme.cert_paths(name).cert.exists() {
                        true => "still serving the one before",
                        false => "serving a self-signed one for it meanwhile",
                    };
                    tracing::error!(
                        name = %name,
                        failures = count,
                        "acme: no certificate this time, {serving}; trying again in {wait:?}: \
                         {}{}",
                        describe(&e),
                        hint(&e)
                    );
                    let until = Instant::now() + wait;
                    failing.insert(name.clone(), Failing { count, until });
                    next = next.min(until);
                }
            }
        }
        tokio::select! {
            _ = state.shutdown.stopped() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// `e` and its causes as `{e:#}` writes them, less a cause the text before it already ends
/// with: instant-acme's errors write their source into their own text, so `{e:#}` said
/// "failed to (de)serialize JSON: invalid type: integer 404 …" twice.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `--check --online`: asks the CA for the account of a key made just now, which cannot
/// exist (`onlyReturnExisting`): that fetches the directory and a nonce and sends one signed
/// request, through the same client and trust (`--acme-ca`) an order uses, and creates
/// nothing. The CA's `accountDoesNotExist` is the answer that proves the way works.
pub async fn reach(acme: &AcmeSettings) -> anyhow::Result<()> {
    let probe = NewAccount {
        contact: &[],
        terms_of_service_agreed: true,
        only_return_existing: true,
    };
    match builder(acme)?
        .create(&probe, acme.directory.clone(), None)
        .await
    {
        Ok(_) => Ok(()),
        Err(instant_acme::Error::Api(problem))
            if problem
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            Ok(())
        }
        Err(e) => {
            let e = anyhow::Error::new(e);
            bail!("{}{}", describe(&e), hint(&e))
        }
    }
}

/// What a person can do about the two failures a first setup meets most, said after the
/// error: a CA whose certificate is not trusted, and a URL that is not an ACME directory.
fn hint(e: &anyhow::Error) -> &'static str {
    let text = describe(e);
    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        " (the CA's HTTPS certificate is not trusted: give its root with --acme-ca)"
    } else if text.contains("(de)serialize") || text.contains("invalid type") {
        " (is --acme-directory the CA's directory URL? What it answered is not an ACME \
         directory)"
    } else {
        ""
    }
}

/// How long until `name` is due for an order (zero: now).
fn due_in(acme: &AcmeSettings, name: &str) -> Duration {
    store::renew_at(acme, name)
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::ZERO)
}

/// One attempt at `name`'s certificate with challenges of `kind`, under its lock.
async fn obtain(acme: &AcmeSettings, name: &str, kind: ChallengeType) -> anyhow::Result<Obtained> {
    let Some(_lock) = store::lock(acme, name)? else {
        tracing::info!(
            name,
            "acme: another instance is ordering this name; waiting for it"
        );
        return Ok(Obtained::Busy);
    };
    if !due_in(acme, name).is_zero() {
        tracing::info!(name, "acme: another instance renewed this name");
        return Ok(Obtained::ByAnother);
    }
    tracing::info!(name, challenge = ?kind, directory = %acme.directory, "acme: ordering a certificate");
    let account = account(acme).await?;
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("new order")?;
    let mut answers = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.context("authorization")?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization is {other:?}"),
        }
        let mut challenge = authorization
            .challenge(kind.clone())
            .with_context(|| format!("the CA offers no {kind:?} challenge"))?;
        let key_authorization = challenge.key_authorization();
        let file = match kind {
            ChallengeType::Http01 => acme.challenges("http-01").join(&challenge.token),
            _ => acme.challenges("tls-alpn-01").join(name),
        };
        store::write_atomic(&file, key_authorization.as_str().as_bytes(), true)?;
        answers.push(file);
        challenge.set_ready().await.context("challenge ready")?;
    }
    let result = finish(&mut order).await;
    for file in answers {
        let _ = std::fs::remove_file(file);
    }
    let (chain, key) = result?;
    let paths = acme.cert_paths(name);
    // The key first: a chain without its key would not load, a key without its chain is
    // simply not used yet.
    store::write_atomic(&paths.key, key.as_bytes(), true)?;
    store::write_atomic(&paths.cert, chain.as_bytes(), false)?;
    tracing::info!(name, file = %paths.cert.display(), "acme: certificate issued");
    Ok(Obtained::Issued)
}

/// Waits for the order to be validated, then finalizes it: the chain and its new key (PEM).
async fn finish(order: &mut instant_acme::Order) -> anyhow::Result<(String, String)> {
    let retry = RetryPolicy::default();
    let status = order
        .poll_ready(&retry)
        .await
        .context("waiting for validation")?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map_or_else(|| format!("{status:?}"), |p| p.to_string());
        bail!("the order was not validated: {why}");
    }
    let key = order.finalize().await.context("finalize")?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .context("certificate")?;
    Ok((chain, key))
}

/// An account builder that trusts `--acme-ca`, or else the system's root certificates.
fn builder(acme: &AcmeSettings) -> anyhow::Result<AccountBuilder> {
    match &acme.ca {
        Some(ca) => {
            Account::builder_with_root(ca).with_context(|| format!("--acme-ca {}", ca.display()))
        }
        None => Account::builder().context("the system's root certificates"),
    }
}

/// The account for `acme.directory`: the stored one, or a new one (stored, 0600).
async fn account(acme: &AcmeSettings) -> anyhow::Result<Account> {
    let builder = || builder(acme);
    let file = store::account_file(acme);
    if let Ok(json) = std::fs::read(&file) {
        let credentials =
            serde_json::from_slice(&json).with_context(|| format!("reading {}", file.display()))?;
        return builder()?
            .from_credentials(credentials)
            .await
            .with_context(|| format!("the account in {}", file.display()));
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()?
        .create(&new, acme.directory.clone(), None)
        .await
        .with_context(|| format!("creating an account at {}", acme.directory))?;
    store::write_atomic(&file, &serde_json::to_vec(&credentials)?, true)?;
    tracing::info!(file = %file.display(), "acme: account created");
    Ok(account)
}
