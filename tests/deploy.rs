//! The examples in `deploy/` agree with each other and with the sidecar itself.
//!
//! - Kubernetes (`deploy/kubernetes/*.yaml`): the ConfigMap's `config.toml` loads with the real
//!   parser once the Secret's keys are written as files where the pod would mount them; every
//!   file the config reads lies under a read-only mount of the sidecar and names a key of the
//!   mounted Secret or ConfigMap; `--config` names the mounted ConfigMap key; the probes hit
//!   `[admin] listen`; the app's URL hits an upstream listener on 127.0.0.1; the sidecar is a
//!   native sidecar with a restrictive securityContext, resources, and a grace period longer
//!   than `shutdown_grace`.
//! - systemd (`deploy/systemd/`): every `LoadCredential=` is read by the config and every
//!   credential path the config reads is loaded; the config loads; reload sends HUP; exit 64
//!   does not restart; the stop timeout outlasts `shutdown_grace`.
//! - `deploy/Dockerfile`: `--locked` release build, distroless non-root final stage, the same
//!   `--config` path, user and ports as the Kubernetes example.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use nexus_sidecar::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh, empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nexus-deploy-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ------------------------------------------------------------------------------------------
// YAML helpers

fn s(y: &Yaml) -> Option<&str> {
    y.as_str()
}

fn seq(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// A string-keyed mapping as (key, value) pairs; empty if `y` is not a mapping.
fn map(y: &Yaml) -> Vec<(&str, &Yaml)> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?, v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as text, whatever YAML typed it as (`9901`, `"9901"`, `true`).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(v) | Yaml::Real(v) => Some(v.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// The Kubernetes example

/// Every document of every `deploy/kubernetes/*.yaml`, with the file it came from.
fn k8s_docs() -> Vec<(String, Yaml)> {
    let dir = deploy_dir().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = YamlLoader::load_from_str(&read(&file))
            .unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            assert!(
                s(&doc["apiVersion"]).is_some() && s(&doc["kind"]).is_some(),
                "{name}: a document without apiVersion/kind"
            );
            assert!(
                s(&doc["metadata"]["name"]).is_some(),
                "{name}: a {} without metadata.name",
                s(&doc["kind"]).unwrap()
            );
            docs.push((name.clone(), doc));
        }
    }
    docs
}

/// A file the pod mounts: where, from which volume source, and its content.
#[derive(Debug, Clone)]
struct MountedFile {
    path: String,
    content: String,
}

/// A volumeMount of the sidecar backed by a Secret or a ConfigMap of the example.
#[derive(Debug)]
struct SourceMount {
    mount_path: String,
    read_only: bool,
    /// `Secret/name` or `ConfigMap/name`.
    source: String,
    /// File name in the mount -> content.
    files: BTreeMap<String, String>,
}

/// The Kubernetes example, taken apart.
struct K8s {
    docs: Vec<(String, Yaml)>,
    pod: Yaml,
    sidecar: Yaml,
}

impl K8s {
    fn load() -> K8s {
        let docs = k8s_docs();
        let workloads: Vec<&Yaml> = docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| {
                matches!(
                    s(&d["kind"]),
                    Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job")
                )
            })
            .collect();
        assert_eq!(workloads.len(), 1, "expected exactly one workload");
        let pod = workloads[0]["spec"]["template"]["spec"].clone();
        assert!(pod.is_hash(), "the workload has no spec.template.spec");
        let sidecars: Vec<&Yaml> = seq(&pod["initContainers"])
            .iter()
            .filter(|c| s(&c["image"]).is_some_and(|i| i.contains("nexus-sidecar")))
            .collect();
        assert_eq!(
            sidecars.len(),
            1,
            "expected exactly one nexus-sidecar image among initContainers (native sidecar)"
        );
        let sidecar = sidecars[0].clone();
        K8s { docs, pod, sidecar }
    }

    fn doc(&self, kind: &str, name: &str) -> &Yaml {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| s(&d["kind"]) == Some(kind) && s(&d["metadata"]["name"]) == Some(name))
            .unwrap_or_else(|| panic!("the pod uses {kind}/{name}, which no YAML file defines"))
    }

    /// The files a Secret or ConfigMap volume puts in its mount, honouring `items`.
    fn volume_files(&self, volume: &Yaml) -> Option<(String, BTreeMap<String, String>)> {
        let (kind, src, name_key) = if volume["secret"].is_hash() {
            ("Secret", &volume["secret"], "secretName")
        } else if volume["configMap"].is_hash() {
            ("ConfigMap", &volume["configMap"], "name")
        } else {
            return None;
        };
        let name = s(&src[name_key]).expect("volume source without a name");
        let doc = self.doc(kind, name);
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in map(&doc["stringData"]) {
            keys.insert(k.to_owned(), scalar(v).expect("stringData value"));
        }
        for (k, v) in map(&doc["data"]) {
            let text = scalar(v).expect("data value");
            let value = if kind == "Secret" {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .unwrap_or_else(|e| panic!("Secret/{name} data.{k}: not base64: {e}"));
                String::from_utf8(bytes).unwrap()
            } else {
                text
            };
            keys.insert(k.to_owned(), value);
        }
        assert!(!keys.is_empty(), "{kind}/{name} has no keys");
        let files = match src["items"].as_vec() {
            None => keys,
            Some(items) => items
                .iter()
                .map(|item| {
                    let key = s(&item["key"]).expect("items[].key");
                    let path = s(&item["path"]).expect("items[].path");
                    let value = keys
                        .get(key)
                        .unwrap_or_else(|| panic!("{kind}/{name} has no key {key:?}"));
                    (path.to_owned(), value.clone())
                })
                .collect(),
        };
        Some((format!("{kind}/{name}"), files))
    }

    /// The sidecar's volumeMounts that come from a Secret or ConfigMap of the example.
    fn sidecar_mounts(&self) -> Vec<SourceMount> {
        let volumes = seq(&self.pod["volumes"]);
        seq(&self.sidecar["volumeMounts"])
            .iter()
            .filter_map(|m| {
                let vname = s(&m["name"]).expect("volumeMounts[].name");
                let volume = volumes
                    .iter()
                    .find(|v| s(&v["name"]) == Some(vname))
                    .unwrap_or_else(|| panic!("volumeMount {vname:?} has no volume"));
                assert!(
                    m["subPath"].is_badvalue(),
                    "volumeMount {vname:?}: subPath mounts never see a rotated Secret"
                );
                let (source, files) = self.volume_files(volume)?;
                Some(SourceMount {
                    mount_path: s(&m["mountPath"])
                        .expect("mountPath")
                        .trim_end_matches('/')
                        .to_owned(),
                    read_only: m["readOnly"].as_bool() == Some(true),
                    source,
                    files,
                })
            })
            .collect()
    }

    /// Every file the sidecar container sees from a Secret or ConfigMap, by absolute path.
    fn mounted_files(&self) -> Vec<MountedFile> {
        self.sidecar_mounts()
            .iter()
            .flat_map(|m| {
                m.files.iter().map(|(name, content)| MountedFile {
                    path: format!("{}/{name}", m.mount_path),
                    content: content.clone(),
                })
            })
            .collect()
    }

    /// The sidecar's command line after the image's entrypoint (`args`, else `command`).
    fn sidecar_args(&self) -> Vec<String> {
        let args = if self.sidecar["args"].is_array() {
            &self.sidecar["args"]
        } else {
            &self.sidecar["command"]
        };
        seq(args).iter().filter_map(scalar).collect()
    }

    /// The value of `--config` on the sidecar's command line.
    fn config_path(&self) -> String {
        option_value(&self.sidecar_args(), "--config")
            .expect("the sidecar container passes no --config PATH")
    }

    /// The ConfigMap's config.toml, as the sidecar would read it.
    fn config_text(&self) -> String {
        let path = self.config_path();
        let file = self
            .mounted_files()
            .into_iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("--config {path}: no mounted ConfigMap key is that file"));
        file.content
    }

    /// The configuration, loaded by the real parser with every mounted Secret/ConfigMap
    /// written out as files under a temp directory in place of its mount path.
    fn config(&self) -> Config {
        let dir = temp_dir("k8s");
        let mut mounts = self.sidecar_mounts();
        // Longest first, so a mount nested in another is rewritten as itself.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
        let mut text = self.config_text();
        for (i, m) in mounts.iter().enumerate() {
            let local = dir.join(i.to_string());
            std::fs::create_dir_all(&local).unwrap();
            for (name, content) in &m.files {
                std::fs::write(local.join(name), content).unwrap();
            }
            text = text.replace(
                &format!("\"{}/", m.mount_path),
                &format!("\"{}/", local.display()),
            );
        }
        let config = Config::from_toml(&text).unwrap_or_else(|e| {
            panic!("the ConfigMap's config.toml does not load with the Secret's files: {e}")
        });
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    /// A container port given as a number or as the name of one of `container`'s ports.
    fn port(container: &Yaml, port: &Yaml) -> u16 {
        if let Some(n) = port.as_i64() {
            return u16::try_from(n).unwrap();
        }
        let name = s(port).expect("probe port");
        if let Ok(n) = name.parse() {
            return n;
        }
        let p = seq(&container["ports"])
            .iter()
            .find(|p| s(&p["name"]) == Some(name))
            .unwrap_or_else(|| panic!("probe port {name:?} is not a named port"));
        u16::try_from(p["containerPort"].as_i64().unwrap()).unwrap()
    }
}

fn option_value(args: &[String], option: &str) -> Option<String> {
    let prefix = format!("{option}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == option {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

/// Every path the configuration reads: `{ file = "..." }` secrets and `ca_file`.
fn config_file_paths(text: &str) -> Vec<String> {
    fn walk(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                if t.len() == 1 {
                    if let Some(toml::Value::String(p)) = t.get("file") {
                        out.push(p.clone());
                        return;
                    }
                }
                if let Some(toml::Value::String(p)) = t.get("ca_file") {
                    out.push(p.clone());
                }
                t.values().for_each(|v| walk(v, out));
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let value: toml::Value = toml::from_str(text).expect("config is not TOML");
    let mut out = Vec::new();
    walk(&value, &mut out);
    out
}

#[test]
fn k8s_config_map_config_loads_with_the_secrets_files() {
    let k = K8s::load();
    let config = k.config();
    assert!(!config.upstreams.is_empty(), "the example has no upstream");
    assert!(
        config.warnings.iter().all(|w| !w.contains("literal")),
        "the example config uses a literal secret: {:?}",
        config.warnings
    );
}

#[test]
fn k8s_every_file_the_config_reads_is_a_key_of_a_read_only_mount() {
    let k = K8s::load();
    let paths = config_file_paths(&k.config_text());
    assert!(
        !paths.is_empty(),
        "the example config reads no {{ file = ... }} secret: credentials belong in the Secret"
    );
    let mounts = k.sidecar_mounts();
    for path in &paths {
        let mount = mounts
            .iter()
            .filter(|m| path.starts_with(&format!("{}/", m.mount_path)))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| {
                panic!("the config reads {path}, which is under no Secret/ConfigMap mount of the sidecar")
            });
        let name = &path[mount.mount_path.len() + 1..];
        assert!(
            mount.files.contains_key(name),
            "the config reads {path}, but {} has no key {name:?} (keys: {:?})",
            mount.source,
            mount.files.keys().collect::<Vec<_>>()
        );
        assert!(
            mount.read_only,
            "the mount of {} at {} is not readOnly",
            mount.source, mount.mount_path
        );
    }
    // Secrets are read from a Secret, not from the ConfigMap.
    let secret_mounts: Vec<&SourceMount> = mounts
        .iter()
        .filter(|m| m.source.starts_with("Secret/"))
        .collect();
    assert!(!secret_mounts.is_empty(), "the sidecar mounts no Secret");
    for m in secret_mounts {
        assert!(m.read_only, "{} is not mounted readOnly", m.source);
        for name in m.files.keys() {
            let file = format!("{}/{name}", m.mount_path);
            assert!(
                paths.contains(&file),
                "{} key {name:?} ({file}) is mounted but the config never reads it",
                m.source
            );
        }
    }
}

#[test]
fn k8s_config_argument_is_the_mounted_config_map_key() {
    let k = K8s::load();
    let path = k.config_path();
    let mount = k
        .sidecar_mounts()
        .into_iter()
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("--config {path} is under no mount of the sidecar"));
    assert!(
        mount.source.starts_with("ConfigMap/"),
        "--config {path} comes from {}, not a ConfigMap",
        mount.source
    );
    let key = &path[mount.mount_path.len() + 1..];
    assert!(
        mount.files.contains_key(key),
        "--config {path}: {} has no key {key:?}",
        mount.source
    );
    assert!(mount.read_only, "the ConfigMap mount is not readOnly");
}

#[test]
fn k8s_probes_hit_the_admin_listener() {
    let k = K8s::load();
    let config = k.config();
    let admin = config
        .admin
        .as_ref()
        .expect("the config has no [admin] listener for the probes")
        .listen;
    assert!(
        admin.ip().is_unspecified(),
        "[admin] listen = {admin}: the kubelet probes the pod IP, so bind 0.0.0.0 (or [::])"
    );
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &k.sidecar[probe]["httpGet"];
        if probe == "startupProbe" && k.sidecar[probe].is_badvalue() {
            continue; // optional
        }
        assert!(get.is_hash(), "the sidecar has no {probe}.httpGet");
        assert_eq!(s(&get["path"]), Some(path), "{probe} path");
        assert_eq!(
            K8s::port(&k.sidecar, &get["port"]),
            admin.port(),
            "{probe} port is not the [admin] listen port"
        );
    }
    assert!(
        seq(&k.sidecar["ports"])
            .iter()
            .any(|p| p["containerPort"].as_i64() == Some(i64::from(admin.port()))),
        "the sidecar does not declare containerPort {}",
        admin.port()
    );
}

#[test]
fn k8s_app_points_at_an_upstream_listener_on_loopback() {
    let k = K8s::load();
    let config = k.config();
    let listens: Vec<SocketAddr> = config.upstreams.iter().map(|u| u.listen).collect();
    for addr in &listens {
        assert_eq!(
            addr.ip().to_string(),
            "127.0.0.1",
            "an upstream listens on {addr}: in a pod it belongs on 127.0.0.1"
        );
    }
    let mut urls = 0;
    for app in seq(&k.pod["containers"]) {
        let name = s(&app["name"]).unwrap_or("?");
        let mut texts: Vec<String> = seq(&app["env"])
            .iter()
            .filter_map(|e| scalar(&e["value"]))
            .collect();
        texts.extend(seq(&app["args"]).iter().filter_map(scalar));
        texts.extend(seq(&app["command"]).iter().filter_map(scalar));
        for text in texts {
            for host in ["127.0.0.1:", "localhost:"] {
                for (i, _) in text.match_indices(&format!("http://{host}")) {
                    let rest = &text[i + "http://".len() + host.len()..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let port: u16 = digits.parse().unwrap_or_else(|_| {
                        panic!("container {name}: no port in {:?}", &text[i..])
                    });
                    assert!(
                        listens.iter().any(|l| l.port() == port),
                        "container {name} uses http://{host}{port}, but the upstreams listen on {listens:?}"
                    );
                    urls += 1;
                }
            }
        }
    }
    assert!(urls > 0, "no app container points at http://127.0.0.1:PORT");
}

#[test]
fn k8s_sidecar_is_native_restricted_and_sized() {
    let k = K8s::load();
    assert_eq!(
        s(&k.sidecar["restartPolicy"]),
        Some("Always"),
        "an initContainer is a native sidecar only with restartPolicy: Always"
    );
    let pod_sc = &k.pod["securityContext"];
    let sc = &k.sidecar["securityContext"];
    // Pod-level values apply unless the container overrides them.
    let effective = |key: &str| -> Yaml {
        if sc[key].is_badvalue() {
            pod_sc[key].clone()
        } else {
            sc[key].clone()
        }
    };
    assert_eq!(
        effective("runAsNonRoot").as_bool(),
        Some(true),
        "runAsNonRoot"
    );
    assert_eq!(
        effective("runAsUser").as_i64(),
        Some(65532),
        "runAsUser must be 65532, the image's nonroot user"
    );
    assert_eq!(
        s(&effective("seccompProfile")["type"]),
        Some("RuntimeDefault"),
        "seccompProfile"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    assert!(
        seq(&sc["capabilities"]["drop"])
            .iter()
            .any(|c| s(c) == Some("ALL")),
        "capabilities.drop does not contain ALL"
    );
    assert!(
        seq(&sc["capabilities"]["add"]).is_empty(),
        "the sidecar needs no capability"
    );
    assert_ne!(sc["privileged"].as_bool(), Some(true), "privileged");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                scalar(&k.sidecar["resources"][kind][res]).is_some(),
                "the sidecar has no resources.{kind}.{res}"
            );
        }
    }
}

#[test]
fn k8s_grace_period_outlasts_shutdown_grace() {
    let k = K8s::load();
    let config = k.config();
    let grace = k.pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds is not set (default 30s)");
    assert!(
        Duration::from_secs(u64::try_from(grace).unwrap()) > config.shutdown_grace,
        "terminationGracePeriodSeconds = {grace} is not longer than shutdown_grace = {:?}",
        config.shutdown_grace
    );
}

// ------------------------------------------------------------------------------------------
// systemd

/// `KEY=VALUE` lines of a unit file, in order (keys repeat).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("unit line {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn unit_values<'a>(entries: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The single value of `key`, or the last one if repeated (systemd's rule for scalars).
fn unit_value<'a>(entries: &'a [(String, String)], key: &str) -> &'a str {
    unit_values(entries, key)
        .last()
        .copied()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// A systemd time span: "30", "30s", "1min 30s", "500ms".
fn systemd_span(text: &str) -> Duration {
    if let Ok(secs) = text.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("time span {text:?}: {e}"))
}

struct Systemd {
    unit_name: String,
    entries: Vec<(String, String)>,
    config_text: String,
}

impl Systemd {
    fn load() -> Systemd {
        let dir = deploy_dir().join("systemd");
        let unit_name = "nexus-sidecar.service".to_owned();
        Systemd {
            entries: unit_entries(&read(&dir.join(&unit_name))),
            config_text: read(&dir.join("config.toml")),
            unit_name,
        }
    }

    fn credentials_dir(&self) -> String {
        format!("/run/credentials/{}", self.unit_name)
    }

    /// `LoadCredential=NAME:PATH` names.
    fn credentials(&self) -> BTreeSet<String> {
        unit_values(&self.entries, "LoadCredential")
            .iter()
            .map(|v| {
                let (name, source) = v
                    .split_once(':')
                    .unwrap_or_else(|| panic!("LoadCredential={v}: expected NAME:PATH"));
                assert!(source.starts_with('/'), "LoadCredential={v}: relative path");
                name.to_owned()
            })
            .collect()
    }
}

#[test]
fn systemd_credentials_and_config_agree() {
    let u = Systemd::load();
    let loaded = u.credentials();
    assert!(!loaded.is_empty(), "the unit loads no credential");
    let prefix = format!("{}/", u.credentials_dir());
    let read: BTreeSet<String> = config_file_paths(&u.config_text)
        .iter()
        .map(|p| {
            p.strip_prefix(&prefix)
                .unwrap_or_else(|| {
                    panic!("the config reads {p}, outside {prefix}: with DynamicUser only the service's credentials are readable")
                })
                .to_owned()
        })
        .collect();
    assert_eq!(
        read, loaded,
        "files the config reads from {prefix} vs the unit's LoadCredential= names"
    );
}

#[test]
fn systemd_config_loads_with_the_credentials() {
    let u = Systemd::load();
    let dir = temp_dir("systemd");
    for name in u.credentials() {
        std::fs::write(dir.join(&name), format!("value-of-{name}\n")).unwrap();
    }
    let text = u.config_text.replace(
        &format!("\"{}/", u.credentials_dir()),
        &format!("\"{}/", dir.display()),
    );
    let config = Config::from_toml(&text)
        .unwrap_or_else(|e| panic!("deploy/systemd/config.toml does not load: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let stop = systemd_span(unit_value(&u.entries, "TimeoutStopSec"));
    assert!(
        stop > config.shutdown_grace,
        "TimeoutStopSec = {stop:?} is not longer than shutdown_grace = {:?}",
        config.shutdown_grace
    );
}

#[test]
fn systemd_unit_runs_reloads_and_restarts_sensibly() {
    let u = Systemd::load();
    let e = &u.entries;
    assert_eq!(unit_value(e, "Type"), "exec");
    let exec: Vec<String> = unit_value(e, "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/nexus-sidecar", "ExecStart binary");
    assert_eq!(
        option_value(&exec, "--config").as_deref(),
        Some("/etc/nexus-sidecar/config.toml"),
        "ExecStart --config"
    );
    let reload = unit_value(e, "ExecReload");
    assert!(
        reload.contains("kill") && (reload.contains("-HUP") || reload.contains("-s HUP")),
        "ExecReload={reload} does not send SIGHUP"
    );
    assert!(reload.contains("$MAINPID"), "ExecReload={reload}");
    assert_eq!(unit_value(e, "Restart"), "on-failure");
    assert!(
        unit_values(e, "RestartPreventExitStatus")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .any(|s| s == "64"),
        "RestartPreventExitStatus does not contain 64: a bad config would restart-loop"
    );
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(unit_value(e, key), want, "{key}=");
    }
    assert!(
        unit_values(e, "SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
}

// ------------------------------------------------------------------------------------------
// Dockerfile

/// Dockerfile instructions (continuations joined, comments dropped) as (INSTRUCTION, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&deploy_dir().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (ins, rest) = current.split_once(char::is_whitespace).unwrap();
        out.push((ins.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// A JSON-array (exec form) instruction argument.
fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{rest}: not exec form: {e}"))
}

#[test]
fn dockerfile_builds_locked_and_runs_distroless_nonroot() {
    let ins = dockerfile();
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(froms.len() >= 2, "not a multi-stage build");
    let (build, last) = (
        &ins[..*froms.last().unwrap()],
        &ins[*froms.last().unwrap()..],
    );

    let builder = &build[froms[0]].1;
    assert!(
        builder.starts_with("rust:") && builder.contains("bookworm"),
        "build stage {builder:?}: the official rust image on bookworm (glibc of debian12)"
    );
    let builds: Vec<&String> = build
        .iter()
        .filter(|(i, r)| i == "RUN" && r.contains("cargo build"))
        .map(|(_, r)| r)
        .collect();
    assert!(!builds.is_empty(), "no cargo build");
    for b in &builds {
        assert!(b.contains("--locked"), "cargo build without --locked: {b}");
        assert!(
            b.contains("--release"),
            "cargo build without --release: {b}"
        );
    }
    assert!(
        build
            .iter()
            .position(|(i, r)| i == "COPY" && r.contains("Cargo.lock"))
            < build
                .iter()
                .position(|(i, r)| i == "COPY" && r.starts_with("src")),
        "Cargo.toml/Cargo.lock must be copied (and dependencies built) before src/"
    );

    let image = &last[0].1;
    assert!(
        image.starts_with("gcr.io/distroless/") && image.ends_with(":nonroot"),
        "final stage {image:?} is not a distroless :nonroot image"
    );
    let user = last
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, r)| r.as_str())
        .unwrap_or("nonroot");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid == "nonroot" || uid.parse::<u32>().is_ok_and(|u| u != 0),
        "final stage runs as {user:?}"
    );
    let entrypoint = last
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .expect("no ENTRYPOINT");
    assert_eq!(exec_form(&entrypoint.1), ["/nexus-sidecar"]);
    assert!(
        last.iter()
            .any(|(i, r)| i == "COPY" && r.contains("--from=") && r.ends_with("/nexus-sidecar")),
        "the final stage does not copy the binary to /nexus-sidecar"
    );

    let ignore = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"));
    assert!(
        ignore
            .lines()
            .any(|l| matches!(l.trim(), "target" | "/target" | "target/" | "/target/")),
        ".dockerignore does not exclude target/"
    );
}

#[test]
fn dockerfile_agrees_with_the_kubernetes_example() {
    let ins = dockerfile();
    let final_stage = &ins[ins.iter().rposition(|(i, _)| i == "FROM").unwrap()..];
    let k = K8s::load();
    let config = k.config();

    let cmd = final_stage
        .iter()
        .find(|(i, _)| i == "CMD")
        .expect("no CMD");
    assert_eq!(
        option_value(&exec_form(&cmd.1), "--config"),
        Some(k.config_path()),
        "the image's default --config differs from the pod's"
    );

    if let Some((_, user)) = final_stage.iter().rev().find(|(i, _)| i == "USER") {
        let uid = user.split(':').next().unwrap();
        assert_eq!(
            uid.parse::<i64>().ok(),
            k.sidecar["securityContext"]["runAsUser"]
                .as_i64()
                .or(k.pod["securityContext"]["runAsUser"].as_i64()),
            "USER {user} differs from the pod's runAsUser"
        );
    }

    let exposed: BTreeSet<u16> = final_stage
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, r)| r.split_whitespace())
        .map(|p| p.split('/').next().unwrap().parse().unwrap())
        .collect();
    let mut used: BTreeSet<u16> = config.upstreams.iter().map(|u| u.listen.port()).collect();
    used.extend(config.admin.as_ref().map(|a| a.listen.port()));
    assert_eq!(
        exposed, used,
        "EXPOSE vs the ports of the Kubernetes config"
    );
}
