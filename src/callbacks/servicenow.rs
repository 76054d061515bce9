//! ServiceNow callbacks: one Table API PATCH that adds a work note (internal) or a comment (customer-visible) and
//! sets the state, in one update. Journal entries live in `sys_journal_field`, which is where an earlier post is
//! looked for.

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::deliver::{Delivered, DeliveryError, with_marker};
use super::templates::Visibility;
use crate::itsm::ServiceNowClient;
use crate::store::CallbackRecord;
use crate::upstream::url::path_segment;
use crate::upstream::{AttemptError, send_once};

const UPSTREAM: &str = "servicenow";
const DEFAULT_TABLE: &str = "sc_req_item";

pub(super) struct ServiceNowPoster<'a> {
    pub client: &'a ServiceNowClient,
}

impl ServiceNowPoster<'_> {
    pub(super) async fn deliver(&self, callback: &CallbackRecord) -> Result<Delivered, DeliveryError> {
        let key = &callback.ticket_key;
        // The sys_id goes into an encoded query, where `^` would add conditions: accept only a real sys_id.
        let sys_id = callback.ticket_id.trim();
        if sys_id.len() != 32 || !sys_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DeliveryError::permanent(format!("`{sys_id}` ({key}) is not a ServiceNow sys_id")));
        }
        let table = callback.ticket_table.as_deref().map(str::trim).filter(|t| !t.is_empty()).unwrap_or(DEFAULT_TABLE);
        if !table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(DeliveryError::permanent(format!("`{table}` is not a ServiceNow table name")));
        }
        if callback.attempts > 1 && self.journal_has(sys_id, key, &callback.id).await? {
            return Ok(Delivered { remote_id: Some(sys_id.to_string()), already: true });
        }
        self.patch(table, sys_id, callback).await
    }

    /// Sends once; after a 401 with an OAuth token, fetches a new token and sends once more. The outer error is
    /// signing in; the inner one the exchange.
    async fn exchange(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Result<Response, AttemptError>, DeliveryError> {
        let mut renewed = false;
        loop {
            let request = self
                .client
                .authorize(build(self.client.http()))
                .await
                .map_err(|e| DeliveryError::from_upstream(&format!("{what}: signing in to ServiceNow"), &e))?;
            match send_once(UPSTREAM, request).await {
                Err(AttemptError::Refused(e)) if e.status() == Some(StatusCode::UNAUTHORIZED) && !renewed => {
                    if !self.client.forget_token().await {
                        return Ok(Err(AttemptError::Refused(e)));
                    }
                    renewed = true;
                }
                other => return Ok(other),
            }
        }
    }

    /// Whether a journal entry of the record carries the callback's marker.
    async fn journal_has(&self, sys_id: &str, key: &str, callback_id: &str) -> Result<bool, DeliveryError> {
        let url = format!("{}/api/now/table/sys_journal_field", self.client.base_url());
        // The callback id is a UUID: letters, digits and dashes, nothing an encoded query treats specially.
        let query = [
            ("sysparm_query", format!("element_id={sys_id}^valueLIKE{callback_id}")),
            ("sysparm_fields", "sys_id,element".to_string()),
            ("sysparm_limit", "1".to_string()),
        ];
        let what = format!("looking for an earlier note on {key} in sys_journal_field");
        let response = self
            .exchange(&what, |http| http.get(&url).query(&query))
            .await?
            .map_err(|e| DeliveryError::from_attempt(&what, e))?;
        let body = response.bytes().await.map_err(|e| DeliveryError::Retry {
            after: None,
            reason: format!("{what}: reading the answer: {}", e.without_url()),
        })?;
        let parsed: Value = serde_json::from_slice(&body).map_err(|e| DeliveryError::Retry {
            after: None,
            reason: format!("{what}: ServiceNow answered unexpected JSON: {e}"),
        })?;
        Ok(parsed.get("result").and_then(Value::as_array).is_some_and(|rows| !rows.is_empty()))
    }

    async fn patch(&self, table: &str, sys_id: &str, callback: &CallbackRecord) -> Result<Delivered, DeliveryError> {
        let key = &callback.ticket_key;
        let url = format!("{}/api/now/table/{table}/{}", self.client.base_url(), path_segment(sys_id));
        let journal = match Visibility::parse(&callback.visibility) {
            Some(Visibility::Public) => "comments",
            _ => "work_notes",
        };
        let mut body = Map::new();
        body.insert(journal.to_string(), json!(with_marker(&callback.message, &callback.id)));
        if let Some(state) = callback.ticket_state.as_deref().filter(|s| !s.trim().is_empty()) {
            body.insert("state".to_string(), json!(state));
        }
        let body = Value::Object(body);
        let query = [("sysparm_fields", "sys_id"), ("sysparm_exclude_reference_link", "true")];
        let what = format!("updating {table} {key}");
        let response = match self.exchange(&what, |http| http.patch(&url).query(&query).json(&body)).await? {
            Ok(response) => response,
            Err(AttemptError::Refused(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
                return Err(DeliveryError::permanent(format!(
                    "{what}: ServiceNow has no {table} record {sys_id}, or an ACL hides it from the integration user \
                     ({e})"
                )));
            }
            Err(e) => return Err(DeliveryError::from_attempt(&what, e)),
        };
        // The update is made once ServiceNow answered 2xx: an unreadable body must not make us post it again.
        let updated: Option<Value> = response.json().await.ok();
        let remote_id = updated
            .as_ref()
            .and_then(|v| v.pointer("/result/sys_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| Some(sys_id.to_string()));
        Ok(Delivered { remote_id, already: false })
    }
}
