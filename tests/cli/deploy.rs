//! The deployment kit under deploy/: the Kubernetes manifests agree with each other and with grantbridge's own
//! config parser, the image runs a real subcommand as a non-root user with a health check that works, the systemd
//! unit is valid and hands over exactly the credentials its config reads, and the Entra script asks for exactly
//! the permissions of the grant kinds it is given.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

use crate::common::TempDir;
use crate::process::{Server, bin, run};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Whether a tool can be started at all; tests that need it print why they skip otherwise.
fn available(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

// ------------------------------------------------------------------------------------------------ Kubernetes

/// Every YAML document under deploy/kubernetes, with the file it came from.
fn manifests() -> Vec<(String, Yaml)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

fn one<'a>(docs: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|(_, d)| d["kind"].as_str() == Some(kind)).map(|(_, d)| d).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} under deploy/kubernetes");
    found[0]
}

fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn labels(value: &Yaml) -> Vec<(String, String)> {
    value
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (text(k, "label key").to_owned(), text(v, "label value").to_owned())).collect())
        .unwrap_or_default()
}

/// `selector` picks `pod`: every pair of the selector is among the pod's labels, and the selector is not empty.
fn selects(selector: &Yaml, pod: &Yaml) -> bool {
    let selector = labels(selector);
    let pod = labels(pod);
    !selector.is_empty() && selector.iter().all(|pair| pod.contains(pair))
}

fn container(deployment: &Yaml) -> &Yaml {
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The grantbridge.toml the ConfigMap holds.
fn configmap_toml(docs: &[(String, Yaml)]) -> String {
    text(&one(docs, "ConfigMap")["data"]["grantbridge.toml"], "data.grantbridge.toml").to_owned()
}

/// The secret references of a config: `{ env = "NAME" }` names and `{ file = "PATH" }` paths, wherever they are.
fn secret_refs(config: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    fn walk(value: &toml::Value, env: &mut BTreeSet<String>, file: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                if table.len() == 1 {
                    if let Some(toml::Value::String(name)) = table.get("env") {
                        env.insert(name.clone());
                    }
                    if let Some(toml::Value::String(path)) = table.get("file") {
                        file.insert(path.clone());
                    }
                }
                table.values().for_each(|v| walk(v, env, file));
            }
            toml::Value::Array(items) => items.iter().for_each(|v| walk(v, env, file)),
            _ => {}
        }
    }
    let value: toml::Value = toml::from_str(config).unwrap();
    let (mut env, mut file) = (BTreeSet::new(), BTreeSet::new());
    walk(&value, &mut env, &mut file);
    (env, file)
}

fn listen_port(config: &str) -> u16 {
    let value: toml::Value = toml::from_str(config).unwrap();
    let listen = value["server"]["listen"].as_str().unwrap();
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_manifest_parses_names_no_namespace_and_the_kustomization_lists_them() {
    let docs = manifests();
    for (file, doc) in &docs {
        assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(doc["kind"].as_str().is_some(), "{file}: kind");
        if doc["kind"].as_str() != Some("Kustomization") {
            assert!(doc["metadata"]["name"].as_str().is_some(), "{file}: metadata.name");
            assert!(doc["metadata"]["namespace"].is_null(), "{file}: the manifests name no namespace");
        }
    }

    let kustomization = one(&docs, "Kustomization");
    let listed: BTreeSet<String> =
        kustomization["resources"].as_sequence().unwrap().iter().map(|r| text(r, "resource").to_owned()).collect();
    let files: BTreeSet<String> = docs.iter().map(|(f, _)| f.clone()).collect();
    let expected: BTreeSet<String> =
        files.iter().filter(|f| *f != "kustomization.yaml" && *f != "secret.example.yaml").cloned().collect();
    assert_eq!(listed, expected, "kustomization.yaml lists every manifest but itself and the Secret template");
    for (file, doc) in &docs {
        if listed.contains(file) {
            assert_ne!(doc["kind"].as_str(), Some("Secret"), "{file}: no Secret is applied by the kit");
        }
    }
    let image = text(&container(one(&docs, "Deployment"))["image"], "image");
    let images = kustomization["images"].as_sequence().unwrap();
    assert!(images.iter().any(|i| i["name"].as_str() == Some(image)), "kustomization.yaml sets the image `{image}`");

    if available("kubectl") {
        let out = Command::new("kubectl").args(["kustomize"]).arg(repo("deploy/kubernetes")).output().unwrap();
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
        for kind in ["Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"] {
            assert!(rendered.contains(&format!("kind: {kind}\n")), "kubectl kustomize renders the {kind}");
        }
        assert!(!rendered.contains("kind: Secret\n"), "kubectl kustomize renders no Secret");
    } else {
        eprintln!("skipped: kubectl is not installed, the kustomization was not rendered");
    }
}

#[test]
fn the_deployment_runs_two_hardened_replicas_probed_on_the_container_port() {
    let docs = manifests();
    let deployment = one(&docs, "Deployment");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(deployment);

    assert_eq!(spec["replicas"].as_u64(), Some(2));
    assert!(selects(&spec["selector"]["matchLabels"], &spec["template"]["metadata"]["labels"]));

    // The container port is the port the config listens on, and every probe hits it.
    let ports = c["ports"].as_sequence().unwrap();
    let http = ports.iter().find(|p| p["name"].as_str() == Some("http")).expect("a port named http");
    let container_port = http["containerPort"].as_u64().unwrap();
    assert_eq!(
        container_port,
        u64::from(listen_port(&configmap_toml(&docs))),
        "the config listens on the container port"
    );
    for (probe, path) in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let port = &get["port"];
        let resolved = match port.as_str() {
            Some(name) => {
                ports.iter().find(|p| p["name"].as_str() == Some(name)).and_then(|p| p["containerPort"].as_u64())
            }
            None => port.as_u64(),
        };
        assert_eq!(resolved, Some(container_port), "{probe} hits the container port");
    }

    // Hardening, for the pod and the container.
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0), "a numeric non-root user");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let dropped: Vec<&str> =
        sc["capabilities"]["drop"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(dropped, ["ALL"]);
    assert!(
        c["resources"]["requests"]["memory"].as_str().is_some()
            && c["resources"]["limits"]["memory"].as_str().is_some()
    );

    // Stopping: 30 s for requests in flight, 30 s for the worker's event in hand, after the preStop pause.
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > pause + 30 + 30, "terminationGracePeriodSeconds {grace} covers the drain");

    // The command is a real subcommand, given the config the ConfigMap volume mounts.
    let command: Vec<&str> = c["command"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(command[..3], ["grantbridge", "serve", "--config"]);
    let config_path = command[3];
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let configmap = one(&docs, "ConfigMap");
    let config_volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == configmap["metadata"]["name"].as_str())
        .expect("a volume of the ConfigMap");
    let mount = mounts.iter().find(|m| m["name"] == config_volume["name"]).expect("the ConfigMap volume is mounted");
    let item = config_volume["configMap"]["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|i| i["key"].as_str() == Some("grantbridge.toml"))
        .expect("the item grantbridge.toml");
    assert_eq!(
        format!("{}/{}", text(&mount["mountPath"], "mountPath"), text(&item["path"], "path")),
        config_path,
        "serve reads the mounted ConfigMap"
    );
    let out = run(&["serve", "--help"], &[]);
    assert!(out.status.success(), "`grantbridge serve` exists");

    // Azure AD workload identity: the pod label, and the service account's client id annotation.
    assert_eq!(spec["template"]["metadata"]["labels"]["azure.workload.identity/use"].as_str(), Some("true"));
    let account = one(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"].as_str(), account["metadata"]["name"].as_str());
    let client_id = text(&account["metadata"]["annotations"]["azure.workload.identity/client-id"], "client-id");
    assert!(uuid::Uuid::try_parse(client_id).is_ok(), "the client-id annotation is a GUID placeholder");
    assert!(configmap_toml(&docs).contains("federated = true"), "[entra] uses the webhook's token file");
}

#[test]
fn the_service_and_the_disruption_budget_select_the_deployments_pods() {
    let docs = manifests();
    let deployment = one(&docs, "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    let service = one(&docs, "Service");
    assert!(selects(&service["spec"]["selector"], pod_labels), "the Service selects the pods");
    let names: Vec<&str> =
        container(deployment)["ports"].as_sequence().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for port in service["spec"]["ports"].as_sequence().unwrap() {
        let target = text(&port["targetPort"], "targetPort");
        assert!(names.contains(&target), "the Service targets the container port `{target}`");
    }

    let budget = one(&docs, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"].as_u64(), Some(1));
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], pod_labels), "the budget selects the pods");
    assert!(budget["spec"]["minAvailable"].as_u64() < deployment["spec"]["replicas"].as_u64(), "a drain can proceed");
}

#[test]
fn secrets_are_references_to_the_secret_template_which_holds_no_values() {
    let docs = manifests();
    let secret = one(&docs, "Secret");
    assert!(secret["data"].is_null(), "the template has no base64 data");
    let values = secret["stringData"].as_mapping().unwrap();
    let keys: BTreeSet<String> = values.keys().map(|k| text(k, "key").to_owned()).collect();
    for (key, value) in values {
        assert_eq!(value.as_str(), Some(""), "{key:?}: the template holds no value, only the name");
    }
    let secret_name = text(&secret["metadata"]["name"], "Secret name");

    let deployment = one(&docs, "Deployment");
    let c = container(deployment);
    let (config_env, config_files) = secret_refs(&configmap_toml(&docs));

    // Environment variables from the Secret: each exists in the template and is read by the config, and back.
    let mut used = BTreeSet::new();
    let mut env_from_secret = BTreeSet::new();
    for var in c["env"].as_sequence().unwrap() {
        let Some(reference) = var["valueFrom"]["secretKeyRef"].as_mapping() else { continue };
        let reference = Yaml::Mapping(reference.clone());
        assert_eq!(reference["name"].as_str(), Some(secret_name));
        let key = text(&reference["key"], "secretKeyRef.key");
        assert!(keys.contains(key), "{key} is in the Secret template");
        used.insert(key.to_owned());
        env_from_secret.insert(text(&var["name"], "env name").to_owned());
    }
    assert!(!env_from_secret.is_empty());
    assert_eq!(env_from_secret, config_env, "every secret variable is read by the config, and only those");

    // Files from the Secret volume: each is a key of the template and a `{ file = ... }` of the config, and back.
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some(secret_name))
        .expect("a volume of the Secret");
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the Secret volume is mounted");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let dir = text(&mount["mountPath"], "mountPath");
    let mut mounted = BTreeSet::new();
    for item in volume["secret"]["items"].as_sequence().unwrap() {
        let key = text(&item["key"], "item key");
        assert!(keys.contains(key), "{key} is in the Secret template");
        used.insert(key.to_owned());
        mounted.insert(format!("{dir}/{}", text(&item["path"], "item path")));
    }
    assert_eq!(mounted, config_files, "every mounted secret file is read by the config, and only those");
    assert_eq!(used, keys, "every key of the Secret template is used");
}

#[test]
fn the_configmap_config_loads_with_grantbridges_parser() {
    let docs = manifests();
    let config = configmap_toml(&docs);
    let secret = one(&docs, "Secret");
    let dir = TempDir::new();

    // Each secret file the Secret volume would hold, under a scratch directory instead of the mount path.
    let (_, files) = secret_refs(&config);
    let mount = files.iter().next().map(|f| f.rsplit_once('/').unwrap().0.to_owned()).unwrap();
    for key in secret["stringData"].as_mapping().unwrap().keys() {
        let key = text(key, "key");
        dir.write(key, format!("test-{key}-value\n"));
    }
    let local = config.replace(&format!("{mount}/"), &format!("{}/", dir.path().display()));
    assert_ne!(local, config, "the config reads secret files from {mount}");
    let path = dir.write("grantbridge.toml", &local);
    let token = dir.write("azure-identity-token", "projected-service-account-token");
    let token = token.to_str().unwrap();
    let webhook_env = [
        ("GRANTBRIDGE_DB_PASSWORD", "test-database-password-value"),
        ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("AZURE_FEDERATED_TOKEN_FILE", token),
    ];

    let out = run(&["check-config", "--config", path.to_str().unwrap()], &webhook_env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("listen:   0.0.0.0:8080"), "{stdout}");
    assert!(stdout.contains("database: postgres://grantbridge@postgres.example.internal:5432/grantbridge"), "{stdout}");
    assert!(stdout.contains("source jira (jira): jira_hub_signature"), "{stdout}");
    assert!(stdout.contains("source servicenow (servicenow): hmac_sha256"), "{stdout}");
    assert!(stdout.contains("dry run"), "the kit starts in dry-run mode: {stdout}");
    assert!(!stdout.contains("-value"), "no secret is printed");

    // Outside a pod labelled for workload identity, the config refuses to load, and says why.
    let out = bin()
        .args(["check-config", "--config", path.to_str().unwrap()])
        .envs(webhook_env.iter().take(3).copied())
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("entra.federated: AZURE_FEDERATED_TOKEN_FILE is not set"), "{stderr}");
}

// ------------------------------------------------------------------------------------------------ Docker

/// The Dockerfile's instructions (continuation lines joined, comments dropped), as (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.trim().split_once(' ').unwrap_or((current.trim(), ""));
                instructions.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The instructions of the last stage: what the image runs.
fn runtime_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(i, _)| i == "FROM").unwrap();
    all[last_from..].to_vec()
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form JSON array ({e}): {args}"))
}

fn single<'a>(stage: &'a [(String, String)], instruction: &str) -> &'a str {
    let found: Vec<&str> = stage.iter().filter(|(i, _)| i == instruction).map(|(_, a)| a.as_str()).collect();
    assert_eq!(found.len(), 1, "one {instruction} in the runtime stage");
    found[0]
}

#[test]
fn the_image_runs_a_real_subcommand_as_a_numeric_non_root_user() {
    let all = dockerfile();
    let stage = runtime_stage();
    assert!(all.iter().filter(|(i, _)| i == "FROM").count() >= 2, "a multi-stage build");
    assert!(single(&stage, "FROM").starts_with("debian:bookworm-slim"), "a minimal runtime");

    let user = single(&stage, "USER");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("USER {user} is numeric"));
    assert!(uid > 0, "USER {user} is not root");

    let entrypoint = exec_form(single(&stage, "ENTRYPOINT"));
    assert_eq!(entrypoint[..3], ["grantbridge", "serve", "--config"]);
    let out = run(&[entrypoint[1].as_str(), "--help"], &[]);
    assert!(out.status.success(), "`grantbridge {}` is a real subcommand", entrypoint[1]);
    let copied = stage
        .iter()
        .filter(|(i, _)| i == "COPY")
        .find(|(_, args)| args.ends_with(&format!(" {}", entrypoint[3])))
        .unwrap_or_else(|| panic!("the image holds the config {}", entrypoint[3]));
    let source = copied.1.split_whitespace().next().unwrap();
    assert!(repo(source).is_file(), "{source} exists");

    // The listen port (GRANTBRIDGE_LISTEN overrides the config) is the exposed one; the SQLite file is in the volume.
    let env = single(&stage, "ENV");
    let listen = env.split_whitespace().find_map(|kv| kv.strip_prefix("GRANTBRIDGE_LISTEN=")).unwrap();
    assert_eq!(single(&stage, "EXPOSE"), listen.rsplit(':').next().unwrap());
    let volume = exec_form(single(&stage, "VOLUME"));
    let config: toml::Value = toml::from_str(&read(source)).unwrap();
    let url = config["database"]["url"].as_str().unwrap();
    assert!(volume.iter().any(|v| url.starts_with(&format!("sqlite://{v}/"))), "{url} is in the volume {volume:?}");
}

#[test]
fn the_build_context_holds_every_file_the_dockerfile_copies() {
    let ignore = read(".dockerignore");
    let allowed: Vec<&str> = ignore.lines().filter_map(|l| l.trim().strip_prefix('!')).collect();
    assert!(ignore.lines().any(|l| l.trim() == "*"), ".dockerignore starts from nothing");
    for (_, args) in dockerfile().iter().filter(|(i, _)| i == "COPY") {
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo(source).exists(), "COPY {source}: it exists");
            let source = source.trim_end_matches('/');
            assert!(
                allowed.iter().any(|a| a.trim_end_matches('/') == source),
                "COPY {source}: .dockerignore lets it into the build context"
            );
        }
    }
}

#[test]
fn the_container_config_loads_and_the_health_check_answers_only_while_grantbridge_serves() {
    let config = repo("deploy/docker/grantbridge.toml");
    let secrets =
        [("JIRA_WEBHOOK_SECRET", "test-jira-secret-value"), ("SERVICENOW_WEBHOOK_SECRET", "test-sn-secret-value")];
    let out = run(&["check-config", "--config", config.to_str().unwrap()], &secrets);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("database: sqlite:///var/lib/grantbridge/grantbridge.db"), "{stdout}");

    let healthcheck = single(&runtime_stage(), "HEALTHCHECK").to_owned();
    let command = exec_form(healthcheck.split_once("CMD ").unwrap().1);
    if !available("bash") {
        eprintln!("skipped: bash is not installed, the HEALTHCHECK command was not run");
        return;
    }
    let check = |listen: &str| -> Output {
        Command::new(&command[0]).args(&command[1..]).env("GRANTBRIDGE_LISTEN", listen).output().unwrap()
    };

    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.path().join("grantbridge.db").display());
    let mut server = Server::start(&config, &db, dir.path(), &secrets);
    let listen = format!("127.0.0.1:{}", server.port);
    let out = check(&listen);
    assert!(out.status.success(), "healthy while serving: {}{}", String::from_utf8_lossy(&out.stderr), server.logs());
    assert!(server.terminate().success());
    let out = check(&listen);
    assert!(!out.status.success(), "unhealthy once stopped");
}

// ------------------------------------------------------------------------------------------------ systemd

fn unit() -> Vec<(String, String)> {
    read("deploy/systemd/grantbridge.service")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn unit_values(unit: &[(String, String)], key: &str) -> Vec<String> {
    unit.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
}

const CREDENTIALS: &str = "/run/credentials/grantbridge.service";

#[test]
fn the_unit_is_hardened_and_hands_over_exactly_the_credentials_its_config_reads() {
    let unit = unit();
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "grantbridge"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert!(unit_values(&unit, key).iter().any(|v| v == value), "{key}={value}");
    }
    let stop: u64 = unit_values(&unit, "TimeoutStopSec")[0].trim_end_matches('s').parse().unwrap();
    assert!(stop > 60, "TimeoutStopSec={stop} covers 30 s of requests and 30 s of workers");
    let exec = &unit_values(&unit, "ExecStart")[0];
    assert_eq!(exec, "/usr/local/bin/grantbridge serve --config /etc/grantbridge/grantbridge.toml");

    let config = read("deploy/systemd/grantbridge.toml");
    let loaded: BTreeSet<String> = unit_values(&unit, "LoadCredential")
        .iter()
        .map(|v| format!("{CREDENTIALS}/{}", v.split_once(':').unwrap().0))
        .collect();
    let (env, files) = secret_refs(&config);
    assert!(env.is_empty(), "the unit sets no secret in the environment");
    assert_eq!(files, loaded, "the config reads exactly the credentials the unit loads");

    let state = &unit_values(&unit, "StateDirectory")[0];
    let value: toml::Value = toml::from_str(&config).unwrap();
    let url = value["database"]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("sqlite:///var/lib/{state}/")), "{url} is in the state directory");
}

#[test]
fn the_systemd_config_loads_with_grantbridges_parser() {
    let dir = TempDir::new();
    let fixture = |name: &str| std::fs::read_to_string(repo(&format!("tests/fixtures/entra/{name}"))).unwrap();
    for credential in ["jira-webhook-secret", "servicenow-webhook-secret", "jira-api-token", "servicenow-api-password"]
    {
        dir.write(credential, format!("test-{credential}-value\n"));
    }
    dir.write("entra-certificate.pem", format!("{}{}", fixture("cert.pem"), fixture("key.pem")));
    let text = read("deploy/systemd/grantbridge.toml").replace(CREDENTIALS, &dir.path().display().to_string());

    let settings = grantbridge::config::Settings::parse(&text, "systemd", &grantbridge::config::EnvOverrides::none())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.database.url, "sqlite:///var/lib/grantbridge/grantbridge.db");
    let names: Vec<&str> = settings.sources.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["jira", "servicenow"]);
    assert!(settings.entra.is_some(), "[entra] with the certificate credential");
    assert!(settings.policy.dry_run());
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    if !available("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed; check with `systemd-analyze verify grantbridge.service`");
        return;
    }
    let dir = TempDir::new();
    let original = read("deploy/systemd/grantbridge.service");
    let verify = |text: &str| -> Output {
        let path = dir.write("grantbridge.service", text);
        Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap()
    };

    // As shipped: the binary is not installed here, which is the one complaint allowed.
    let out = verify(&original);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.contains("/usr/local/bin/grantbridge") && line.contains("not executable"), "unexpected: {line}");
    }

    // With the binary this test built, nothing at all.
    let built = original.replace("/usr/local/bin/grantbridge", env!("CARGO_BIN_EXE_grantbridge"));
    let out = verify(&built);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    // A typo is noticed, so the check above means something.
    let out = verify(&built.replace("ProtectSystem=", "ProtectSytem="));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSytem"), "systemd-analyze reports unknown keys");

    let path = dir.write("grantbridge.service", &built);
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    match report.lines().find_map(|l| l.split_once("Overall exposure level for grantbridge.service: ")) {
        Some((_, rest)) => {
            let score: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            assert!(score <= 2.0, "exposure {score} (0 is best, 10 worst): {report}");
        }
        None => eprintln!("skipped: this systemd-analyze cannot rate the unit offline"),
    }
}

// ------------------------------------------------------------------------------------------------ Entra script

const FAKE_AZ: &str = r#"#!/usr/bin/env bash
# Records every call; answers the few queries create-app.sh reads.
printf '%s\n' "$*" >> "$AZ_LOG"
case "$*" in
  "account show"*) echo "72f988bf-86f1-41af-91ab-2d7cd011db47" ;;
  "ad app create"*) echo "11111111-2222-3333-4444-555555555555" ;;
  "ad sp create"*) echo "99999999-8888-7777-6666-555555555555" ;;
  "ad sp show --id 00000003-0000-0000-c000-000000000000"*)
    printf 'role-%s\n' "$(printf '%s' "$*" | sed -n "s/.*value=='\([^']*\)'.*/\1/p")" ;;
  "aks show"*) echo "https://oidc.prod-aks.azure.com/tenant/issuer/" ;;
esac
"#;

/// Runs create-app.sh against a fake `az`; returns its exit status, stderr and the calls made.
fn create_app(env: &[(&str, &str)]) -> (bool, String, Vec<String>) {
    let dir = TempDir::new();
    let az = dir.write("az", FAKE_AZ);
    let status = Command::new("chmod").arg("+x").arg(&az).status().unwrap();
    assert!(status.success());
    let log = dir.path().join("az.log");
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg(repo("deploy/entra/create-app.sh")).env("PATH", path).env("AZ_LOG", &log);
    for name in [
        "APP_NAME",
        "GRANT_KINDS",
        "CREDENTIAL",
        "OIDC_ISSUER",
        "AKS_CLUSTER",
        "AKS_RESOURCE_GROUP",
        "K8S_NAMESPACE",
        "K8S_SERVICE_ACCOUNT",
        "CERT_FILE",
        "SECRET_FILE",
        "AZURE_RBAC_SCOPE",
        "AZURE_RBAC_ROLE_IDS",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let calls = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), calls)
}

fn requested(calls: &[String]) -> BTreeSet<String> {
    calls
        .iter()
        .filter(|c| c.starts_with("ad app permission add"))
        .map(|c| {
            assert!(c.contains("--api 00000003-0000-0000-c000-000000000000"), "a Microsoft Graph permission: {c}");
            let grant = c.split("--api-permissions ").nth(1).unwrap().split_whitespace().next().unwrap();
            let role = grant.strip_suffix("=Role").unwrap_or_else(|| panic!("an application permission: {grant}"));
            role.strip_prefix("role-").unwrap().to_owned()
        })
        .collect()
}

#[test]
fn the_entra_script_is_valid_bash_and_requests_exactly_the_permissions_of_its_grant_kinds() {
    if !available("bash") {
        eprintln!("skipped: bash is not installed");
        return;
    }
    let out = Command::new("bash").arg("-n").arg(repo("deploy/entra/create-app.sh")).output().unwrap();
    assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));

    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let cases: [(&str, BTreeSet<String>); 4] = [
        ("group_member", set(&["User.Read.All", "GroupMember.ReadWrite.All"])),
        (
            "pim_group",
            set(&["User.Read.All", "GroupMember.Read.All", "PrivilegedAssignmentSchedule.ReadWrite.AzureADGroup"]),
        ),
        ("pim_role", set(&["User.Read.All", "GroupMember.Read.All", "RoleAssignmentSchedule.ReadWrite.Directory"])),
        (
            "group_member pim_group pim_role",
            set(&[
                "User.Read.All",
                "GroupMember.ReadWrite.All",
                "PrivilegedAssignmentSchedule.ReadWrite.AzureADGroup",
                "RoleAssignmentSchedule.ReadWrite.Directory",
            ]),
        ),
    ];
    for (kinds, expected) in cases {
        let (ok, stderr, calls) = create_app(&[("GRANT_KINDS", kinds), ("CREDENTIAL", "none")]);
        assert!(ok, "{kinds}: {stderr}");
        assert_eq!(requested(&calls), expected, "{kinds}");
        assert!(
            calls.iter().any(|c| c.starts_with("ad app permission admin-consent --id 11111111-")),
            "{kinds}: consent"
        );
        assert!(!calls.iter().any(|c| c.starts_with("role assignment")), "{kinds}: no Azure role");
    }

    let (ok, stderr, calls) = create_app(&[("GRANT_KINDS", "group_member aws_iam"), ("CREDENTIAL", "none")]);
    assert!(!ok && stderr.contains("unknown grant kind 'aws_iam'"), "{stderr}");
    assert!(requested(&calls).is_empty(), "nothing is requested before the parameters are checked");
}

#[test]
fn the_entra_script_federates_the_kits_service_account_and_limits_the_azure_role() {
    if !available("bash") {
        eprintln!("skipped: bash is not installed");
        return;
    }
    let docs = manifests();
    let account = text(&one(&docs, "ServiceAccount")["metadata"]["name"], "ServiceAccount name").to_owned();
    let contributor = "b24988ac-6180-42a0-ab88-20f7382dd24c";
    let reader = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    let roles = format!("{contributor},{reader}");
    let (ok, stderr, calls) = create_app(&[
        ("GRANT_KINDS", "group_member azure_rbac"),
        ("AKS_CLUSTER", "aks-prod"),
        ("AKS_RESOURCE_GROUP", "rg-aks"),
        ("K8S_NAMESPACE", "iam"),
        ("AZURE_RBAC_SCOPE", "/subscriptions/1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809/resourceGroups/app-dev"),
        ("AZURE_RBAC_ROLE_IDS", roles.as_str()),
    ]);
    assert!(ok, "{stderr}");

    let create =
        calls.iter().find(|c| c.starts_with("ad app federated-credential create")).expect("a federated credential");
    let parameters: serde_json::Value = serde_json::from_str(create.split("--parameters ").nth(1).unwrap()).unwrap();
    assert_eq!(parameters["issuer"], "https://oidc.prod-aks.azure.com/tenant/issuer/");
    assert_eq!(parameters["subject"], format!("system:serviceaccount:iam:{account}"), "the kit's service account");
    assert_eq!(parameters["audiences"], serde_json::json!(["api://AzureADTokenExchange"]));

    let assignment = calls.iter().find(|c| c.starts_with("role assignment create")).expect("an Azure role assignment");
    assert!(
        assignment.contains("--role f58310d9-a9f6-439a-9e8d-f62e7b41a168"),
        "Role Based Access Control Administrator"
    );
    assert!(assignment.contains("--assignee-object-id 99999999-8888-7777-6666-555555555555"), "{assignment}");
    assert!(assignment.contains("--scope /subscriptions/1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809/resourceGroups/app-dev"));
    let condition = assignment.split("--condition ").nth(1).unwrap();
    assert_eq!(condition.matches(&format!("GuidEquals {{{contributor}, {reader}}}")).count(), 2, "{condition}");
    assert_eq!(condition.matches("StringEqualsIgnoreCase {'User'}").count(), 2, "{condition}");
    assert!(assignment.contains("--condition-version 2.0"));

    let (ok, stderr, _) = create_app(&[("GRANT_KINDS", "azure_rbac"), ("CREDENTIAL", "none")]);
    assert!(!ok && stderr.contains("AZURE_RBAC_SCOPE"), "no unlimited Azure role without a scope: {stderr}");
}
