//! Base URLs from the config, and the escaping of values put into paths and queries.

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::ConfigError;

/// Characters that would end or change a path segment, or that servers commonly reject unescaped.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Query values: everything but unreserved characters, so `+`, `&`, `'` and `#` arrive as sent.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Escapes one path segment (`#` -> `%23`, `/` -> `%2F`); `@`, `$`, `'` and parentheses stay as they are.
pub(crate) fn path_segment(value: &str) -> String {
    utf8_percent_encode(value, PATH_SEGMENT).to_string()
}

/// Escapes a query value strictly.
pub(crate) fn query_value(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Checks that a configured base URL is http(s) with a host, and drops a trailing slash.
pub(crate) fn base_url(value: &str, at: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed).map_err(|e| ConfigError::at(at, format!("`{value}` is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::at(at, "credentials in the URL are not accepted; use the auth settings"));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::at(at, format!("`{value}` must be an http:// or https:// URL")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::at(at, format!("`{value}` has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::at(at, format!("`{value}` must not have a query or fragment")));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_escape_what_matters() {
        assert_eq!(path_segment("ext_a#EXT#@t.onmicrosoft.com"), "ext_a%23EXT%23@t.onmicrosoft.com");
        assert_eq!(path_segment("$adm'in@x.com"), "$adm'in@x.com");
        assert_eq!(path_segment("../a?b"), "..%2Fa%3Fb");
        assert_eq!(query_value("o'neil+x@a.com"), "o%27neil%2Bx%40a.com");
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("https://x.atlassian.net/", "k").unwrap(), "https://x.atlassian.net");
        assert_eq!(
            base_url("https://api.atlassian.com/ex/jira/abc//", "k").unwrap(),
            "https://api.atlassian.com/ex/jira/abc"
        );
        assert_eq!(base_url("http://127.0.0.1:9000", "k").unwrap(), "http://127.0.0.1:9000");
        for bad in ["ftp://x", "x.atlassian.net", "https://", "https://u:p@x.com", "https://x.com/?a=1", ""] {
            let err = base_url(bad, "sources.jira.api.base_url").unwrap_err();
            assert!(err.to_string().starts_with("sources.jira.api.base_url: "), "{err}");
        }
        assert!(!base_url("https://u:hunter2@x.com/?a", "k").unwrap_err().to_string().contains("hunter2"));
    }
}
