//! Whether and when to try an upstream call again: the status table, server-given delays, and back-off.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};

use super::budget::WriteBudget;
use super::error::{UpstreamError, request_id};

const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// Below this an `X-RateLimit-Reset` number cannot be a current Unix time, so it is read as seconds from now.
const UNIX_TIME_FLOOR: u64 = 1_000_000_000;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again; `after` is the delay the upstream asked for, if it asked.
    Retry {
        after: Option<Duration>,
    },
    Permanent,
}

/// The retry table: 408, 429 and every 5xx are worth another attempt; every other status is final.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Verdict {
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        Verdict::Retry { after: retry_after(headers, SystemTime::now()) }
    } else {
        Verdict::Permanent
    }
}

/// Timeouts and failures to connect or to complete the exchange are retried; a request we could not even build,
/// or a redirect we refused to follow, is not.
pub fn classify_transport(error: &reqwest::Error) -> Verdict {
    if error.is_timeout() || error.is_connect() || error.is_request() {
        Verdict::Retry { after: None }
    } else {
        Verdict::Permanent
    }
}

/// The delay the upstream asked for: `Retry-After` (delta-seconds or HTTP-date), else `X-RateLimit-Reset`
/// (Unix seconds as ServiceNow sends it, or an ISO 8601 UTC time as Jira documents it). A time in the past is zero.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    if let Some(v) = value(RETRY_AFTER.as_str()) {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let reset = value(X_RATELIMIT_RESET)?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let at_secs = match reset.parse::<u64>() {
        Ok(n) if n < UNIX_TIME_FLOOR => return Some(Duration::from_secs(n)),
        Ok(n) => n,
        Err(_) => iso8601_utc_secs(reset)?,
    };
    Some(Duration::from_secs(at_secs.saturating_sub(now_secs)))
}

/// `YYYY-MM-DDTHH:MM[:SS[.fff]]Z` -> Unix seconds. Only the UTC forms Jira sends; anything else is `None`.
fn iso8601_utc_secs(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute) = (t.next()??, t.next()??);
    let second = t.next().unwrap_or(Some(0))?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How many attempts, and how long to wait between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First back-off ceiling; doubles per retry.
    pub base: Duration,
    /// Largest back-off ceiling.
    pub cap: Duration,
    /// Largest wait we accept from a server's `Retry-After`; longer requests are clamped to this.
    pub max_server_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
            max_server_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    pub fn backoff(&self) -> Backoff {
        Backoff { base: self.base, cap: self.cap, max_server_delay: self.max_server_delay }
    }
}

/// Exponential back-off with full jitter; a server-given delay wins over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_server_delay: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32, server: Option<Duration>) -> Duration {
        match server {
            Some(asked) => {
                let asked = asked.min(self.max_server_delay);
                // A little jitter on top spreads clients that were told the same instant; never below what was asked.
                (asked + jitter(self.base)).min(self.max_server_delay).max(asked)
            }
            None => {
                let ceiling = self.base.saturating_mul(2u32.saturating_pow(retry)).min(self.cap);
                jitter(ceiling)
            }
        }
    }
}

fn jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Sends the request that `build` makes, again for each attempt, until it succeeds (2xx), fails permanently,
/// or the attempts run out. `upstream` names the service in logs.
pub async fn send_with_retry<F>(upstream: &str, policy: &RetryPolicy, build: F) -> Result<Response, UpstreamError>
where
    F: FnMut() -> RequestBuilder,
{
    send_with_retry_paced(upstream, policy, None, build).await
}

/// As [`send_with_retry`], with every attempt taking a token from `budget` first; a 429 empties the budget until
/// its `Retry-After` has passed, so that every writer sharing it waits, not only this one.
pub async fn send_with_retry_paced<F>(
    upstream: &str,
    policy: &RetryPolicy,
    budget: Option<&WriteBudget>,
    mut build: F,
) -> Result<Response, UpstreamError>
where
    F: FnMut() -> RequestBuilder,
{
    let backoff = policy.backoff();
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if let Some(budget) = budget {
            budget.acquire().await;
        }
        let (last, after, status, request_id) = match build().send().await {
            Ok(response) if response.status().is_success() => return Ok(response),
            Ok(response) => {
                let status = response.status();
                match classify(status, response.headers()) {
                    Verdict::Permanent => {
                        let headers = response.headers().clone();
                        let body = response.bytes().await.unwrap_or_default();
                        let error = UpstreamError::from_response_parts(status, &headers, &body);
                        // Debug only: a 404 is often an answer, not a failure; the client logs what matters in its context.
                        tracing::debug!(upstream, status = status.as_u16(), attempt, error = %error, "upstream refused");
                        return Err(error);
                    }
                    Verdict::Retry { after } => {
                        let request_id = request_id(response.headers());
                        (format!("status {}", status.as_u16()), after, Some(status.as_u16()), request_id)
                    }
                }
            }
            Err(error) => {
                let (text, verdict) = transport_text(error);
                match verdict {
                    Verdict::Permanent => return Err(UpstreamError::Transport(text)),
                    Verdict::Retry { after } => (text, after, None, None),
                }
            }
        };
        let throttled = status == Some(StatusCode::TOO_MANY_REQUESTS.as_u16());
        if let Some(budget) = budget.filter(|_| throttled) {
            budget.throttled(after);
        }
        if attempt >= max_attempts {
            tracing::warn!(upstream, attempts = attempt, status, request_id, last = %last, "upstream retries exhausted");
            return Err(UpstreamError::Exhausted { attempts: attempt, last, retry_after: after });
        }
        // A paced 429 waits in the budget, where every other writer waits too; only the jitter is added here.
        let delay = match budget.filter(|_| throttled) {
            Some(_) => jitter(backoff.base),
            None => backoff.delay(attempt - 1, after),
        };
        tracing::warn!(
            upstream,
            attempt,
            status,
            request_id,
            failure = %last,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "retrying upstream call"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Why one attempt failed, for callers that keep their own durable retry schedule (ticket callbacks): the retry
/// table applied, with no waiting in process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Worth another attempt later; `after` is the delay the upstream asked for, if it asked.
    Retry { status: Option<StatusCode>, after: Option<Duration>, detail: String },
    /// Another attempt would fail the same way (4xx other than 408/429, or a request that cannot be sent).
    Refused(UpstreamError),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Retry { detail, .. } => f.write_str(detail),
            AttemptError::Refused(error) => error.fmt(f),
        }
    }
}

/// Sends `request` once and classifies a failure with the same table as [`send_with_retry`], keeping the
/// server's requested delay (`Retry-After`, `X-RateLimit-Reset`) for the caller to schedule by.
pub async fn send_once(upstream: &str, request: RequestBuilder) -> Result<Response, AttemptError> {
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(response),
        Ok(response) => {
            let status = response.status();
            match classify(status, response.headers()) {
                Verdict::Permanent => {
                    let headers = response.headers().clone();
                    let body = response.bytes().await.unwrap_or_default();
                    let error = UpstreamError::from_response_parts(status, &headers, &body);
                    tracing::debug!(upstream, status = status.as_u16(), error = %error, "upstream refused");
                    Err(AttemptError::Refused(error))
                }
                Verdict::Retry { after } => {
                    let mut detail = format!("{upstream} answered {}", status.as_u16());
                    if let Some(id) = request_id(response.headers()) {
                        detail.push_str(&format!(" (request-id {id})"));
                    }
                    Err(AttemptError::Retry { status: Some(status), after, detail })
                }
            }
        }
        Err(error) => {
            let (text, verdict) = transport_text(error);
            match verdict {
                Verdict::Permanent => Err(AttemptError::Refused(UpstreamError::Transport(text))),
                Verdict::Retry { after } => {
                    Err(AttemptError::Retry { status: None, after, detail: format!("{upstream}: {text}") })
                }
            }
        }
    }
}

/// Describes a transport error without its URL (ours never carry secrets, but a query string can be long), and
/// remembers whether it was retryable.
fn transport_text(error: reqwest::Error) -> (String, Verdict) {
    let verdict = classify_transport(&error);
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    (text, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn status_table() {
        let retry = Verdict::Retry { after: None };
        let table: &[(u16, Verdict)] = &[
            (200, Verdict::Permanent), // never asked: success is handled before classification
            (301, Verdict::Permanent),
            (400, Verdict::Permanent),
            (401, Verdict::Permanent),
            (403, Verdict::Permanent),
            (404, Verdict::Permanent),
            (408, retry),
            (409, Verdict::Permanent),
            (412, Verdict::Permanent),
            (422, Verdict::Permanent),
            (429, retry),
            (500, retry),
            (501, retry),
            (502, retry),
            (503, retry),
            (504, retry),
            (507, retry),
            (599, retry),
        ];
        for (status, want) in table {
            let got = classify(StatusCode::from_u16(*status).unwrap(), &HeaderMap::new());
            assert_eq!(got, *want, "status {status}");
        }
    }

    #[test]
    fn server_delay_table() {
        let now = at(1_700_000_000);
        let date_in = |secs: u64| httpdate::fmt_http_date(at(1_700_000_000 + secs));
        let past = httpdate::fmt_http_date(at(1_600_000_000));
        let future = date_in(30);
        type Row<'a> = (Vec<(&'static str, &'a str)>, Option<u64>);
        let table: Vec<Row<'_>> = vec![
            (vec![], None),
            (vec![("retry-after", "1")], Some(1)),
            (vec![("retry-after", " 120 ")], Some(120)),
            (vec![("retry-after", "0")], Some(0)),
            (vec![("retry-after", &future)], Some(30)),
            (vec![("retry-after", &past)], Some(0)),
            (vec![("retry-after", "soon")], None),
            (vec![("retry-after", "-5")], None),
            // ServiceNow: Unix seconds.
            (vec![("x-ratelimit-reset", "1700000045")], Some(45)),
            (vec![("x-ratelimit-reset", "1600000000")], Some(0)),
            // Jira: ISO 8601 UTC, minute precision.
            (vec![("x-ratelimit-reset", "2023-11-14T22:14Z")], Some(1_700_000_040 - 1_700_000_000)),
            (vec![("x-ratelimit-reset", "2023-11-14T22:13:30.000Z")], Some(10)),
            // Small numbers cannot be Unix times: seconds from now.
            (vec![("x-ratelimit-reset", "17")], Some(17)),
            (vec![("x-ratelimit-reset", "tomorrow")], None),
            // Retry-After wins over X-RateLimit-Reset.
            (vec![("retry-after", "2"), ("x-ratelimit-reset", "1700000045")], Some(2)),
            (vec![("retry-after", "junk"), ("x-ratelimit-reset", "1700000045")], Some(45)),
        ];
        for (pairs, want) in table {
            let got = retry_after(&headers(&pairs), now);
            assert_eq!(got, want.map(Duration::from_secs), "{pairs:?}");
        }
    }

    #[test]
    fn classify_carries_the_server_delay_only_when_retrying() {
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, &h), Verdict::Retry { after: Some(Duration::from_secs(7)) });
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h),
            Verdict::Retry { after: Some(Duration::from_secs(7)) }
        );
        assert_eq!(classify(StatusCode::BAD_REQUEST, &h), Verdict::Permanent);
    }

    #[test]
    fn iso_dates_convert() {
        assert_eq!(iso8601_utc_secs("1970-01-01T00:00Z"), Some(0));
        assert_eq!(iso8601_utc_secs("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(iso8601_utc_secs("2024-02-29T12:00+00:00"), Some(1_709_208_000));
        assert_eq!(iso8601_utc_secs("2024-13-01T00:00Z"), None);
        assert_eq!(iso8601_utc_secs("2024-01-01T00:00+02:00"), None);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_capped_ceiling() {
        let b = RetryPolicy::default().backoff();
        for retry in 0..12 {
            let ceiling = (Duration::from_millis(200) * 2u32.pow(retry)).min(Duration::from_secs(30));
            for _ in 0..50 {
                assert!(b.delay(retry, None) <= ceiling, "retry {retry}");
            }
        }
        assert!(b.delay(200, None) <= Duration::from_secs(30));
    }

    #[test]
    fn server_delay_is_honoured_never_shortened_and_clamped() {
        let b = Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
            max_server_delay: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let d = b.delay(0, Some(Duration::from_secs(5)));
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_millis(5200), "{d:?}");
            assert_eq!(b.delay(0, Some(Duration::from_secs(3600))), Duration::from_secs(60));
            assert!(b.delay(0, Some(Duration::from_secs(60))) == Duration::from_secs(60));
        }
    }
}
