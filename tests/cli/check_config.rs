use crate::common::TempDir;
use crate::process::run;

fn quickstart() -> String {
    format!("{}/examples/quickstart.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_quickstart_config_checks_out() {
    let out = run(
        &["check-config", "--config", &quickstart()],
        &[("JIRA_WEBHOOK_SECRET", "qs-jira-secret-value"), ("SERVICENOW_WEBHOOK_SECRET", "qs-sn-secret-value")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("source jira (jira): jira_hub_signature"), "{stdout}");
    assert!(stdout.contains("source servicenow (servicenow): hmac_sha256"), "{stdout}");
    assert!(!stdout.contains("secret-value"), "secret values are never printed");
    assert!(stdout.contains("admin:    not configured: every /v1/ route answers 401"), "{stdout}");
}

const SOURCE: &str = "[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{ env = \"GB_TEST_SET\" }]\n";

/// (what is wrong, config text, what the first line of stderr must contain)
fn broken() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        ("unknown top-level key", format!("lissten = \"x\"\n{SOURCE}"), vec![":1:1", "unknown field `lissten`"]),
        ("unknown key in a section", format!("[server]\nlisten = \"127.0.0.1:1\"\nworkerz = 2\n{SOURCE}"), vec![":3:", "workerz"]),
        ("unknown key in a scheme (located at its table)", format!("{SOURCE}colour = \"red\"\n"), vec![":3:", "colour"]),
        ("a literal secret", SOURCE.replace("{ env = \"GB_TEST_SET\" }", "\"hunter2\""), vec![":3:", "by reference"]),
        ("a secret from an unset variable", SOURCE.replace("GB_TEST_SET", "GB_TEST_UNSET"), vec![":3:", "sources.jira.verify[0]", "GB_TEST_UNSET is not set"]),
        ("a secret file that does not exist", SOURCE.replace("env = \"GB_TEST_SET\"", "file = \"/nonexistent/secret\""), vec!["sources.jira.verify[0].secrets[0]", "/nonexistent/secret"]),
        ("an unknown scheme", SOURCE.replace("jira_hub_signature", "md5_magic"), vec![":4:", "md5_magic"]),
        ("an unknown source kind", SOURCE.replace("kind = \"jira\"", "kind = \"zendesk\""), vec![":2:", "zendesk"]),
        ("a source without a scheme", "[sources.jira]\nkind = \"jira\"\n".to_string(), vec![":", "sources.jira", "no verification scheme"]),
        ("no sources at all", "[server]\nlisten = \"127.0.0.1:1\"\n".to_string(), vec!["no sources are configured"]),
        ("a bad listen address", format!("[server]\nlisten = \"localhost\"\n{SOURCE}"), vec!["server.listen", "not an address"]),
        ("an unsupported database", format!("[database]\nurl = \"mysql://u:pw@h/db\"\n{SOURCE}"), vec!["database.url", "mysql://u:***@h/db"]),
        ("a source name with capitals", SOURCE.replace("sources.jira", "sources.Jira"), vec!["sources.Jira", "source name"]),
        ("a tiny body limit", format!("[server]\nmax_body_bytes = 10\n{SOURCE}"), vec!["server.max_body_bytes", "between 1024"]),
        ("hmac without a header", "[sources.sn]\nkind = \"servicenow\"\n[[sources.sn.verify]]\nscheme = \"hmac_sha256\"\nsecrets = [{ env = \"GB_TEST_SET\" }]\n".to_string(), vec![":3:", "header"]),
        ("an RS256 key given a shared secret", "[sources.sn]\nkind = \"servicenow\"\n[[sources.sn.verify]]\nscheme = \"jwt_bearer\"\nissuer = \"i\"\naudience = \"a\"\nkeys = [{ alg = \"RS256\", secret = { env = \"GB_TEST_SET\" } }]\n".to_string(), vec!["sources.sn.verify[0]", "RS256"]),
        ("a delivery id with header and field", SOURCE.replace("kind = \"jira\"", "kind = \"jira\"\ndelivery_id = { header = \"X-Id\", field = \"/id\" }"), vec!["sources.jira.delivery_id", "exactly one"]),
        ("an invalid log level", format!("[log]\nlevel = \"loud\"\n{SOURCE}"), vec!["log.level", "loud"]),
        ("a password for SQLite", format!("[database]\npassword = {{ env = \"GB_TEST_SET\" }}\n{SOURCE}"), vec!["database.password", "SQLite"]),
        ("a rule with an unknown source", format!("{SOURCE}[[policy.rules]]\nname = \"portal\"\nsources = [\"zendesk\"]\nrequest_types = [\"x\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_id = \"6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90\"\n"), vec!["policy.rules[0] (portal)", "zendesk"]),
        ("a rule whose group is not a GUID", format!("{SOURCE}[[policy.rules]]\nname = \"portal\"\nrequest_types = [\"x\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_id = \"EPM portal\"\n"), vec!["policy.rules[0] (portal).grants[0].group_id", "not an Entra object id"]),
        ("a PIM rule without a duration", format!("{SOURCE}[[policy.rules]]\nname = \"pim\"\nrequest_types = [\"x\"]\n[[policy.rules.grants]]\nkind = \"pim_group\"\naccess = \"member\"\ngroup_id = \"6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90\"\n"), vec!["policy.rules[0] (pim)", "duration"]),
        ("a group by name without [entra]", format!("{SOURCE}[[policy.rules]]\nname = \"named\"\nrequest_types = [\"x\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_name = \"EPM - User Portal Access\"\n"), vec!["policy", "needs [entra]"]),
        ("an admin token written in the config", format!("{SOURCE}[[admin.tokens]]\nname = \"ci\"\ntoken = \"hunter2-admin\"\nrole = \"read\"\n"), vec!["admin.tokens[0].token", "sha256"]),
        ("an admin tenant given by domain", format!("{SOURCE}[admin.entra]\ntenant_id = \"contoso.onmicrosoft.com\"\naudiences = [\"api://grantbridge\"]\n"), vec!["admin.entra.tenant_id", "GUID"]),
        ("a callback template with an unknown placeholder", format!("{SOURCE}[callbacks.granted]\ntemplate = \"{{ticket}} {{reasn}}\"\n"), vec!["callbacks.granted.template", "unknown placeholder {reasn}", "{until}"]),
        ("callback settings for an unknown source", format!("{SOURCE}[callbacks.sources.zendesk]\nenabled = false\n"), vec!["callbacks.sources.zendesk", "there is no source `zendesk`"]),
        ("an unknown kind of callback", format!("{SOURCE}[callbacks.approved]\ntemplate = \"x\"\n"), vec![":6:", "unknown field `approved`"]),
        ("not TOML at all", "this is = = not toml".to_string(), vec![":1:"]),
    ]
}

#[test]
fn broken_configs_are_refused_with_the_file_the_place_and_the_problem() {
    let dir = TempDir::new();
    for (i, (what, text, expected)) in broken().into_iter().enumerate() {
        let path = dir.write(&format!("broken-{i}.toml"), &text);
        let out = run(&["check-config", "--config", path.to_str().unwrap()], &[("GB_TEST_SET", "a-secret-value")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: exit code; stderr: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(&format!("broken-{i}.toml")), "{what}: names the file: {stderr}");
        for needle in expected {
            assert!(first.contains(needle), "{what}: expected `{needle}` in: {stderr}");
        }
        assert!(!stderr.contains("a-secret-value") && !stderr.contains("hunter2"), "{what}: no secret echoed");
    }
}
