//! Confirmation reads the ticket back from where the webhook took each fact: a ServiceNow receiver named by a
//! catalog variable is read from that variable, and the catalog item must be the one the webhook names.

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::common::Backend;
use crate::common::entra::portal_rule;
use crate::harness::{SYS_ID, fakes, json_fixture, spawn};

/// The RITM as ServiceNow answers `sysparm_fields=number,approval,state,<receiver>,cat_item.name`.
async fn servicenow_record(fakes: &crate::harness::Fakes, record: Value) {
    Mock::given(method("GET"))
        .and(path(format!("/api/now/table/sc_req_item/{SYS_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": record })))
        .mount(&fakes.servicenow)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sysapproval_approver"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json_fixture("servicenow/table-approvals.json")))
        .mount(&fakes.servicenow)
        .await;
}

fn approved(receiver_field: &str, receiver: &str, catalog_item: &str) -> Value {
    json!({
        "number": "RITM0010001",
        "approval": "approved",
        "state": "1",
        receiver_field: receiver,
        "cat_item.name": catalog_item,
    })
}

const RILEY_SYS_ID: &str = "62826bf03710200044e0bfc8bcbe5df1";
const TAYLOR_SYS_ID: &str = "7f3a2c1e9b8d4e6fa1b2c3d4e5f60718";

/// The record read back asks for exactly the fields compared.
async fn fields_asked(fakes: &crate::harness::Fakes) -> Vec<String> {
    let requests = fakes.servicenow.received_requests().await.unwrap();
    let read = requests.iter().find(|r| r.url.path().starts_with("/api/now/table/sc_req_item/")).unwrap();
    let fields = read.url.query_pairs().find(|(k, _)| k == "sysparm_fields").unwrap().1.to_string();
    fields.split(',').map(str::to_string).collect()
}

#[tokio::test]
async fn servicenow_read_back_of_another_catalog_item_refuses() {
    let fakes = fakes().await;
    servicenow_record(&fakes, approved("requested_for", RILEY_SYS_ID, "Production database admin")).await;
    let app = spawn(Backend::Sqlite, &fakes, "", &rest(false)).await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["outcome"], "refused", "{detail}");
    assert_eq!(detail["decision"]["code"], "confirmation_failed");
    let message = detail["decision"]["message"].as_str().unwrap();
    assert!(message.contains("`Permissions portal access`") && message.contains("`Production database admin`"));
    assert!(fields_asked(&fakes).await.contains(&"cat_item.name".to_string()));
    assert!(fakes.entra.received_requests().await.unwrap().is_empty(), "nothing is granted or looked up");
}

/// The portal rule, with the receiver read from the `grant_to` catalog variable when `variable`.
fn rest(variable: bool) -> String {
    let mapping = if variable { "\n[sources.servicenow.ticket]\nrequested_for_field = \"grant_to\"\n" } else { "" };
    format!("{mapping}{}", portal_rule("", ""))
}

/// The webhook with the receiver in the `grant_to` variable instead of `requested_for`.
fn webhook_for_variable(grant_to: &str) -> String {
    let mut body = json_fixture("servicenow/ritm-approved.json");
    body["variables"]["grant_to"] = json!(grant_to);
    body.to_string()
}

#[tokio::test]
async fn servicenow_receiver_variable_is_compared_with_the_variable_read_back() {
    let fakes = fakes().await;
    // The item's own `requested_for` agrees with the webhook's variable, but the variable read back does not:
    // comparing the column would have let a forged variable through.
    let mut record = approved("variables.grant_to", TAYLOR_SYS_ID, "Permissions portal access");
    record["requested_for"] = json!(RILEY_SYS_ID);
    servicenow_record(&fakes, record).await;
    let app = spawn(Backend::Sqlite, &fakes, "", &rest(true)).await;
    let id = app.deliver_body("servicenow", webhook_for_variable(RILEY_SYS_ID)).await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["outcome"], "refused", "{detail}");
    assert_eq!(detail["decision"]["code"], "confirmation_failed");
    assert!(detail["decision"]["message"].as_str().unwrap().contains(TAYLOR_SYS_ID), "{detail}");
    let fields = fields_asked(&fakes).await;
    assert!(fields.contains(&"variables.grant_to".to_string()), "{fields:?}");
    assert!(!fields.contains(&"requested_for".to_string()), "{fields:?}");
}

#[tokio::test]
async fn servicenow_receiver_variable_that_agrees_is_confirmed() {
    let fakes = fakes().await;
    servicenow_record(&fakes, approved("variables.grant_to", RILEY_SYS_ID, "Permissions portal access")).await;
    // The variable holds a sys_id only: the receiver is looked up in ServiceNow, then in Entra by e-mail.
    Mock::given(method("GET"))
        .and(path(format!("/api/now/table/sys_user/{RILEY_SYS_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": RILEY_SYS_ID, "user_name": "riley.requester", "email": "riley.requester@example.com"}})))
        .mount(&fakes.servicenow)
        .await;
    let app = spawn(Backend::Sqlite, &fakes, "", &rest(true)).await;
    let id = app.deliver_body("servicenow", webhook_for_variable(RILEY_SYS_ID)).await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["outcome"], "plan", "{detail}");
    assert_eq!(detail["decision"]["confirmation"]["status"], "confirmed", "{detail}");
    assert_eq!(detail["decision"]["principal"]["object_id"], crate::harness::RILEY_ID);
}
