//! The deployment files in `deploy/`, checked offline as an operator would use them:
//!
//! - every manifest in `deploy/kubernetes/` validates against the Kubernetes API schemas
//!   (`kubernetes-validate`, strict: an unknown or misspelt field is an error, and so is a kind it has
//!   no schema for), is listed in `kustomization.yaml`, and the objects fit together: selectors match
//!   the pods, Services and probes name real ports, every Secret key a pod reads exists, the pods run
//!   non-root on a read-only root file system, and the rollout, disruption budget, autoscaler and
//!   network policy aim at the right pods;
//! - `deploy/compose.yaml` parses and names PostgreSQL, Redis, one control plane, three data planes
//!   and the load balancer, wired to each other, with every secret taken from the environment;
//! - nginx accepts `deploy/nginx.conf` (`nginx -t`), whose upstream is exactly those three data planes.
//!
//! The validator and nginx are test tools `.ci/run` installs; without them these tests fail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::proc::nginx;
use serde_json::Value;

/// Kubernetes releases the manifests must be valid for: an older one still in service, and the newest
/// the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.29", "1.37"];

const NAMESPACE: &str = "mcpgw";
const CONTROL_PLANE: &str = "mcpgw-control-plane";
const DATA_PLANE: &str = "mcpgw-data-plane";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mcpgw-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------------
// Kubernetes

/// Loads every document of the files given (refusing duplicate keys, as kubectl does), validates each
/// against the schemas of every version given, and prints what it found as one JSON object.
const VALIDATE_PY: &str = r#"
import json, os, sys
try:
    import yaml
    from kubernetes_validate import utils
    from kubernetes_validate.version import __version__
except ImportError as e:
    sys.exit(f"kubernetes-validate is not installed ({e}): python3 -m pip install -r tests/requirements.txt")

class Loader(yaml.SafeLoader):
    pass

def mapping(loader, node):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)

versions = sys.argv[1].split(",")
errors, resources = [], []
for path in sys.argv[2:]:
    name = os.path.basename(path)
    try:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=Loader) if d is not None]
    except yaml.YAMLError as e:
        errors.append(f"{name}: not valid YAML: {e}")
        continue
    if not docs:
        errors.append(f"{name}: no Kubernetes object in it")
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            errors.append(f"{name}: a document without apiVersion and kind")
            continue
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        what = f"{name}: {doc['kind']} {meta.get('name')}"
        for version in versions:
            try:
                utils.validate(doc, version, strict=True)
            except utils.SchemaNotFoundError as e:
                errors.append(f"{what}: {e.message}")
                break
            except utils.ValidationError as e:
                at = ".".join(str(p) for p in e.absolute_path) or "(the object)"
                errors.append(f"{what}: not valid for Kubernetes {version} at {at}: {e.message}")
        resources.append({"file": name, "object": doc})
json.dump({"validator": __version__, "errors": errors, "resources": resources}, sys.stdout)
"#;

struct Validated {
    validator: String,
    errors: Vec<String>,
    /// (file name, object), in file order.
    objects: Vec<(String, Value)>,
}

fn kubernetes_validate(files: &[PathBuf]) -> Validated {
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE_PY)
        .arg(KUBERNETES_VERSIONS.join(","))
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("python3 does not run ({e}): it runs the Kubernetes schema validator"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Kubernetes schema validator did not run: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the validator's report is not JSON ({e}); stderr: {stderr}"));
    Validated {
        validator: report["validator"].as_str().unwrap_or_default().to_string(),
        errors: report["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect(),
        objects: report["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["file"].as_str().unwrap().to_string(), r["object"].clone()))
            .collect(),
    }
}

/// The manifests: every `.yaml` / `.yml` file of `deploy/kubernetes/` but the kustomization.
fn manifest_files() -> Vec<PathBuf> {
    let dir = deploy().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn kind_name(object: &Value) -> (&str, &str) {
    (object["kind"].as_str().unwrap_or_default(), object["metadata"]["name"].as_str().unwrap_or_default())
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| kind_name(o) == (kind, name))
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

/// Whether every label a selector asks for is on `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    let Some(wanted) = match_labels.as_object().filter(|m| !m.is_empty()) else { return false };
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["metadata"]["labels"]
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .map(|env| env.iter().map(|e| (e["name"].as_str().unwrap().to_string(), e.clone())).collect())
        .unwrap_or_default()
}

/// A container port by name or number.
fn container_port(container: &Value, port: &Value) -> Option<i64> {
    container["ports"].as_array()?.iter().find_map(|p| {
        let number = p["containerPort"].as_i64()?;
        (Some(number) == port.as_i64() || (port.is_string() && p["name"] == *port)).then_some(number)
    })
}

/// What an operator applies must fit together beyond each object's schema.
fn consistency_problems(objects: &[(String, Value)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            problems.push(problem);
        }
    };

    // Everything but the Namespace lives in it.
    for (file, object) in objects {
        let (kind, name) = kind_name(object);
        if kind == "Namespace" {
            check(name == NAMESPACE, format!("{file}: the Namespace is {name}, not {NAMESPACE}"));
        } else {
            check(
                object["metadata"]["namespace"] == NAMESPACE,
                format!("{file}: {kind} {name} is not in namespace {NAMESPACE}"),
            );
        }
    }
    find(objects, "Namespace", NAMESPACE);

    // Secret keys any pod reads.
    let secret_keys: BTreeMap<&str, BTreeSet<String>> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == "Secret")
        .map(|o| {
            let keys = ["data", "stringData"]
                .iter()
                .filter_map(|field| o[*field].as_object())
                .flat_map(|m| m.keys().cloned())
                .collect();
            (kind_name(o).1, keys)
        })
        .collect();

    let control = find(objects, "Deployment", CONTROL_PLANE);
    let data = find(objects, "Deployment", DATA_PLANE);
    let mut containers: BTreeMap<&str, &Value> = BTreeMap::new();
    for deployment in [control, data] {
        let name = kind_name(deployment).1;
        let spec = &deployment["spec"];
        let pod = &spec["template"]["spec"];
        check(
            selects(&spec["selector"]["matchLabels"], pod_labels(deployment)),
            format!("Deployment {name}: its selector does not match its pods' labels"),
        );
        check(
            spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
                && spec["strategy"]["rollingUpdate"]["maxSurge"] == 1,
            format!("Deployment {name}: rolling updates must be maxUnavailable 0, maxSurge 1"),
        );
        check(pod["securityContext"]["runAsNonRoot"] == true, format!("Deployment {name}: pods not runAsNonRoot"));
        check(
            pod["securityContext"]["runAsUser"].as_i64().is_some_and(|u| u > 0),
            format!("Deployment {name}: pods need a non-zero runAsUser"),
        );
        check(
            pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
            format!("Deployment {name}: pods need seccompProfile RuntimeDefault"),
        );
        let volumes: BTreeMap<&str, &Value> = pod["volumes"]
            .as_array()
            .map(|v| v.iter().map(|v| (v["name"].as_str().unwrap(), v)).collect())
            .unwrap_or_default();
        let list = pod["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
        check(list.len() == 1, format!("Deployment {name}: expected one container"));
        for c in list {
            let cname = c["name"].as_str().unwrap_or_default();
            let at = format!("Deployment {name}, container {cname}");
            let sc = &c["securityContext"];
            check(sc["readOnlyRootFilesystem"] == true, format!("{at}: root file system not read-only"));
            check(sc["allowPrivilegeEscalation"] == false, format!("{at}: privilege escalation allowed"));
            check(
                sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|c| c == "ALL")),
                format!("{at}: capabilities must drop ALL"),
            );
            check(sc["runAsUser"].as_i64() != Some(0), format!("{at}: runs as root"));
            for resource in ["cpu", "memory"] {
                for bound in ["requests", "limits"] {
                    check(!c["resources"][bound][resource].is_null(), format!("{at}: no {bound}.{resource}"));
                }
            }
            // The data dir is writable (an emptyDir) on a read-only root.
            let data_dir = env_of(c).get("MCPGW_DATA_DIR").and_then(|e| e["value"].as_str().map(String::from));
            check(data_dir.as_deref() == Some("/data"), format!("{at}: MCPGW_DATA_DIR must be /data"));
            let mounts = c["volumeMounts"].as_array().map(Vec::as_slice).unwrap_or_default();
            for m in mounts {
                let volume = m["name"].as_str().unwrap_or_default();
                check(volumes.contains_key(volume), format!("{at}: mounts volume {volume}, which the pod lacks"));
            }
            check(
                mounts.iter().any(|m| {
                    m["mountPath"] == "/data"
                        && m["readOnly"] != true
                        && volumes
                            .get(m["name"].as_str().unwrap_or_default())
                            .is_some_and(|v| v["emptyDir"].is_object())
                }),
                format!("{at}: /data must be a writable emptyDir"),
            );
            for (var, e) in env_of(c) {
                let r = &e["valueFrom"]["secretKeyRef"];
                if r.is_null() {
                    continue;
                }
                let (secret, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                check(
                    secret_keys.get(secret).is_some_and(|keys| keys.contains(key)),
                    format!("{at}: {var} reads key {key} of Secret {secret}, which is not in deploy/kubernetes"),
                );
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let p = &c[probe];
                let port = if p["httpGet"].is_object() { &p["httpGet"]["port"] } else { &p["tcpSocket"]["port"] };
                check(container_port(c, port).is_some(), format!("{at}: {probe} aims at no container port"));
            }
        }
        if let Some(first) = list.first() {
            containers.insert(name, first);
        }
    }
    if containers.len() < 2 {
        return problems;
    }

    // The control plane: its binary on port 8001, with everything it needs on PostgreSQL.
    let cp = containers[CONTROL_PLANE];
    check(cp["args"] == serde_json::json!(["control-plane"]), "control plane: args must be [control-plane]".into());
    check(container_port(cp, &Value::from(8001)).is_some(), "control plane: no container port 8001".into());
    let cp_env = env_of(cp);
    for var in ["MCPGW_DATABASE_URL", "MCPGW_SECRETS_KEY", "MCPGW_ADMIN_API_KEY", "MCPGW_DATA_PLANE_TOKEN"] {
        check(
            cp_env.get(var).is_some_and(|e| !e["valueFrom"]["secretKeyRef"].is_null()),
            format!("control plane: {var} must come from a Secret"),
        );
    }

    // The data planes: three, probed on /readyz and /healthz, pulling from the control plane's Service.
    let dp = containers[DATA_PLANE];
    check(data["spec"]["replicas"] == 3, "data plane: 3 replicas".into());
    check(dp["args"] == serde_json::json!(["data-plane"]), "data plane: args must be [data-plane]".into());
    let dp_port = container_port(dp, &Value::from(8000));
    check(dp_port.is_some(), "data plane: no container port 8000".into());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &dp[probe]["httpGet"];
        check(
            get["path"] == path && container_port(dp, &get["port"]) == dp_port,
            format!("data plane: {probe} must be GET {path} on port 8000"),
        );
    }
    let dp_env = env_of(dp);
    for var in ["MCPGW_DATA_PLANE_TOKEN", "MCPGW_SESSION_SECRET", "MCPGW_REDIS_URL"] {
        check(
            dp_env.get(var).is_some_and(|e| !e["valueFrom"]["secretKeyRef"].is_null()),
            format!("data plane: {var} must come from a Secret"),
        );
    }
    check(dp_env.contains_key("MCPGW_ALLOWED_HOSTS"), "data plane: MCPGW_ALLOWED_HOSTS must be set".into());
    // Data planes never see the control plane's secrets.
    for var in ["MCPGW_ADMIN_API_KEY", "MCPGW_SECRETS_KEY", "MCPGW_DATABASE_URL"] {
        check(!dp_env.contains_key(var), format!("data plane: must not have {var}"));
    }

    // Services select their Deployment's pods and forward to its port.
    let cp_service = find(objects, "Service", CONTROL_PLANE);
    for (service, deployment, container, port) in
        [(cp_service, control, cp, 8001), (find(objects, "Service", DATA_PLANE), data, dp, 8000)]
    {
        let name = kind_name(service).1;
        check(
            selects(&service["spec"]["selector"], pod_labels(deployment)),
            format!("Service {name}: its selector does not match the pods of {}", kind_name(deployment).1),
        );
        let ports = service["spec"]["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
        check(
            ports.iter().any(|p| {
                p["port"] == port && container_port(container, p.get("targetPort").unwrap_or(&p["port"])) == Some(port)
            }),
            format!("Service {name}: port {port} must reach container port {port}"),
        );
    }
    let control_url = dp_env.get("MCPGW_CONTROL_URL").and_then(|e| e["value"].as_str()).unwrap_or_default();
    check(
        control_url == format!("http://{CONTROL_PLANE}:8001") || control_url == format!("https://{CONTROL_PLANE}:8001"),
        format!("data plane: MCPGW_CONTROL_URL `{control_url}` must name Service {CONTROL_PLANE} on port 8001"),
    );

    // Voluntary disruptions and autoscaling aim at the data planes.
    let pdb = find(objects, "PodDisruptionBudget", DATA_PLANE);
    check(
        selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels(data)),
        "PodDisruptionBudget: its selector does not match the data-plane pods".into(),
    );
    check(
        pdb["spec"]["maxUnavailable"] == 1 || pdb["spec"]["minAvailable"].as_i64().is_some_and(|m| m >= 2),
        "PodDisruptionBudget: must keep all but one data plane".into(),
    );
    let hpa = find(objects, "HorizontalPodAutoscaler", DATA_PLANE);
    let target = &hpa["spec"]["scaleTargetRef"];
    check(
        target["kind"] == "Deployment" && target["name"] == DATA_PLANE && target["apiVersion"] == "apps/v1",
        "HorizontalPodAutoscaler: must scale the data-plane Deployment".into(),
    );
    check(hpa["apiVersion"] == "autoscaling/v2", "HorizontalPodAutoscaler: autoscaling/v2".into());
    check(
        hpa["spec"]["minReplicas"].as_i64().is_some_and(|m| m >= 3),
        "HorizontalPodAutoscaler: never below 3 data planes".into(),
    );
    check(
        hpa["spec"]["metrics"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")),
        "HorizontalPodAutoscaler: scales on CPU".into(),
    );

    // Only data-plane pods reach the control plane's port.
    let policies: Vec<&Value> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["kind"] == "NetworkPolicy" && selects(&o["spec"]["podSelector"]["matchLabels"], pod_labels(control))
        })
        .collect();
    check(!policies.is_empty(), "NetworkPolicy: none selects the control-plane pods".into());
    for policy in policies {
        let name = kind_name(policy).1;
        check(
            policy["spec"]["policyTypes"].as_array().is_some_and(|t| t.iter().any(|t| t == "Ingress")),
            format!("NetworkPolicy {name}: must restrict Ingress"),
        );
        check(
            !selects(&policy["spec"]["podSelector"]["matchLabels"], pod_labels(data)),
            format!("NetworkPolicy {name}: selects the data planes too"),
        );
        let rules = policy["spec"]["ingress"].as_array().map(Vec::as_slice).unwrap_or_default();
        for rule in rules {
            let peers = rule["from"].as_array().map(Vec::as_slice).unwrap_or_default();
            check(!peers.is_empty(), format!("NetworkPolicy {name}: a rule without `from` admits every pod"));
            for peer in peers {
                check(
                    peer["namespaceSelector"].is_null()
                        && peer["ipBlock"].is_null()
                        && selects(&peer["podSelector"]["matchLabels"], pod_labels(data)),
                    format!("NetworkPolicy {name}: admits a peer that is not the data planes: {peer}"),
                );
            }
            let ports = rule["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
            check(
                !ports.is_empty() && ports.iter().all(|p| container_port(cp, &p["port"]) == Some(8001)),
                format!("NetworkPolicy {name}: must open only the control plane's port 8001"),
            );
        }
    }
    problems
}

/// The file names `kustomization.yaml` lists under `resources`.
fn kustomization_resources() -> BTreeSet<String> {
    let path = deploy().join("kubernetes/kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let k: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1", "kustomization.yaml apiVersion");
    assert_eq!(k["kind"], "Kustomization", "kustomization.yaml kind");
    assert_eq!(k["namespace"], NAMESPACE, "kustomization.yaml namespace");
    // Only the image name the Deployments use is rewritten (to where the operator pushed it).
    for image in k["images"].as_array().map(Vec::as_slice).unwrap_or_default() {
        assert_eq!(image["name"], "mcpgw", "kustomization.yaml rewrites an image no Deployment uses");
    }
    k["resources"]
        .as_array()
        .expect("kustomization.yaml lists its resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a file name").to_string())
        .collect()
}

#[test]
fn kubernetes_manifests_validate_offline_and_fit_together() {
    let files = manifest_files();
    let names: BTreeSet<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        kustomization_resources(),
        names,
        "kustomization.yaml must list exactly the manifests in deploy/kubernetes"
    );

    let report = kubernetes_validate(&files);
    println!("kubernetes-validate {} (strict), Kubernetes {}", report.validator, KUBERNETES_VERSIONS.join(", "));
    for (file, object) in &report.objects {
        let (kind, name) = kind_name(object);
        println!("  {file}: {kind} {name}");
    }
    assert!(report.errors.is_empty(), "manifests not valid:\n  {}", report.errors.join("\n  "));

    let kinds: BTreeMap<&str, usize> = report.objects.iter().fold(BTreeMap::new(), |mut m, (_, o)| {
        *m.entry(kind_name(o).0).or_default() += 1;
        m
    });
    for kind in [
        "Namespace",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains_key(kind), "deploy/kubernetes has no {kind}");
    }
    let problems = consistency_problems(&report.objects);
    assert!(problems.is_empty(), "manifests do not fit together:\n  {}", problems.join("\n  "));
}

/// The validator refuses what a cluster would: a wrong type, a misspelt field, an unknown kind, a
/// duplicate key. (Guards against a validator that passes everything.)
#[test]
fn kubernetes_validator_refuses_broken_manifests() {
    let original = std::fs::read_to_string(deploy().join("kubernetes/data-plane.yaml")).unwrap();
    let scratch = Scratch::new("deploy-broken");
    let breaks = [
        ("replicas.yaml", "replicas: 3", "replicas: three"),
        ("misspelt.yaml", "readinessProbe:", "readinesProbe:"),
        ("kind.yaml", "kind: Deployment", "kind: Deploymnet"),
        ("duplicate.yaml", "revisionHistoryLimit: 5", "revisionHistoryLimit: 5\n  revisionHistoryLimit: 6"),
    ];
    let mut files = Vec::new();
    for (file, from, to) in breaks {
        assert!(original.contains(from), "data-plane.yaml no longer has `{from}`: update this test");
        let path = scratch.0.join(file);
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        files.push(path);
    }
    let report = kubernetes_validate(&files);
    for (file, _, _) in breaks {
        assert!(
            report.errors.iter().any(|e| e.starts_with(&format!("{file}:"))),
            "the validator let the broken {file} through; it said: {:?}",
            report.errors
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Compose

fn compose() -> Value {
    let path = deploy().join("compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("deploy/compose.yaml is not YAML: {e}"));
    // A merged mapping may bring merge keys of its own (`<<: *mcpgw` inside `x-data-plane`), which one
    // pass leaves in place: merge until nothing changes.
    for _ in 0..8 {
        let before = yaml.clone();
        yaml.apply_merge().unwrap_or_else(|e| panic!("deploy/compose.yaml: merge keys: {e}"));
        if yaml == before {
            break;
        }
    }
    serde_json::to_value(yaml).expect("deploy/compose.yaml as JSON")
}

const DATA_PLANES: [&str; 3] = ["data-plane-1", "data-plane-2", "data-plane-3"];

fn environment<'a>(service: &'a Value, name: &str) -> &'a serde_json::Map<String, Value> {
    service["environment"].as_object().unwrap_or_else(|| panic!("compose: {name} has no environment mapping"))
}

fn text<'a>(env: &'a serde_json::Map<String, Value>, var: &str, service: &str) -> &'a str {
    env.get(var).and_then(Value::as_str).unwrap_or_else(|| panic!("compose: {service} has no {var}"))
}

/// `${NAME:?message}`: taken from the environment, and compose refuses to start without it.
fn required_variable(value: &str) -> Option<&str> {
    value.strip_prefix("${")?.strip_suffix('}')?.split_once(":?").map(|(name, _)| name)
}

#[test]
fn compose_file_names_the_scaled_shape() {
    let compose = compose();
    let services = compose["services"].as_object().expect("compose: services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> =
        ["postgres", "redis", "control-plane", "lb"].into_iter().chain(DATA_PLANES).collect();
    assert_eq!(names, expected, "compose services");

    // The four mcpgw services run the image the repository's Dockerfile builds.
    let dockerfile = repo().join("Dockerfile").canonicalize().unwrap();
    let mut images = BTreeSet::new();
    for name in ["control-plane"].into_iter().chain(DATA_PLANES) {
        let s = &services[name];
        let build = &s["build"];
        let context =
            deploy().join(build["context"].as_str().unwrap_or_else(|| panic!("compose: {name} builds nothing")));
        let file = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
        assert_eq!(file.canonicalize().ok().as_ref(), Some(&dockerfile), "compose: {name} must build the Dockerfile");
        images.insert(s["image"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(images.len(), 1, "compose: the mcpgw services must share one image: {images:?}");

    // The control plane on PostgreSQL, every secret from the environment.
    let cp = environment(&services["control-plane"], "control-plane");
    assert_eq!(services["control-plane"]["command"], serde_json::json!(["control-plane"]));
    let database = text(cp, "MCPGW_DATABASE_URL", "control-plane");
    assert!(
        database.starts_with("postgres://") && database.contains("@postgres:5432/"),
        "MCPGW_DATABASE_URL: {database}"
    );
    assert!(database.contains("${POSTGRES_PASSWORD"), "the database password must come from the environment");
    let pg = environment(&services["postgres"], "postgres");
    assert_eq!(
        required_variable(text(pg, "POSTGRES_PASSWORD", "postgres")),
        Some("POSTGRES_PASSWORD"),
        "compose: postgres POSTGRES_PASSWORD must be ${{POSTGRES_PASSWORD:?...}}"
    );
    for var in ["MCPGW_SECRETS_KEY", "MCPGW_ADMIN_API_KEY", "MCPGW_DATA_PLANE_TOKEN"] {
        assert_eq!(
            required_variable(text(cp, var, "control-plane")),
            Some(var),
            "compose: control-plane {var} must be ${{{var}:?...}}, from the environment"
        );
    }

    // Three data planes with the same token, session secret and Redis, pulling from the control plane.
    let mut replica_ids = BTreeSet::new();
    let first = environment(&services[DATA_PLANES[0]], DATA_PLANES[0]);
    for name in DATA_PLANES {
        let s = &services[name];
        let env = environment(s, name);
        assert_eq!(s["command"], serde_json::json!(["data-plane"]), "compose: {name} command");
        assert_eq!(text(env, "MCPGW_CONTROL_URL", name), "http://control-plane:8001", "compose: {name}");
        assert_eq!(
            text(env, "MCPGW_DATA_PLANE_TOKEN", name),
            text(cp, "MCPGW_DATA_PLANE_TOKEN", "control-plane"),
            "compose: {name} token"
        );
        assert_eq!(
            required_variable(text(env, "MCPGW_SESSION_SECRET", name)),
            Some("MCPGW_SESSION_SECRET"),
            "compose: {name} MCPGW_SESSION_SECRET must be ${{MCPGW_SESSION_SECRET:?...}}"
        );
        for var in ["MCPGW_SESSION_SECRET", "MCPGW_REDIS_URL", "MCPGW_ALLOWED_HOSTS"] {
            assert_eq!(env.get(var), first.get(var), "compose: {name} {var} differs from {}", DATA_PLANES[0]);
        }
        assert!(text(env, "MCPGW_REDIS_URL", name).starts_with("redis://redis:"), "compose: {name} Redis");
        assert!(
            text(env, "MCPGW_ALLOWED_HOSTS", name).split(',').any(|h| h == "localhost"),
            "compose: {name} must accept the Host clients on this host send to the load balancer"
        );
        replica_ids.insert(text(env, "MCPGW_REPLICA_ID", name).to_string());
        assert!(s["healthcheck"]["test"].to_string().contains("8000/readyz"), "compose: {name} health check");
        assert!(s["ports"].is_null(), "compose: {name} is reached through the load balancer only");
    }
    assert_eq!(replica_ids.len(), 3, "compose: each data plane needs its own MCPGW_REPLICA_ID");

    // The load balancer: nginx with deploy/nginx.conf, published.
    let lb = &services["lb"];
    assert!(lb["image"].as_str().unwrap_or_default().starts_with("nginx"), "compose: lb is nginx");
    let volumes = lb["volumes"].as_array().expect("compose: lb volumes");
    assert!(
        volumes.iter().any(|v| v.as_str().is_some_and(|v| v.starts_with("./nginx.conf:/etc/nginx/nginx.conf"))),
        "compose: lb must mount ./nginx.conf as /etc/nginx/nginx.conf"
    );
    assert!(lb["ports"].as_array().is_some_and(|p| !p.is_empty()), "compose: lb publishes a port");
}

// ---------------------------------------------------------------------------------------------------
// nginx

/// `nginx -t` on `config`, written into a scratch prefix of its own (no DNS, no system paths).
fn nginx_test(config: &str, scratch: &Path) -> (bool, String) {
    let conf = scratch.join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let out = Command::new(nginx())
        .arg("-t")
        .arg("-p")
        .arg(format!("{}/", scratch.display()))
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr", "-g"])
        .arg(format!("pid {};", scratch.join("nginx.pid").display()))
        .output()
        .expect("run nginx");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Seconds in an nginx time such as `90`, `90s`, `5m` or `1h`.
fn nginx_seconds(value: &str) -> Option<u64> {
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return None,
    })
}

#[test]
fn nginx_accepts_the_load_balancer_config() {
    let config = std::fs::read_to_string(deploy().join("nginx.conf")).expect("deploy/nginx.conf");
    // Directives, comments dropped.
    let directives: Vec<String> =
        config.lines().map(|l| l.split('#').next().unwrap().trim().to_string()).filter(|l| !l.is_empty()).collect();

    // The upstream is the three data planes of compose.yaml, balanced round robin.
    let start = directives.iter().position(|d| d.starts_with("upstream ")).expect("nginx.conf: no upstream");
    let end = start + directives[start..].iter().position(|d| d == "}").expect("nginx.conf: upstream not closed");
    let upstream = &directives[start + 1..end];
    let servers: BTreeSet<&str> = upstream
        .iter()
        .filter_map(|d| d.strip_prefix("server "))
        .map(|s| s.split_whitespace().next().unwrap().trim_end_matches(';'))
        .collect();
    let expected: BTreeSet<String> = DATA_PLANES.iter().map(|d| format!("{d}:8000")).collect();
    assert_eq!(servers, expected.iter().map(String::as_str).collect(), "nginx.conf upstream servers");
    for d in upstream {
        let word = d.split(|c: char| c.is_whitespace() || c == ';').next().unwrap_or_default();
        assert!(
            !["ip_hash", "hash", "least_conn", "least_time", "random", "sticky"].contains(&word),
            "nginx.conf: plain round robin, not `{d}`"
        );
    }
    let compose = compose();
    for d in DATA_PLANES {
        assert!(!compose["services"][d].is_null(), "nginx.conf names {d}, which compose.yaml does not run");
    }

    // Streams pass through unbuffered, over HTTP/1.1, and may stay open.
    for wanted in ["proxy_buffering off;", "proxy_http_version 1.1;"] {
        assert!(directives.iter().any(|d| d == wanted), "nginx.conf: `{wanted}` missing");
    }
    let read_timeout = directives
        .iter()
        .find_map(|d| d.strip_prefix("proxy_read_timeout "))
        .and_then(|v| nginx_seconds(v.trim_end_matches(';').trim()))
        .expect("nginx.conf: proxy_read_timeout");
    assert!(read_timeout >= 300, "nginx.conf: proxy_read_timeout {read_timeout} s is too short for streams");

    // It listens on the port compose.yaml publishes.
    let listen = directives.iter().find_map(|d| d.strip_prefix("listen ")).expect("nginx.conf: listen");
    let port = listen.trim_end_matches(';').split_whitespace().next().unwrap();
    let published = compose["services"]["lb"]["ports"].as_array().unwrap();
    assert!(
        published.iter().any(|p| p.as_str().is_some_and(|p| p.ends_with(&format!(":{port}")))),
        "compose.yaml must publish the lb's port {port}: {published:?}"
    );

    // nginx itself: the same file, with the data planes' names (resolved by Docker's DNS when it runs)
    // mapped to loopback.
    let mut local = config.clone();
    for d in DATA_PLANES {
        let before = local.clone();
        local = local.replace(&format!("server {d}:8000"), "server 127.0.0.1:8000");
        assert_ne!(before, local, "nginx.conf: `server {d}:8000` not found");
    }
    let scratch = Scratch::new("deploy-nginx");
    let (ok, said) = nginx_test(&local, &scratch.0);
    assert!(ok, "nginx -t refuses deploy/nginx.conf:\n{said}");

    // And it does refuse a broken one (a misspelt directive).
    let broken = local.replacen("proxy_buffering off;", "proxy_bufering off;", 1);
    let (ok, said) = nginx_test(&broken, &scratch.0);
    assert!(!ok && said.contains("proxy_bufering"), "nginx -t accepted a misspelt directive:\n{said}");
}
