use serde_json::Value;

use crate::common::fixture;
use crate::process::run;

fn plan(source: &str, file: &str, json: bool) -> (i32, String) {
    let config = format!("{}/examples/quickstart.toml", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec!["plan", "--config", &config, "--source", source, "--file", file];
    if json {
        args.push("--json");
    }
    let out = run(&args, &[("JIRA_WEBHOOK_SECRET", "a"), ("SERVICENOW_WEBHOOK_SECRET", "b")]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stdout + &String::from_utf8_lossy(&out.stderr))
}

fn example(name: &str) -> String {
    format!("{}/examples/events/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn plan_shows_the_portal_grant_for_the_quickstart_events() {
    for (source, file) in [("jira", "jira-request-approved.json"), ("servicenow", "servicenow-ritm-approved.json")] {
        let (code, out) = plan(source, &example(file), false);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("rules: portal-access"), "{out}");
        assert!(out.contains("member of group 6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90 EPM - User Portal Access"), "{out}");
        assert!(out.contains("dry run"), "{out}");

        let (code, out) = plan(source, &example(file), true);
        assert_eq!(code, 0);
        let decided: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(decided["decision"]["outcome"], "plan");
        assert_eq!(decided["decision"]["dry_run"], true);
        assert_eq!(decided["decision"]["grants"][0]["target"]["kind"], "group_member");
        assert_eq!(decided["decision"]["confirmation"]["status"], "skipped");
    }
}

#[test]
fn plan_refuses_self_approval_and_unknown_request_types() {
    let (_, out) = plan("jira", fixture("jira/issue-updated-self-approved.json").to_str().unwrap(), true);
    let decided: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decided["decision"]["outcome"], "refused", "{out}");
    assert_eq!(decided["decision"]["code"], "self_approval", "{out}");

    let (_, out) = plan("jira", fixture("jira/issue-updated-approved-unknown-type.json").to_str().unwrap(), true);
    let decided: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decided["decision"]["code"], "no_matching_rule", "{out}");

    let (_, out) =
        plan("servicenow", fixture("servicenow/ritm-approved-no-requested-for.json").to_str().unwrap(), true);
    let decided: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decided["decision"]["code"], "requested_for_missing", "{out}");

    let (_, out) = plan("jira", fixture("jira/comment-created.json").to_str().unwrap(), false);
    assert!(out.contains("decision: ignored: webhookEvent `comment_created`"), "{out}");
}
