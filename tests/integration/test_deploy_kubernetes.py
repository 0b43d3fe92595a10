"""deploy/kubernetes as an operator uses it.

* ``kubectl kustomize`` (the real kubectl) renders the base and the vm-join-lb overlay;
* every rendered object validates against Kubernetes' own OpenAPI schemas (the ``kubernetes-validate``
  package, strict: unknown fields are errors) for the Kubernetes versions in ``K8S_VERSIONS``. Custom
  resources are not in those schemas: an object whose kind is defined by a rendered CRD is validated
  against that CRD's ``openAPIV3Schema`` instead (the CRDs themselves are built-in
  ``apiextensions.k8s.io/v1`` objects and go through kubernetes-validate); a kind known to neither fails;
* the ClusterRole and Role grant exactly ``vmagent/controlplane/kube/permissions.py`` (no more, no less);
* the manifests apply with ``kubectl apply -k`` (client-side and ``--server-side``) and delete with
  ``kubectl delete -k`` on the test API server (tests/kubeapi: a stand-in for kube-apiserver, which cannot
  be installed here; it stores RBAC and Deployments but runs no controllers or kubelet);
* the Deployment runs the image ``make image`` builds (vmagent/common/image.py ``IMAGE``), and an overlay's
  kustomize ``images:`` replaces it as docs/kubernetes.md shows;
* the Deployment's command line is accepted by ``vmagent-cp serve`` (every flag in ``--help``), and
  ``vmagent-cp`` started with it (the in-cluster service account swapped for a kubeconfig, the volumes laid
  out under a temporary root as the kubelet would mount them) answers its probes and watches the cluster.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import free_port, require_tool, wait_for
from tests.kubeapi import KubeApiServer
from vmagent import __version__
from vmagent.cli.common import build_parser
from vmagent.cli.controlplane import SUBCOMMANDS
from vmagent.common.image import IMAGE, IMAGE_REPOSITORY, IMAGE_TAG
from vmagent.common.x509util import cert_pem, generate_key, key_pem
from vmagent.controlplane.config.kinds import KINDS
from vmagent.controlplane.kube.permissions import merged

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "vm-join-lb"
NAMESPACE = "vmagent-system"
# The oldest and the newest Kubernetes minor the kubectl clients of these machines span (1.27-1.33, the
# image's kubectl package): every API the manifests use (apps/v1, rbac/v1, apiextensions/v1, v1) is GA in
# both, and a field added or removed in between would show up as a failure on one of them.
K8S_VERSIONS = ("1.27", "1.33")

Obj = dict[str, Any]


def kustomize(directory: Path) -> list[Obj]:
    require_tool("kubectl")
    r = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, f"kubectl kustomize {directory}: {r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {"base": kustomize(BASE), "vm-join-lb": kustomize(OVERLAY)}


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def the(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def ident(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


# -- rendering -------------------------------------------------------------------------------------


def test_kustomize_renders_the_base_and_the_overlay(rendered: dict[str, list[Obj]]) -> None:
    base, lb = rendered["base"], rendered["vm-join-lb"]
    kinds = sorted({o["kind"] for o in base})
    assert kinds == sorted(
        {
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "MutatingWebhookConfiguration",
        }
    )
    assert {c["spec"]["names"]["kind"] for c in by_kind(base, "CustomResourceDefinition")} == set(KINDS)
    cluster_scoped = {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    }
    for obj in base:
        ns = obj["metadata"].get("namespace")
        assert ns == (None if obj["kind"] in cluster_scoped else NAMESPACE), ident(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vmagent", ident(obj)
    assert the(base, "Deployment", "vmagent-cp")["spec"]["replicas"] == 2
    # The overlay is the base plus the LoadBalancer for VM joins, which exposes 15012/15013 and not 15014.
    assert [ident(o) for o in lb if ident(o) not in {ident(b) for b in base}] == [
        f"Service {NAMESPACE}/vmagent-cp-join"
    ]
    join = the(lb, "Service", "vmagent-cp-join")
    assert join["spec"]["type"] == "LoadBalancer"
    assert sorted(p["port"] for p in join["spec"]["ports"]) == [15012, 15013]
    assert sorted(p["port"] for p in the(base, "Service", "vmagent-cp")["spec"]["ports"]) == [
        15012,
        15013,
        15014,
        15017,
    ]


# -- schemas ---------------------------------------------------------------------------------------


def crd_schemas(objs: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    """(group, version, kind) -> the openAPIV3Schema of every version the rendered CRDs serve."""
    out = {}
    for crd in by_kind(objs, "CustomResourceDefinition"):
        spec = crd["spec"]
        for v in spec["versions"]:
            out[(spec["group"], v["name"], spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def validate(obj: Obj, version: str, custom: dict[tuple[str, str, str], Obj]) -> list[str]:
    """The errors of ``obj`` (empty when valid), each naming the object and the field."""
    group, _, api_version = str(obj.get("apiVersion", "")).rpartition("/")
    schema = custom.get((group, api_version, str(obj.get("kind"))))
    if schema is not None:  # a custom resource: its CRD's schema, as the API server would check it
        validator = jsonschema.Draft7Validator(schema)
        return [
            f"{ident(obj)}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{ident(obj)}: no Kubernetes {version} schema and no rendered CRD defines the kind"]
    except kubernetes_validate.ValidationError as e:
        return [f"{ident(obj)}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", ["base", "vm-join-lb"])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], kustomization: str, version: str
) -> None:
    objs = rendered[kustomization]
    custom = crd_schemas(objs)
    errors = [err for obj in objs for err in validate(obj, version, custom)]
    assert errors == []


def test_istio_objects_validate_against_the_rendered_crds(rendered: dict[str, list[Obj]]) -> None:
    """The custom-resource path of ``validate``: the project's valid example objects pass their CRD's
    schema, and a wrong type is named with its field."""
    custom = crd_schemas(rendered["base"])
    examples = [
        d
        for f in sorted((ROOT / "tests" / "testdata" / "config" / "valid").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    assert {d["kind"] for d in examples} & set(KINDS), "no Istio examples found"
    for doc in examples:
        assert validate(doc, K8S_VERSIONS[-1], custom) == [], ident(doc)
    bad = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadGroup",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"template": {"ports": {"http": "eighty"}}},
    }
    (err,) = validate(bad, K8S_VERSIONS[-1], custom)
    assert err.startswith("WorkloadGroup demo/web: spec.template.ports.http: "), err


# -- RBAC ------------------------------------------------------------------------------------------


def granted(role: Obj) -> dict[tuple[str, str, tuple[str, ...]], set[str]]:
    """(group, resource, resourceNames) -> verbs."""
    out: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, f"{ident(role)}: {rule}"
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        names = tuple(sorted(rule.get("resourceNames") or ()))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource, names), set()).update(rule["verbs"])
    return out


def test_rbac_grants_exactly_what_permissions_py_lists(rendered: dict[str, list[Obj]]) -> None:
    base = rendered["base"]
    wanted = merged()
    cluster = {(g, r, names): v for (g, r, own, names), v in wanted.items() if not own}
    own_ns = {(g, r, names): v for (g, r, own, names), v in wanted.items() if own}
    assert granted(the(base, "ClusterRole", "vmagent-cp")) == cluster
    role = the(base, "Role", "vmagent-cp")
    assert granted(role) == own_ns
    # The Role is in the namespace the pods run in: the Lease's namespace ($POD_NAMESPACE).
    assert role["metadata"]["namespace"] == NAMESPACE
    sa = the(base, "ServiceAccount", "vmagent-cp")["metadata"]
    deployment = the(base, "Deployment", "vmagent-cp")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["name"]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = the(base, kind, "vmagent-cp")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": "vmagent-cp",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]


# -- applied to an API server ----------------------------------------------------------------------


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApiServer]:
    with KubeApiServer(tmp_path / "kubeapi", bookmark_interval=0.5) as server:
        yield server


def kubectl(kubeconfig: Path, *args: str) -> str:
    r = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


@pytest.mark.parametrize("mode", ["client-side", "server-side"])
def test_manifests_apply_and_delete_with_kubectl(
    kube_api: KubeApiServer, rendered: dict[str, list[Obj]], mode: str
) -> None:
    require_tool("kubectl")
    kc = kube_api.kubeconfig()
    flags = ["--server-side"] if mode == "server-side" else []
    kubectl(kc, "apply", *flags, "-k", str(BASE))
    kubectl(kc, "apply", *flags, "-k", str(OVERLAY))  # the overlay on top: only the LB Service is new
    for obj in rendered["vm-join-lb"]:
        meta = obj["metadata"]
        live = kube_api.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace", ""))
        assert live["metadata"]["labels"] == meta["labels"], ident(obj)
        for field in ("spec", "rules", "roleRef", "subjects"):
            if field in obj:
                assert not (where := _missing(live[field], obj[field], field)), f"{ident(obj)}: {where}"
    # The CRDs are served once applied: kubectl finds the Istio kinds by their short names.
    assert kubectl(kc, "get", "vs", "-A", "-o", "name") == ""
    assert "vmagent-cp" in kubectl(kc, "get", "deploy", "-n", NAMESPACE, "-o", "name")
    # Applying again changes nothing.
    before = kube_api.revision
    kubectl(kc, "apply", *flags, "-k", str(OVERLAY))
    assert kube_api.revision == before
    # Uninstall as docs/kubernetes.md says: the overlay's Service and the base go. (--ignore-not-found: the
    # test server deletes a namespace's objects at once, where a real one marks the namespace Terminating.)
    kubectl(kc, "delete", "-k", str(OVERLAY), "--ignore-not-found")
    for kind in ("crd", "clusterrole", "clusterrolebinding"):
        names = kubectl(kc, "get", kind, "-o", "name")
        assert "vmagent-cp" not in names and "istio.io" not in names, names
    assert NAMESPACE not in kubectl(kc, "get", "namespaces", "-o", "name")


def _missing(live: Any, wanted: Any, path: str) -> str:
    """Where ``wanted`` is not in ``live`` ("" when it is): the API server may add defaults (clusterIP, ...),
    never drop or change a field it was given."""
    if isinstance(wanted, dict):
        if not isinstance(live, dict):
            return path
        for k, v in wanted.items():
            if k not in live:
                return f"{path}.{k} (dropped)"
            where = _missing(live[k], v, f"{path}.{k}")
            if where:
                return where
        return ""
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return f"{path} (a list of {len(wanted)})"
        for i, (a, b) in enumerate(zip(live, wanted, strict=True)):
            where = _missing(a, b, f"{path}[{i}]")
            if where:
                return where
        return ""
    return "" if live == wanted else f"{path}: {live!r} != {wanted!r}"


# -- the image -----------------------------------------------------------------------------------


def test_the_deployment_runs_the_image_make_image_builds(rendered: dict[str, list[Obj]]) -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert __version__ == version, "vmagent/__init__.py __version__ differs from pyproject.toml's version"
    assert IMAGE == f"localhost/vmagent:{version}"
    for kustomization in ("base", "vm-join-lb"):
        assert container(rendered, kustomization)["image"] == IMAGE, kustomization


def test_an_overlay_replaces_the_image_with_kustomize_images(tmp_path: Path) -> None:
    """The overlay of docs/kubernetes.md "The image": the image pushed to a registry of the operator's."""
    overlay = tmp_path / "my-registry"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(BASE, overlay)],
                "images": [
                    {
                        "name": IMAGE_REPOSITORY,
                        "newName": "registry.example.com/mesh/vmagent",
                        "newTag": IMAGE_TAG,
                    }
                ],
            }
        )
    )
    (c,) = the(kustomize(overlay), "Deployment", "vmagent-cp")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"registry.example.com/mesh/vmagent:{IMAGE_TAG}"


# -- the Deployment's command line ---------------------------------------------------------------


def container(rendered: dict[str, list[Obj]], kustomization: str = "base") -> Obj:
    pod = the(rendered[kustomization], "Deployment", "vmagent-cp")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert isinstance(c, dict)
    return c


def test_the_deployment_command_line_is_one_vmagent_cp_serve_accepts(rendered: dict[str, list[Obj]]) -> None:
    c = container(rendered)
    assert c["command"] == ["vmagent-cp"]
    args = c["args"]
    assert args[0] == "serve"
    parser = build_parser("vmagent-cp", "", SUBCOMMANDS)
    try:
        parsed = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"vmagent-cp rejects the Deployment's args {args}")
    assert parsed.in_cluster is True
    exe = shutil.which("vmagent-cp", path=os.path.dirname(sys.executable)) or "vmagent-cp"
    help_text = subprocess.run(
        [exe, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|\s|,){re.escape(flag)}\b", help_text), (
            f"{flag} is not in vmagent-cp serve --help"
        )
    # The probes and the Service target ports the container declares and the flags listen on.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    listens = {
        "join": parsed.listen,
        "mtls": parsed.mtls_listen,
        "http": parsed.http_listen,
        "webhook": parsed.inject_listen,
    }
    for name, listen in listens.items():
        assert str(listen).endswith(f":{ports[name]}"), f"port {name}: {listen} vs {ports[name]}"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"


def test_the_injection_webhook_calls_the_control_plane_service(rendered: dict[str, list[Obj]]) -> None:
    """Every webhook of the configuration reaches the container's webhook port through the Service, only
    for pod creation, and fails open unless the operator chooses otherwise (docs/kubernetes.md)."""
    base = rendered["base"]
    config = the(base, "MutatingWebhookConfiguration", "vmagent-sidecar-injector")
    service = the(base, "Service", "vmagent-cp")
    ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}["webhook"] == 15017
    assert len(config["webhooks"]) == 2
    for hook in config["webhooks"]:
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["path"]) == ("vmagent-cp", NAMESPACE, "/inject")
        assert ports[ref["port"]] == "webhook"
        assert "caBundle" not in hook["clientConfig"]  # written by the control plane
        assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]


def _operator_ca() -> tuple[bytes, bytes]:
    key = generate_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator mesh CA")])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert_pem(cert), key_pem(key)


def test_vmagent_cp_runs_with_the_deployment_command_line(
    kube_api: KubeApiServer, rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """What the kubelet would do, by hand: the Secret's keys as files where the volumes mount them, the
    env from the downward API, the container's args; only ``--in-cluster`` becomes ``--kubeconfig`` (the
    in-cluster config reads a fixed path under /var/run/secrets) and the listen addresses become free
    loopback ports (0.0.0.0 on this shared machine is not ours to take)."""
    c = container(rendered)
    pod = the(rendered["base"], "Deployment", "vmagent-cp")["spec"]["template"]["spec"]
    root = tmp_path / "root"
    ca_cert, ca_key = _operator_ca()
    secret_data = {"ca-cert.pem": ca_cert, "ca-key.pem": ca_key, "token-key.pem": key_pem(generate_key())}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        source = volumes[mount["name"]]
        if "secret" in source:
            assert source["secret"]["secretName"] == "vmagent-cp-ca"
            files = {mount["subPath"]: secret_data[mount["subPath"]]} if "subPath" in mount else secret_data
            if "subPath" in mount:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(files[mount["subPath"]])
                target.chmod(0o440)
            else:
                target.mkdir(parents=True, exist_ok=True)
                for fname, data in files.items():
                    (target / fname).write_bytes(data)
                    (target / fname).chmod(0o440)
        else:
            target.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    args = []
    for arg in c["args"]:
        flag, _, value = arg.partition("=")
        if flag == "--in-cluster":
            args += ["--kubeconfig", str(kube_api.kubeconfig())]
        elif flag.endswith("listen"):
            args.append(f"{flag}=127.0.0.1:{http_port if flag == '--http-listen' else free_port()}")
        elif value.startswith("/"):
            args.append(f"{flag}={root / value.lstrip('/')}")
        else:
            args.append(arg)
    env = dict(os.environ)
    for e in c["env"]:
        field = e["valueFrom"]["fieldRef"]["fieldPath"]
        env[e["name"]] = {"metadata.name": "vmagent-cp-0", "metadata.namespace": NAMESPACE}[field]
    kubectl(kube_api.kubeconfig(), "apply", "-k", str(BASE))  # the CRDs and the Lease's namespace
    exe = shutil.which("vmagent-cp", path=os.path.dirname(sys.executable)) or "vmagent-cp"
    log = tmp_path / "cp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        probe = c["readinessProbe"]["httpGet"]["path"]

        def answers() -> bool:
            assert proc.poll() is None, f"vmagent-cp exited {proc.returncode}: {log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{probe}", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(answers, timeout=60, what=f"the readiness probe {probe}")

        def watching() -> dict[str, Any] | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/kubernetes", timeout=5) as r:
                doc = json.load(r)
            return doc if doc.get("leader") and doc.get("lease_holder") == "vmagent-cp-0" else None

        status = wait_for(watching, timeout=60, what="the Lease held by the pod's name")
        assert status["controller"] == "vmagent-cp-0"
        states = {str(i["state"]) for i in status["resources"]}
        assert len(status["resources"]) == len(KINDS) + 3 and states == {"watching"}, status
        lease = kube_api.get("coordination.k8s.io/v1", "Lease", "vmagent-cp-leader", NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "vmagent-cp-0"

        # The Lease holder writes the mesh root (the Secret's CA) into the webhook configuration.
        def bundles() -> list[str] | None:
            config = kube_api.get(
                "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "vmagent-sidecar-injector"
            )
            found = [str(h["clientConfig"].get("caBundle", "")) for h in config["webhooks"]]
            return found if all(found) else None

        for bundle in wait_for(bundles, timeout=60, what="the caBundle written by the Lease holder"):
            assert base64.b64decode(bundle) == ca_cert
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
