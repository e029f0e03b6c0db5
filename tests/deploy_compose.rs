//! `deploy/compose/` agrees with itself and with the sidecar: three or more replicas built from
//! the repository's Dockerfile mount the same `sidecar.toml` read-only where `--config` points;
//! every environment variable the config reads is set in every replica (the Redis URL naming
//! the compose file's Redis service); the config passes the real binary's `check` with those
//! variables; the published ports reach the config's listeners, the API on the host's loopback
//! only; and compose waits longer than `shutdown_grace` before it kills a replica.
//!
//! No container engine runs here: this is what can be checked without one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A scalar as text, whatever YAML typed it as.
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(v) | Yaml::Real(v) => Some(v.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping's entries with YAML merge keys (`<<: *anchor`) applied, the service's own keys
/// winning: the YAML reader resolves the alias but leaves the merge to us.
fn merged(y: &Yaml) -> BTreeMap<String, Yaml> {
    let mut out = BTreeMap::new();
    let Some(hash) = y.as_hash() else { return out };
    if let Some(base) = hash.get(&Yaml::String("<<".into())) {
        out.extend(merged(base));
    }
    for (k, v) in hash {
        if let Some(k) = k.as_str().filter(|k| *k != "<<") {
            out.insert(k.to_owned(), v.clone());
        }
    }
    out
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| v.iter().filter_map(scalar).collect())
        .unwrap_or_default()
}

/// The compose file's services, merged, by name.
fn services() -> BTreeMap<String, BTreeMap<String, Yaml>> {
    let text = read(&compose_dir().join("docker-compose.yml"));
    let docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml: not valid YAML");
    let services = merged(&docs[0])
        .remove("services")
        .expect("docker-compose.yml: no services");
    merged(&services)
        .into_iter()
        .map(|(name, service)| (name, merged(&service)))
        .collect()
}

/// The services built from the repository's Dockerfile: the sidecar replicas.
fn replicas() -> BTreeMap<String, BTreeMap<String, Yaml>> {
    services()
        .into_iter()
        .filter(|(_, s)| s.contains_key("build"))
        .collect()
}

/// The Redis service's name.
fn redis_service() -> String {
    let found: Vec<String> = services()
        .into_iter()
        .filter(|(_, s)| {
            s.get("image")
                .and_then(scalar)
                .is_some_and(|i| i.starts_with("redis:"))
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(found.len(), 1, "one Redis service: {found:?}");
    found.into_iter().next().unwrap()
}

/// A replica's environment: the compose value, `${VAR:?…}` as given.
fn environment(service: &BTreeMap<String, Yaml>) -> BTreeMap<String, String> {
    let env = service.get("environment").expect("no environment");
    merged(env)
        .into_iter()
        .map(|(k, v)| (k, scalar(&v).unwrap_or_default()))
        .collect()
}

fn config_text() -> String {
    read(&compose_dir().join("sidecar.toml"))
}

fn config_toml() -> toml::Value {
    toml::from_str(&config_text()).expect("sidecar.toml: not TOML")
}

/// Every `{ env = "VAR" }` the config reads.
fn config_env_vars() -> BTreeSet<String> {
    fn walk(v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                if let (Some(toml::Value::String(var)), 1) = (t.get("env"), t.len()) {
                    out.insert(var.clone());
                }
                t.values().for_each(|v| walk(v, out));
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&config_toml(), &mut out);
    out
}

/// The port of a `listen` value (`"0.0.0.0:8081"` or a bare `"8081"`).
fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn replicas_are_built_alike_and_mount_the_same_config_read_only() {
    let replicas = replicas();
    assert!(replicas.len() >= 3, "{:?}", replicas.keys());
    let redis = redis_service();
    for (name, s) in &replicas {
        let build = merged(&s["build"]);
        assert_eq!(
            scalar(&build["context"]).as_deref(),
            Some("../.."),
            "{name}"
        );
        assert_eq!(
            scalar(&build["dockerfile"]).as_deref(),
            Some("deploy/Dockerfile"),
            "{name}"
        );
        let command = strings(&s["command"]);
        let at = command
            .iter()
            .position(|a| a == "--config")
            .expect("--config");
        let config_path = &command[at + 1];
        let volumes = strings(&s["volumes"]);
        assert!(
            volumes.contains(&format!("./sidecar.toml:{config_path}:ro")),
            "{name} mounts ./sidecar.toml read-only at {config_path}: {volumes:?}"
        );
        assert_eq!(scalar(&s["read_only"]).as_deref(), Some("true"), "{name}");
        let depends = s.get("depends_on").map(merged).unwrap_or_default();
        assert!(depends.contains_key(&redis), "{name} waits for {redis}");
    }
}

#[test]
fn every_variable_the_config_reads_is_set_and_the_config_passes_check() {
    let vars = config_env_vars();
    assert!(vars.contains("REDIS_URL"), "{vars:?}");
    let redis = redis_service();
    for (name, s) in replicas() {
        let env = environment(&s);
        for var in &vars {
            assert!(env.contains_key(var), "{name} does not set {var}");
        }
        assert_eq!(env["REDIS_URL"], format!("redis://{redis}:6379"), "{name}");

        // What compose would pass, with a dummy for each value it takes from the shell.
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus-sidecar"));
        command
            .arg("check")
            .arg("--config")
            .arg(compose_dir().join("sidecar.toml"))
            .env_remove("NEXUS_SIDECAR_CONFIG");
        for (var, value) in &env {
            let value = if value.starts_with("${") {
                "dummy"
            } else {
                value
            };
            command.env(var, value);
        }
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: check failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("url = { env = \"REDIS_URL\" }"), "{stdout}");
    }
}

#[test]
fn published_ports_reach_the_listeners_and_the_api_only_from_loopback() {
    let config = config_toml();
    let admin = port_of(config["admin"]["listen"].as_str().unwrap());
    let upstreams: Vec<u16> = config["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| port_of(u["listen"].as_str().unwrap()))
        .collect();
    let mut host_ports = BTreeSet::new();
    for (name, s) in replicas() {
        let mut container_ports = BTreeSet::new();
        for published in strings(&s["ports"]) {
            // HOST_IP:HOST_PORT:CONTAINER_PORT
            let parts: Vec<&str> = published.split(':').collect();
            let [ip, host, container] = parts[..] else {
                panic!("{name}: {published} does not name the host address")
            };
            let container: u16 = container.parse().unwrap();
            assert!(host_ports.insert(host.to_owned()), "host port {host} twice");
            if upstreams.contains(&container) {
                // allow_remote = true inside the container: the host's loopback is the bound.
                assert_eq!(ip, "127.0.0.1", "{name}: {published}");
            }
            container_ports.insert(container);
        }
        assert!(container_ports.contains(&admin), "{name}: admin {admin}");
        for port in &upstreams {
            assert!(container_ports.contains(port), "{name}: upstream {port}");
        }
    }
}

#[test]
fn compose_waits_longer_than_the_drain() {
    let config = config_toml();
    let grace = config["shutdown_grace"].as_str().unwrap_or("20s");
    let grace = humantime::parse_duration(grace).unwrap();
    for (name, s) in replicas() {
        let stop = scalar(&s["stop_grace_period"]).expect("stop_grace_period");
        let stop = humantime::parse_duration(&stop).unwrap();
        assert!(stop > grace, "{name}: {stop:?} <= shutdown_grace {grace:?}");
    }
}
