//! Who a ticket person is in Entra: e-mail from the ticket (or the ticketing system's user API), an optional
//! domain rewrite to the UPN, then Graph by UPN and, failing that, by mail.

use serde::Deserialize;

use super::Transient;
use crate::config::ConfigError;
use crate::domain::{PersonRef, Principal};
use crate::entra::{EntraUser, GraphDirectory, GraphError};
use crate::itsm::ItsmApi;

/// `[principals]`: how ticket people map to Entra users.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// `[{ from = "corp.example.com", to = "example.onmicrosoft.com" }]`: e-mail domain -> UPN domain.
    #[serde(default)]
    pub email_domain_rewrites: Vec<DomainRewrite>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRewrite {
    pub from: String,
    pub to: String,
}

impl PrincipalConfig {
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (i, r) in self.email_domain_rewrites.iter().enumerate() {
            for (key, domain) in [("from", &r.from), ("to", &r.to)] {
                let ok = !domain.is_empty()
                    && !domain.contains('@')
                    && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if !ok {
                    return Err(ConfigError::at(
                        format!("{at}.email_domain_rewrites[{i}].{key}"),
                        "must be a domain name such as example.com",
                    ));
                }
            }
        }
        Ok(())
    }

    fn rewrite(&self, email: &str) -> String {
        let Some((local, domain)) = email.rsplit_once('@') else { return email.to_string() };
        match self.email_domain_rewrites.iter().find(|r| r.from.eq_ignore_ascii_case(domain)) {
            Some(r) => format!("{local}@{}", r.to),
            None => email.to_string(),
        }
    }
}

pub enum Resolved {
    Found(Principal),
    NotFound(String),
}

pub async fn resolve(
    directory: &GraphDirectory,
    rules: &PrincipalConfig,
    api: Option<&ItsmApi>,
    person: &PersonRef,
) -> Result<Resolved, Transient> {
    let email = match &person.email {
        Some(email) => Some(email.clone()),
        None => email_from_itsm(api, person).await?,
    };
    let Some(email) = email else {
        let who = person.name.as_deref().or(person.id.as_deref()).unwrap_or("the person");
        return Ok(Resolved::NotFound(format!(
            "{who} has no e-mail address in the ticket or the ticketing system, so no Entra user can be found"
        )));
    };
    let upn = rules.rewrite(&email);
    match graph(directory.user(&upn).await)? {
        Ok(Some(user)) => return Ok(found(user)),
        Ok(None) => {}
        Err(refused) => return Ok(Resolved::NotFound(refused)),
    }
    match graph(directory.user_by_mail(&email).await)? {
        Ok(Some(user)) => Ok(found(user)),
        Ok(None) => Ok(Resolved::NotFound(format!("no Entra user has the UPN {upn} or the mail {email}"))),
        Err(refused) => Ok(Resolved::NotFound(refused)),
    }
}

/// A disabled account is nobody to grant access to (or to count as an approver).
fn found(user: EntraUser) -> Resolved {
    if user.account_enabled == Some(false) {
        return Resolved::NotFound(format!("the Entra account {} is disabled", user.user_principal_name));
    }
    Resolved::Found(user.into())
}

async fn email_from_itsm(api: Option<&ItsmApi>, person: &PersonRef) -> Result<Option<String>, Transient> {
    let (Some(api), Some(id)) = (api, person.id.as_deref()) else { return Ok(None) };
    let found = match api {
        ItsmApi::Jira(client) => client.user(id).await,
        ItsmApi::ServiceNow(client) => client.user(id).await,
    };
    match found {
        Ok(user) => Ok(user.and_then(|u| u.email)),
        Err(e) if e.is_transient() => Err(Transient(format!("the ticketing system did not answer a user lookup: {e}"))),
        // A hidden e-mail (Atlassian privacy settings) or a missing user: nothing more to learn here.
        Err(_) => Ok(None),
    }
}

/// Outage: retry later. A refusal (403 for a missing permission, an ambiguous mail) will not change by waiting:
/// it becomes the refusal's message.
fn graph<T>(result: Result<Option<T>, GraphError>) -> Result<Result<Option<T>, String>, Transient> {
    match result {
        Ok(found) => Ok(Ok(found)),
        Err(GraphError::Upstream(e)) if e.is_transient() => Err(Transient(format!("Microsoft Graph: {e}"))),
        Err(GraphError::Upstream(e)) => Ok(Err(format!("Microsoft Graph refused a user lookup: {e}"))),
        Err(e @ GraphError::AmbiguousMail { .. }) => Ok(Err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_configured_domain() {
        let rules: PrincipalConfig = toml::from_str(
            "email_domain_rewrites = [{ from = \"corp.example.com\", to = \"example.onmicrosoft.com\" }]",
        )
        .unwrap();
        assert_eq!(rules.rewrite("riley@CORP.example.com"), "riley@example.onmicrosoft.com");
        assert_eq!(rules.rewrite("riley@other.com"), "riley@other.com");
        assert!(rules.validate("principals").is_ok());
        let bad: PrincipalConfig = toml::from_str("email_domain_rewrites = [{ from = \"@x\", to = \"y\" }]").unwrap();
        assert!(bad.validate("principals").unwrap_err().to_string().contains("email_domain_rewrites[0].from"));
    }
}
