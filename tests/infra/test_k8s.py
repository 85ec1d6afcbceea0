"""Kubernetes manifests of infra/k8s (kustomize base, components, overlays, training runs).

- every kustomization renders with `kubectl kustomize` (skipped without kubectl);
- every rendered document and every plain manifest validates against the Kubernetes
  schemas of KUBE_VERSION in strict mode (unknown fields fail); operator CRD kinds, which
  those schemas do not know, are listed in CRD_KINDS with the reason and checked for the
  structure this platform relies on instead (a PyTorchJob's pod templates still go through
  the core PodTemplate schema);
- policies on the rendered output: requests and limits, non-root, read-only root
  filesystem, no privilege escalation, capabilities dropped, RuntimeDefault seccomp, pinned
  images, no Secret with data, a default-deny NetworkPolicy, a worker Role without `*`,
  probes on the servers, references that resolve;
- the platform's wiring: MLflow (Postgres URI, proxied S3 artifacts, basic auth, IRSA), the
  Prefect server and `gpu` pool worker (the job template copy in sync with
  infra/prefect/gpu-job-template.json), the PyTorchJob (Master + Worker, GPUs = --nproc),
  terraform outputs reaching the fields they feed, dev vs prod differences;
- bad inputs written to tmp fail with a message naming the file, kind/name and rule.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
JOB_TEMPLATE = REPO / "infra" / "prefect" / "gpu-job-template.json"
KUBE_VERSION = "1.31"  # the EKS version the manifests target (namespace PSA labels too)

KUSTOMIZATIONS = sorted(
    p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml")
    if (yaml.safe_load(p.read_text()) or {}).get("kind") != "Component")
# the long-lived platform (base and the environments) vs the training runs
PLATFORMS = [d for d in KUSTOMIZATIONS if not d.endswith("training")]
OVERLAYS = [d for d in PLATFORMS if d.startswith("overlays/")]
TRAINING = [d for d in KUSTOMIZATIONS if d.endswith("training")]
PLAIN_MANIFESTS = sorted(p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml")
                         if p.name != "kustomization.yaml")

# Operator CRDs: kubernetes-validate ships only the core API's schemas, and the operators'
# CRD schemas are not vendored here (hundreds of KB each, pinned to an operator release this
# repository does not install). Each kind has a structural check instead (CRD_CHECKS).
CRD_KINDS = {
    ("external-secrets.io/v1", "ClusterSecretStore"):
        "External Secrets CRD; its schema ships with the operator's chart. "
        "check_secret_store checks the AWS provider and that no static credentials are used",
    ("external-secrets.io/v1", "ExternalSecret"):
        "External Secrets CRD; check_external_secret checks store reference, target, keys",
    ("kubeflow.org/v1", "PyTorchJob"):
        "Kubeflow training-operator CRD; check_pytorchjob validates each replica's pod "
        "template against the core PodTemplate schema and checks Master/Worker, GPUs, --nproc",
}

# The one container allowed to run as root and mount a host path, and why.
ROOT_ALLOWED = {
    ("DaemonSet", "nvidia-device-plugin-daemonset"):
        "creates its socket in the kubelet's root-owned /var/lib/kubelet/device-plugins",
}
WORKER_ROLE_RESOURCES = {"jobs", "pods", "pods/log", "events"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "Pod",
                  "PyTorchJob"}
PLACEHOLDER_ACCOUNT = "000000000000"  # base/terraform-outputs.env


# --- rendering ------------------------------------------------------------------------

def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: `kubectl kustomize` renders the overlays")
    return kubectl


def render_dir(path: Path) -> list[dict]:
    """`kubectl kustomize path` as documents; a failure names the directory."""
    proc = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@cache
def _render(rel: str) -> str:
    return json.dumps(render_dir(K8S / rel))


def render(rel: str) -> list[dict]:
    """The rendered documents of infra/k8s/<rel> (a fresh copy: tests may not share state)."""
    return json.loads(_render(rel))


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# --- schema validation ----------------------------------------------------------------

def _schema_errors(doc: dict, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return [f"{where}: schema (Kubernetes {KUBE_VERSION}, strict) at {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: schema: no Kubernetes {KUBE_VERSION} schema for "
                f"{doc.get('apiVersion')} {doc.get('kind')} and not a known CRD kind "
                "(CRD_KINDS)"]
    return []


def validate_document(doc: dict, source: str) -> list[str]:
    """Errors of one document: `source: Kind/name: rule ...: detail`."""
    where = f"{source}: {name_of(doc)}"
    if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
        return [f"{where}: schema: apiVersion and kind must be strings"]
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_KINDS:
        return [f"{where}: {e}" for e in CRD_CHECKS[doc["kind"]](doc)]
    return _schema_errors(doc, where)


def validate_file(path: Path, label: str | None = None) -> list[str]:
    source = label or str(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as e:
        return [f"{source}: yaml: {e}"]
    return [e for d in docs for e in validate_document(d, source)]


# --- CRD structure --------------------------------------------------------------------

def _unknown(obj: dict, allowed: set[str], where: str) -> list[str]:
    extra = sorted(set(obj) - allowed)
    return [f"crd-structure: unknown field(s) {extra} in {where}"] if extra else []


def check_secret_store(doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    errors = _unknown(spec, {"provider", "conditions", "controller", "refreshInterval",
                             "retrySettings"}, "spec")
    aws = (spec.get("provider") or {}).get("aws") or {}
    if aws.get("service") != "SecretsManager" or not aws.get("region"):
        errors.append("crd-structure: spec.provider.aws needs service SecretsManager and a "
                      "region")
    if (aws.get("auth") or {}).get("secretRef"):
        errors.append("crd-structure: static AWS keys (auth.secretRef); use IRSA")
    if "namespace" in doc.get("metadata", {}):
        errors.append("crd-structure: a ClusterSecretStore is cluster-scoped (no namespace)")
    return errors


def check_external_secret(doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    errors = _unknown(spec, {"refreshInterval", "secretStoreRef", "target", "data",
                             "dataFrom", "refreshPolicy"}, "spec")
    ref = spec.get("secretStoreRef") or {}
    if ref.get("kind") not in ("ClusterSecretStore", "SecretStore") or not ref.get("name"):
        errors.append("crd-structure: spec.secretStoreRef needs kind and name")
    if not (spec.get("target") or {}).get("name"):
        errors.append("crd-structure: spec.target.name (the Secret it writes) is missing")
    keys = [(d.get("remoteRef") or {}).get("key") for d in spec.get("data") or []]
    keys += [(d.get("extract") or {}).get("key") for d in spec.get("dataFrom") or []]
    if not keys or not all(keys):
        errors.append("crd-structure: every data/dataFrom entry needs a remote key")
    template = (spec.get("target") or {}).get("template")
    if template and template.get("engineVersion") != "v2":
        errors.append("crd-structure: target.template.engineVersion must be v2")
    return errors


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def check_pytorchjob(doc: dict) -> list[str]:
    spec = doc.get("spec") or {}
    errors = _unknown(spec, {"nprocPerNode", "runPolicy", "pytorchReplicaSpecs",
                             "elasticPolicy"}, "spec")
    errors += _unknown(spec.get("runPolicy") or {},
                       {"cleanPodPolicy", "backoffLimit", "activeDeadlineSeconds",
                        "ttlSecondsAfterFinished", "schedulingPolicy", "suspend",
                        "managedBy"}, "spec.runPolicy")
    replicas = spec.get("pytorchReplicaSpecs") or {}
    if set(replicas) != {"Master", "Worker"}:
        return errors + [f"crd-structure: pytorchReplicaSpecs must be Master and Worker, got "
                         f"{sorted(replicas)}"]
    if replicas["Master"].get("replicas") != 1:
        errors.append("crd-structure: exactly one Master replica (the rendezvous host)")
    if not isinstance(replicas["Worker"].get("replicas"), int) \
            or replicas["Worker"]["replicas"] < 1:
        errors.append("crd-structure: at least one Worker replica (multi-node)")
    nproc_per_node = spec.get("nprocPerNode")
    for rtype, rspec in replicas.items():
        at = f"pytorchReplicaSpecs.{rtype}"
        errors += _unknown(rspec, {"replicas", "restartPolicy", "template"}, at)
        if rspec.get("restartPolicy") not in ("Always", "OnFailure", "Never", "ExitCode"):
            errors.append(f"crd-structure: {at}.restartPolicy is not a replica restart policy")
        template = rspec.get("template") or {}
        # the replica's pod template is a core PodTemplateSpec: validate it as one
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"{doc['metadata'].get('name')}-{rtype.lower()}"},
                   "template": template}
        errors += [e.split(": ", 2)[-1] + f" (in {at}.template)"
                   for e in _schema_errors(wrapper, "x: x")]
        pod = template.get("spec") or {}
        by_name = {c.get("name"): c for c in pod.get("containers") or []}
        if "pytorch" not in by_name:
            errors.append(f"crd-structure: {at}: the operator needs a container named pytorch")
            continue
        c = by_name["pytorch"]
        argv = [*c.get("command", []), *c.get("args", [])]
        line = " ".join(argv)
        m = re.search(r"amalia-vl stage sft --nproc (\d+)", line)
        if not m:
            errors.append(f"crd-structure: {at}: does not run `amalia-vl stage sft --nproc N`")
            continue
        nproc = int(m.group(1))
        res = c.get("resources") or {}
        gpus = {(res.get(k) or {}).get("nvidia.com/gpu") for k in ("requests", "limits")}
        if gpus != {nproc}:
            errors.append(f"crd-structure: {at}: nvidia.com/gpu requests/limits {gpus} != "
                          f"--nproc {nproc} (one process per GPU)")
        if str(nproc) != str(nproc_per_node):
            errors.append(f"crd-structure: spec.nprocPerNode {nproc_per_node!r} != --nproc "
                          f"{nproc}")
        for flag, value in (("--nnodes", "$(PET_NNODES)"), ("--node-rank", "$(PET_NODE_RANK)"),
                            ("--rdzv-endpoint", "$(MASTER_ADDR):$(MASTER_PORT)")):
            if f"{flag} {value}" not in line:
                errors.append(f"crd-structure: {at}: {flag} must come from the operator's "
                              f"environment ({value})")
        # the operator sets RANK; the CLI would take it for "inside torchrun already"
        if "-u RANK" not in line:
            errors.append(f"crd-structure: {at}: RANK is not removed before the CLI starts")
        if "amalia-vl/pool" not in (pod.get("nodeSelector") or {}):
            errors.append(f"crd-structure: {at}: no amalia-vl/pool nodeSelector")
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations") or []):
            errors.append(f"crd-structure: {at}: no toleration for the nvidia.com/gpu taint")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        shm = [m["name"] for m in c.get("volumeMounts") or [] if m["mountPath"] == "/dev/shm"]
        if not shm or (volumes.get(shm[0], {}).get("emptyDir") or {}).get("medium") != "Memory":
            errors.append(f"crd-structure: {at}: /dev/shm is not a memory emptyDir")
        missing = {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_REGION"} - set(_env(c))
        if missing:
            errors.append(f"crd-structure: {at}: env lacks {sorted(missing)}")
    return errors


CRD_CHECKS = {"ClusterSecretStore": check_secret_store, "ExternalSecret": check_external_secret,
              "PyTorchJob": check_pytorchjob}


# --- policies -------------------------------------------------------------------------

def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(label, pod spec) of a workload document."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        return [("", spec)]
    if kind == "CronJob":
        return [("", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "PyTorchJob":
        return [(f" {r}", s["template"]["spec"])
                for r, s in (spec.get("pytorchReplicaSpecs") or {}).items()]
    if kind in WORKLOAD_KINDS:
        return [("", spec["template"]["spec"])]
    return []


def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    tail = image.rsplit("/", 1)[-1]
    return ":" in tail and tail.rsplit(":", 1)[1] not in ("", "latest")


def policy_violations(docs: list[dict], source: str) -> list[str]:
    """Policy breaches of one rendered kustomization: `source: Kind/name: rule: detail`."""
    out = []
    for doc in docs:
        where = f"{source}: {name_of(doc)}"
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            out.append(f"{where}: no-secret-data: a Secret with data in git (use an "
                       "ExternalSecret)")
        if doc.get("kind") in ("Role", "ClusterRole"):
            for rule in doc.get("rules") or []:
                for field in ("verbs", "resources", "apiGroups"):
                    if "*" in rule.get(field, []):
                        out.append(f"{where}: rbac-no-wildcard: `*` in {field}")
            if doc["metadata"]["name"] == "prefect-worker":
                extra = {r for rule in doc.get("rules") or []
                         for r in rule.get("resources", [])} - WORKER_ROLE_RESOURCES
                if extra or doc["kind"] == "ClusterRole":
                    out.append(f"{where}: rbac-worker-scope: beyond namespaced "
                               f"{sorted(WORKER_ROLE_RESOURCES)}: {sorted(extra)}")
        exempt = (doc.get("kind"), (doc.get("metadata") or {}).get("name")) in ROOT_ALLOWED
        for replica, pod in pod_specs(doc):
            psc = pod.get("securityContext") or {}
            if not exempt and any("hostPath" in v for v in pod.get("volumes") or []):
                out.append(f"{where}{replica}: no-host-path: hostPath volume")
            for kind, c in [("initContainer", c) for c in pod.get("initContainers") or []] + \
                           [("container", c) for c in pod.get("containers") or []]:
                at = f"{where}{replica} {kind} {c.get('name')}"
                res = c.get("resources") or {}
                for part in ("requests", "limits"):
                    lacking = {"cpu", "memory"} - set(res.get(part) or {})
                    if lacking:
                        out.append(f"{at}: resources: no {part} for {sorted(lacking)}")
                if not _image_pinned(c.get("image", "")):
                    out.append(f"{at}: image-pinned: {c.get('image')!r} is untagged or :latest")
                sc = c.get("securityContext") or {}
                if not exempt and not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                    out.append(f"{at}: run-as-non-root: runAsNonRoot is not true")
                if sc.get("readOnlyRootFilesystem") is not True:
                    out.append(f"{at}: read-only-root-fs: readOnlyRootFilesystem is not true")
                elif not any(m.get("mountPath") == "/tmp" for m in c.get("volumeMounts") or []) \
                        and not exempt:
                    out.append(f"{at}: read-only-root-fs: no writable /tmp mounted")
                if sc.get("allowPrivilegeEscalation") is not False:
                    out.append(f"{at}: no-privilege-escalation: allowPrivilegeEscalation is "
                               "not false")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    out.append(f"{at}: drop-capabilities: capabilities.drop lacks ALL")
                if (sc.get("capabilities") or {}).get("add"):
                    out.append(f"{at}: drop-capabilities: capabilities added")
                seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {})
                if seccomp.get("type") != "RuntimeDefault":
                    out.append(f"{at}: seccomp: seccompProfile is not RuntimeDefault")
                if doc.get("kind") == "Deployment" and kind == "container":
                    for probe in ("readinessProbe", "livenessProbe"):
                        if probe not in c:
                            out.append(f"{at}: probes: no {probe} on a server")
    if any(d.get("kind") == "Namespace" and d["metadata"]["name"] == "amalia-vl" for d in docs):
        deny = [d for d in docs if d.get("kind") == "NetworkPolicy"
                and d["metadata"].get("namespace") == "amalia-vl"
                and d["spec"].get("podSelector") == {}
                and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not d["spec"].get("ingress") and not d["spec"].get("egress")]
        if not deny:
            out.append(f"{source}: default-deny: no NetworkPolicy denying all ingress and "
                       "egress of every pod in amalia-vl")
    return out


def unresolved_references(docs: list[dict], source: str, context: list[dict]) -> list[str]:
    """ConfigMaps, Secrets, PVCs and service accounts the pods of `docs` name but neither
    `docs` nor `context` (the platform a training run is applied next to) provides."""
    every = docs + context
    configmaps = {d["metadata"]["name"]: d.get("data") or {}
                  for d in every if d["kind"] == "ConfigMap"}
    secrets: dict[str, set | None] = {}
    for d in every:
        if d["kind"] == "ExternalSecret":
            target = d["spec"]["target"]
            data = (target.get("template") or {}).get("data")
            secrets[target["name"]] = set(data) if data else None  # None: keys come from AWS
    pvcs = {d["metadata"]["name"] for d in every if d["kind"] == "PersistentVolumeClaim"}
    accounts = {d["metadata"]["name"] for d in every if d["kind"] == "ServiceAccount"}
    out = []
    for doc in docs:
        for replica, pod in pod_specs(doc):
            where = f"{source}: {name_of(doc)}{replica}"
            ns = doc["metadata"].get("namespace")
            if ns == "amalia-vl" and pod.get("serviceAccountName", "default") not in accounts:
                out.append(f"{where}: references: service account "
                           f"{pod.get('serviceAccountName')!r} is not defined")
            for v in pod.get("volumes") or []:
                if "configMap" in v and v["configMap"]["name"] not in configmaps:
                    out.append(f"{where}: references: ConfigMap {v['configMap']['name']!r}")
                if "persistentVolumeClaim" in v and \
                        v["persistentVolumeClaim"]["claimName"] not in pvcs:
                    out.append(f"{where}: references: PVC "
                               f"{v['persistentVolumeClaim']['claimName']!r}")
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                refs = [("configMap", e["valueFrom"]["configMapKeyRef"])
                        for e in c.get("env") or [] if "configMapKeyRef" in e.get("valueFrom", {})]
                refs += [("secret", e["valueFrom"]["secretKeyRef"])
                         for e in c.get("env") or [] if "secretKeyRef" in e.get("valueFrom", {})]
                refs += [("secret", {"name": e["secretRef"]["name"]})
                         for e in c.get("envFrom") or [] if "secretRef" in e]
                for what, ref in refs:
                    name, key = ref["name"], ref.get("key")
                    known = configmaps if what == "configMap" else secrets
                    if name not in known:
                        out.append(f"{where} {c['name']}: references: {what} {name!r} is not "
                                   "defined (or written by an ExternalSecret)")
                    elif key is not None and known[name] is not None and key not in known[name]:
                        out.append(f"{where} {c['name']}: references: {what} {name!r} has no "
                                   f"key {key!r}")
    return out


def _platform_of(rel: str) -> str:
    """The platform kustomization a training run is applied next to."""
    return rel.rsplit("/", 1)[0] if rel.startswith("overlays/") else "base"


# --- render + schema ------------------------------------------------------------------

def test_layout_has_base_and_both_overlays():
    assert {"base", "overlays/dev", "overlays/prod", "base/training", "overlays/dev/training",
            "overlays/prod/training"} <= set(KUSTOMIZATIONS)
    assert not (K8S / "namespace.yaml").exists()  # moved into base/


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_kustomization_renders(rel):
    docs = render(rel)
    assert docs, rel
    assert all(d.get("kind") and d.get("metadata", {}).get("name") for d in docs), rel


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_rendered_documents_validate(rel):
    errors = [e for d in render(rel) for e in validate_document(d, f"kustomize {rel}")]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("rel", PLAIN_MANIFESTS)
def test_plain_manifests_validate(rel):
    errors = validate_file(K8S / rel, f"infra/k8s/{rel}")
    assert not errors, "\n".join(errors)


def test_every_crd_kind_rendered_is_in_the_skip_table():
    seen = {(d["apiVersion"], d["kind"]) for rel in KUSTOMIZATIONS for d in render(rel)}
    crds = {k for k in seen if not k[0].startswith(("v1", "apps/", "batch/", "policy/",
                                                     "rbac.", "networking."))}
    assert crds == set(CRD_KINDS), crds ^ set(CRD_KINDS)


# --- policies -------------------------------------------------------------------------

@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_policies(rel):
    violations = policy_violations(render(rel), f"kustomize {rel}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_references_resolve(rel):
    context = render(_platform_of(rel)) if rel in TRAINING else []
    errors = unresolved_references(render(rel), f"kustomize {rel}", context)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("rel", PLATFORMS)
def test_namespaces(rel):
    for d in render(rel):
        ns = d["metadata"].get("namespace")
        if d["kind"] in ("Namespace", "ClusterSecretStore"):
            assert ns is None, name_of(d)
        elif d["kind"] == "DaemonSet":
            assert ns == "kube-system", name_of(d)
        else:
            assert ns == "amalia-vl", name_of(d)


# --- the platform's wiring ------------------------------------------------------------

def _template_default(variable: str):
    return json.loads(JOB_TEMPLATE.read_text())["variables"]["properties"][variable]["default"]


def _value_of(docs: list[dict], container: dict, env_name: str) -> str:
    """An env var's value, following a configMapKeyRef into the rendered ConfigMap."""
    entry = _env(container)[env_name]
    if "value" in entry:
        return entry["value"]
    ref = entry["valueFrom"]["configMapKeyRef"]
    return find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]


def test_job_template_copy_is_in_sync():
    copy = K8S / "base" / "gpu-job-template.json"
    assert json.loads(copy.read_text()) == json.loads(JOB_TEMPLATE.read_text()), \
        f"cp {JOB_TEMPLATE.relative_to(REPO)} {copy.relative_to(REPO)}"


@pytest.mark.parametrize("rel", PLATFORMS)
def test_mlflow_server(rel):
    docs = render(rel)
    deploy = find(docs, "Deployment", "mlflow")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    argv = c["command"] + c["args"]
    assert argv[:2] == ["mlflow", "server"]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in argv
    dest = argv[argv.index("--artifacts-destination") + 1]
    assert dest == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert _value_of(docs, c, "MLFLOW_ARTIFACTS_DESTINATION").startswith("s3://")
    assert _env(c)["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg2://")
    # credentials only by reference, from the ExternalSecret-written Secret
    for var in ("DB_USER", "DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in _env(c)[var]["valueFrom"], var
    assert _env(c)["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/run/mlflow-auth/")
    assert c["image"].startswith("ghcr.io/amalia-vl/mlflow:")
    account = find(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] \
        .startswith("arn:aws:iam::")
    # the Service is where the GPU Jobs' default MLFLOW_TRACKING_URI points
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+):(\d+)",
                     _template_default("mlflow_tracking_uri"))
    service = find(docs, "Service", m.group(1))
    assert service["metadata"]["namespace"] == m.group(2)
    assert int(m.group(3)) in [p["port"] for p in service["spec"]["ports"]]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("rel", PLATFORMS)
def test_prefect_server_and_worker(rel):
    docs = render(rel)
    (server,) = find(docs, "Deployment", "prefect-server")["spec"]["template"]["spec"][
        "containers"]
    assert server["command"][:3] == ["prefect", "server", "start"]
    assert _env(server)["PREFECT_API_DATABASE_CONNECTION_URL"]["value"] \
        .startswith("postgresql+asyncpg://")
    worker = find(docs, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
    (c,) = worker["containers"]
    assert " ".join(c["command"]).startswith("prefect worker start --pool gpu --type kubernetes")
    api = _env(c)["PREFECT_API_URL"]["value"]
    service = find(docs, "Service", "prefect-server")
    assert api.startswith(f"http://prefect-server.amalia-vl.svc.cluster.local:"
                          f"{service['spec']['ports'][0]['port']}/api")
    # the pool's template is upserted from the mounted copy of gpu-job-template.json
    (sync,) = worker["initContainers"]
    assert sync["command"][:4] == ["prefect", "work-pool", "create", "gpu"]
    path = sync["command"][sync["command"].index("--base-job-template") + 1]
    mount = next(m for m in sync["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in worker["volumes"] if v["name"] == mount["name"])
    configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
    assert json.loads(configmap["data"][Path(path).name]) == json.loads(JOB_TEMPLATE.read_text())
    # the worker's Role is bound to the worker's account, in the namespace
    binding = find(docs, "RoleBinding", "prefect-worker")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "prefect-worker"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": worker[
        "serviceAccountName"], "namespace": "amalia-vl"}]
    # the Jobs run as the template's service account, which exists with its IRSA role
    jobs_account = find(docs, "ServiceAccount", _template_default("service_account_name"))
    assert "eks.amazonaws.com/role-arn" in jobs_account["metadata"]["annotations"]


@pytest.mark.parametrize("rel", PLATFORMS)
def test_secrets_come_from_the_secret_store(rel):
    docs = render(rel)
    stores = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterSecretStore"}
    externals = [d for d in docs if d["kind"] == "ExternalSecret"]
    assert stores and externals
    assert {d["spec"]["secretStoreRef"]["name"] for d in externals} <= stores
    rds = find(docs, "ExternalSecret", "rds-master")
    assert rds["spec"]["dataFrom"][0]["extract"]["key"].startswith("arn:aws:secretsmanager:")
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_device_plugin_runs_on_gpu_nodes_only():
    ds = find(render("base"), "DaemonSet", "nvidia-device-plugin-daemonset")
    pod = ds["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["tolerations"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert {"key": "amalia-vl/pool", "operator": "Exists"} in term["matchExpressions"]


# --- overlays -------------------------------------------------------------------------

def _load_terraform_outputs_env():
    spec = importlib.util.spec_from_file_location("terraform_outputs_env",
                                                  K8S / "terraform_outputs_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


@pytest.mark.parametrize("rel", OVERLAYS)
def test_overlay_feeds_terraform_outputs(rel):
    outputs = _env_file(K8S / rel / "terraform-outputs.env")
    assert tuple(outputs) == _load_terraform_outputs_env().KEYS
    docs = render(rel)
    assert find(docs, "ConfigMap", "terraform-outputs")["data"] == outputs
    arn = "eks.amazonaws.com/role-arn"
    for account, key in (("mlflow", "mlflow_role_arn"), ("amalia-vl-worker", "training_role_arn"),
                         ("prefect-worker", "prefect_worker_role_arn")):
        assert find(docs, "ServiceAccount", account)["metadata"]["annotations"][arn] \
            == outputs[key], account
    assert find(docs, "ClusterSecretStore", "aws-secrets-manager")["spec"]["provider"]["aws"][
        "region"] == outputs["region"]
    assert find(docs, "ExternalSecret", "rds-master")["spec"]["dataFrom"][0]["extract"]["key"] \
        == outputs["db_master_user_secret_arn"]
    for name in ("mlflow-server", "amalia-vl-mlflow-client"):
        key = find(docs, "ExternalSecret", name)["spec"]["dataFrom"][0]["extract"]["key"]
        assert key.split("/")[0] == outputs["cluster_name"], name
    for policy in ("mlflow", "prefect-server"):
        (rule,) = [r for r in find(docs, "NetworkPolicy", policy)["spec"]["egress"]
                   if {"protocol": "TCP", "port": 5432} in r.get("ports", [])]
        assert rule["to"] == [{"ipBlock": {"cidr": outputs["vpc_cidr"]}}], policy
    assert PLACEHOLDER_ACCOUNT not in json.dumps(docs), "base placeholder left in " + rel


def _pytorchjob(rel: str) -> tuple[dict, list[dict]]:
    job = find(render(rel), "PyTorchJob", "amalia-vl-sft")
    specs = job["spec"]["pytorchReplicaSpecs"]
    return job, [specs[r]["template"]["spec"] for r in ("Master", "Worker")]


def test_dev_trains_on_the_l40s_pool():
    job, pods = _pytorchjob("overlays/dev/training")
    for pod in pods:
        assert pod["nodeSelector"] == {"amalia-vl/pool": "l40s"}
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert job["spec"]["nprocPerNode"] == "4"


def test_prod_trains_on_four_h100_nodes_with_a_release_image():
    job, pods = _pytorchjob("overlays/prod/training")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    for pod in pods:
        assert pod["nodeSelector"] == {"amalia-vl/pool": "h100"}
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert not pod["containers"][0]["image"].endswith(":gpu")  # dev's moving tag


def test_prod_has_replicas_and_disruption_budgets():
    docs = render("overlays/prod")
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} == {"mlflow", "prefect-worker"}
    for budget in budgets:
        deploy = find(docs, "Deployment", budget["metadata"]["name"])
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # a budget as large as the replica count would block every node drain
        assert deploy["spec"]["replicas"] > budget["spec"]["minAvailable"]
    assert not [d for d in render("overlays/dev") if d["kind"] == "PodDisruptionBudget"]
    assert find(render("overlays/dev"), "Deployment", "mlflow")["spec"]["replicas"] == 1


def test_terraform_outputs_env_script():
    module = _load_terraform_outputs_env()
    outputs = {k: {"value": f"v-{k}"} for k in module.KEYS if k != "vpc_cidr"}
    outputs["db_port"] = {"value": 5432}
    outputs["gpu_taint"] = {"value": {"key": "nvidia.com/gpu"}}  # not a key the layer reads
    text = module.to_env(outputs, vpc_cidr="10.1.0.0/16")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert [line.split("=")[0] for line in lines] == list(module.KEYS)
    assert "db_port=5432" in lines and "vpc_cidr=10.1.0.0/16" in lines
    del outputs["mlflow_role_arn"]
    with pytest.raises(SystemExit, match="mlflow_role_arn"):
        module.to_env(outputs, vpc_cidr="10.1.0.0/16")


# --- bad inputs -----------------------------------------------------------------------

GOOD_DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "bad-deploy", "namespace": "amalia-vl"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
             "template": {"metadata": {"labels": {"a": "b"}},
                          "spec": {"containers": [{"name": "c", "image": "x/y:1.0"}]}}},
}


def _write(tmp_path: Path, doc: dict, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_good_sample_validates(tmp_path):
    assert validate_file(_write(tmp_path, GOOD_DEPLOYMENT)) == []


def test_unknown_field_fails_naming_file_kind_and_rule(tmp_path):
    doc = json.loads(json.dumps(GOOD_DEPLOYMENT))
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    path = _write(tmp_path, doc)
    (error,) = validate_file(path)
    assert str(path) in error and "Deployment/bad-deploy" in error
    assert "schema (Kubernetes 1.31, strict)" in error
    assert "spec/template/spec/containers/0" in error and "'imagePullPolicyy'" in error


def test_wrong_type_fails_naming_file_kind_and_rule(tmp_path):
    doc = json.loads(json.dumps(GOOD_DEPLOYMENT))
    doc["spec"]["replicas"] = "two"
    path = _write(tmp_path, doc)
    (error,) = validate_file(path)
    assert str(path) in error and "Deployment/bad-deploy" in error
    assert "at spec/replicas" in error and "'two' is not of type 'integer'" in error


def test_unknown_kind_fails(tmp_path):
    path = _write(tmp_path, {"apiVersion": "example.com/v1", "kind": "Widget",
                             "metadata": {"name": "w"}})
    (error,) = validate_file(path)
    assert "Widget/w" in error and "not a known CRD kind" in error


def test_bad_pytorchjob_fails_its_structure_check(tmp_path):
    job = find(render("base/training"), "PyTorchJob", "amalia-vl-sft")
    del job["spec"]["pytorchReplicaSpecs"]["Worker"]
    path = _write(tmp_path, job, "no-worker.yaml")
    (error,) = validate_file(path)
    assert str(path) in error and "PyTorchJob/amalia-vl-sft" in error
    assert "crd-structure: pytorchReplicaSpecs must be Master and Worker" in error

    job = find(render("base/training"), "PyTorchJob", "amalia-vl-sft")
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 4  # --nproc stays 8
    pod["containers"][0]["command"] = ["amalia-vl"]  # operator's RANK left in place
    pod["restartPolicyy"] = "Never"  # pod template typo: the core schema catches it
    errors = validate_file(_write(tmp_path, job, "mismatch.yaml"))
    text = "\n".join(errors)
    assert "pytorchReplicaSpecs.Worker: nvidia.com/gpu requests/limits" in text
    assert "RANK is not removed" in text
    assert "'restartPolicyy'" in text and "in pytorchReplicaSpecs.Worker.template" in text
    assert all("mismatch.yaml: PyTorchJob/amalia-vl-sft: " in e for e in errors)


def test_bad_external_secret_and_store_fail(tmp_path):
    docs = render("base")
    store = find(docs, "ClusterSecretStore", "aws-secrets-manager")
    store["spec"]["provider"]["aws"]["auth"] = {"secretRef": {"accessKeyIDSecretRef": {}}}
    secret = find(docs, "ExternalSecret", "mlflow-server")
    secret["spec"]["dataFrom"] = [{"extract": {}}]
    path = tmp_path / "es.yaml"
    path.write_text(yaml.safe_dump_all([store, secret]))
    text = "\n".join(validate_file(path))
    assert "ClusterSecretStore/aws-secrets-manager: crd-structure: static AWS keys" in text
    assert "ExternalSecret/mlflow-server: crd-structure: every data/dataFrom entry" in text


def test_policy_breaches_are_reported(tmp_path):
    docs = render("base")
    deploy = find(docs, "Deployment", "mlflow")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    c["image"] = "ghcr.io/amalia-vl/mlflow:latest"
    del c["resources"]["limits"]
    c["securityContext"]["readOnlyRootFilesystem"] = False
    del deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    del c["livenessProbe"]
    find(docs, "Role", "prefect-worker")["rules"][0]["verbs"] = ["*"]
    docs = [d for d in docs if d["metadata"]["name"] != "default-deny"]
    docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leak"},
                 "stringData": {"password": "x"}})
    text = "\n".join(policy_violations(docs, "bad-render"))
    for expected in (
            "bad-render: Deployment/mlflow container mlflow: image-pinned",
            "Deployment/mlflow container mlflow: resources: no limits for ['cpu', 'memory']",
            "Deployment/mlflow container mlflow: read-only-root-fs",
            "Deployment/mlflow container mlflow: run-as-non-root",
            "Deployment/mlflow container mlflow: probes: no livenessProbe",
            "Role/prefect-worker: rbac-no-wildcard: `*` in verbs",
            "Secret/leak: no-secret-data",
            "bad-render: default-deny"):
        assert expected in text, expected


def test_unresolved_reference_is_reported():
    docs = [d for d in render("base") if d["metadata"]["name"] != "rds-master"]
    errors = unresolved_references(docs, "bad-render", [])
    assert any("Deployment/mlflow" in e and "secret 'rds-master'" in e for e in errors)


def test_broken_kustomization_fails_naming_it(tmp_path):
    _kubectl()
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(AssertionError, match=re.escape(str(tmp_path))):
        render_dir(tmp_path)
