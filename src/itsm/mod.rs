//! Reading tickets, approvals and users back from Jira and ServiceNow, to confirm what a webhook claims.

mod config;
mod jira;
mod servicenow;

pub use config::{ItsmApiConfig, ItsmAuthConfig};
pub use jira::{JiraAuth, JiraClient, JsmApproval};
pub use servicenow::{ServiceNowAuth, ServiceNowClient};

/// A source's ticketing API: confirms approvals and looks people up.
pub enum ItsmApi {
    Jira(JiraClient),
    ServiceNow(ServiceNowClient),
}
