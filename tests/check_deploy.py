#!/usr/bin/python3
"""Offline checks of the launch recipes (run by tests/test_deploy.c).

  check_deploy.py SRC [--mpijob F] [--elastic F] [--dockerfile F]

Parses the Kubernetes manifests (python3-yaml) and checks the fields the cluster
needs; checks that the Dockerfile's RUN steps are the scripts CI runs. Files default
to SRC/deploy/...; the test hands in broken copies to see each check fail. Prints one
line per problem and exits 1 if there is any."""
import re
import shlex
import sys

import yaml

problems = []


def need(cond, what):
    if not cond:
        problems.append(what)
    return cond


def arg_after(cmd, flag):
    """The value of `flag V` or `flag=V` in a command list, else None."""
    for i, a in enumerate(cmd):
        if a == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None


def containers(pod_template):
    return pod_template.get("spec", {}).get("containers", []) or []


def command_of(c):
    """A container's command + args as a list; a `sh -c SCRIPT` is split into words."""
    cmd = list(c.get("command") or []) + list(c.get("args") or [])
    if len(cmd) >= 3 and cmd[0] in ("sh", "bash", "/bin/sh") and cmd[1] == "-c":
        cmd = cmd[:2] + shlex.split(cmd[2])
    return cmd


def secret_mounts(pod_template):
    """mountPath -> secretName for every secret volume mounted in the pod's containers."""
    vols = {v["name"]: v["secret"]["secretName"]
            for v in pod_template.get("spec", {}).get("volumes", []) or [] if "secret" in v}
    out = {}
    for c in containers(pod_template):
        for m in c.get("volumeMounts", []) or []:
            if m["name"] in vols:
                out[m["mountPath"]] = vols[m["name"]]
    return out


def check_keys(name, pod, cmd):
    """CURVE on, its key directory and key file from a mounted Secret."""
    need("--cluster.curve=on" in cmd, f"{name}: cluster.curve is not on")
    mounts = secret_mounts(pod)
    for flag in ("--cluster.keys", "--cluster.key"):
        path = arg_after(cmd, flag)
        if path is None:
            continue
        need(any(path == m or path.startswith(m + "/") for m in mounts),
             f"{name}: {flag}={path} is not in a mounted Secret")


def literal_keys(path, text):
    # a z85 CURVE key is 40 characters; "public <key>" / "secret <key>" is a key file
    need(not re.search(r"(public|secret) [0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}", text),
         f"{path}: holds a literal CURVE key")


def check_mpijob(path):
    text = open(path).read()
    literal_keys(path, text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    jobs = [d for d in docs if d.get("kind") == "MPIJob"]
    if not need(len(jobs) == 1, f"{path}: expected one MPIJob, found {len(jobs)}"):
        return
    job = jobs[0]
    need(job.get("apiVersion") == "kubeflow.org/v2beta1",
         f"{path}: apiVersion {job.get('apiVersion')!r}, not kubeflow.org/v2beta1")
    need(job.get("metadata", {}).get("name"), f"{path}: no metadata.name")
    spec = job.get("spec", {})
    specs = spec.get("mpiReplicaSpecs", {})
    if not need("Launcher" in specs and "Worker" in specs,
                f"{path}: mpiReplicaSpecs needs Launcher and Worker"):
        return
    la, wo = specs["Launcher"], specs["Worker"]
    need(la.get("replicas") == 1, f"{path}: Launcher replicas must be 1")
    need(isinstance(wo.get("replicas"), int) and wo["replicas"] >= 3,
         f"{path}: Worker replicas must be >= 3 (scheduler, a server, a worker)")
    for role, rs in (("Launcher", la), ("Worker", wo)):
        cs = containers(rs.get("template", {}))
        if need(len(cs) >= 1, f"{path}: {role} has no container"):
            need(cs[0].get("image"), f"{path}: {role} container has no image")
            need(command_of(cs[0]), f"{path}: {role} container has no command")
    lc = command_of(containers(la["template"])[0])
    need(any(a.endswith("deploy/hostfile.sh") for a in lc),
         f"{path}: the Launcher does not run deploy/hostfile.sh (the MPMD split)")
    need(arg_after(lc, "--hostfile") == "/etc/mpi/hostfile",
         f"{path}: the Launcher does not use the operator's /etc/mpi/hostfile")
    try:
        s, w = int(arg_after(lc, "--servers")), int(arg_after(lc, "--workers"))
        slots = spec.get("slotsPerWorker", 1)
        need(1 + s + w == wo.get("replicas", 0) * slots,
             f"{path}: 1 scheduler + {s} server(s) + {w} worker(s) != Worker replicas "
             f"{wo.get('replicas')} x slotsPerWorker {slots}")
    except (TypeError, ValueError):
        need(False, f"{path}: the Launcher command lacks --servers S --workers W")
    wc = command_of(containers(wo["template"])[0])
    need(wc and wc[0].endswith("sshd"), f"{path}: Worker pods must run sshd for mpirun")
    keys = arg_after(lc, "--keys")
    if need(keys, f"{path}: no --keys: the job would run without CURVE"):
        for role, rs in (("Launcher", la), ("Worker", wo)):
            need(keys in secret_mounts(rs["template"]),
                 f"{path}: {role} does not mount a Secret at {keys}")


def check_elastic(path):
    text = open(path).read()
    literal_keys(path, text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        need(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"),
             f"{path}: a document without apiVersion, kind or metadata.name")
    by = {}
    for d in docs:
        labels = d.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        if d.get("kind") in ("Deployment", "StatefulSet"):
            by[labels.get("role")] = d
            sel = d["spec"].get("selector", {}).get("matchLabels", {})
            need(sel and all(labels.get(k) == v for k, v in sel.items()),
                 f"{path}: {d['metadata']['name']}: selector does not match its pod labels")
    if not need({"scheduler", "server", "worker"} <= set(by),
                f"{path}: needs a scheduler, server and worker workload, has {sorted(by)}"):
        return
    need(by["worker"]["kind"] == "Deployment", f"{path}: the workers are not a Deployment")
    need(by["scheduler"]["spec"].get("replicas") == 1, f"{path}: more than one scheduler")
    binaries = {"scheduler": "mimic-scheduler", "server": "mimic-pserver", "worker": "mimic-worker"}
    cmds = {}
    for role, d in by.items():
        pod = d["spec"]["template"]
        cs = containers(pod)
        if not need(cs and cs[0].get("image"), f"{path}: {role}: no container image"):
            continue
        cmd = command_of(cs[0])
        cmds[role] = cmd
        need(any(a.endswith("/" + binaries[role]) for a in cmd),
             f"{path}: {role}: the command does not run {binaries[role]}")
        check_keys(f"{path}: {role}", pod, cmd)
    port = arg_after(cmds.get("scheduler", []), "--port")
    if not need(port and port.isdigit(), f"{path}: the scheduler has no fixed --port"):
        return
    sched_labels = by["scheduler"]["spec"]["template"]["metadata"]["labels"]
    svcs = [d for d in docs if d.get("kind") == "Service" and d["spec"].get("selector")
            and all(sched_labels.get(k) == v for k, v in d["spec"]["selector"].items())]
    if not need(len(svcs) == 1, f"{path}: expected one Service selecting the scheduler"):
        return
    svc = svcs[0]
    ports = svc["spec"].get("ports", [])
    need(len(ports) == 1 and str(ports[0].get("targetPort", ports[0].get("port"))) == port,
         f"{path}: the Service's targetPort is not the scheduler's --port {port}")
    want = f"tcp://{svc['metadata']['name']}:{ports[0].get('port') if ports else '?'}"
    for role in ("server", "worker"):
        got = arg_after(cmds.get(role, []), "--scheduler")
        need(got == want, f"{path}: {role} --scheduler {got!r}, expected {want!r} (the Service)")


def check_dockerfile(path, src):
    lines = []
    for raw in open(path).read().replace("\\\n", " ").splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            lines.append(s)
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    image = froms[0].split()[1].split("@")[0] if len(froms) == 1 else ""
    need(image in ("debian:bookworm", "debian:12", "debian:bookworm-slim", "debian:12-slim"),
         f"{path}: not one FROM debian:bookworm (Debian 12)")
    runs = [l[4:].strip() for l in lines if l.upper().startswith("RUN ")]
    ci = {"deploy/install-deps.sh", "deploy/build.sh", "deploy/test.sh"}
    seen = set()
    for r in runs:
        scripts = re.findall(r"bash (\S+\.sh)", r)
        need(scripts and all(s in ci for s in scripts),
             f"{path}: RUN {r!r} is not one of the CI scripts {sorted(ci)}")
        rest = re.sub(r"bash \S+\.sh[^;]*", "", r)
        need(not re.search(r"apt-get|apt |cmake|make |ctest|pip|curl|wget", rest),
             f"{path}: RUN {r!r} does work outside the CI scripts")
        seen.update(scripts)
    need(seen == ci, f"{path}: the RUN steps run {sorted(seen)}, CI runs {sorted(ci)}")
    # and those are what CI runs: .ci/run -> deploy/test.sh -> install-deps.sh, build.sh
    ci_run = open(f"{src}/.ci/run").read()
    test_sh = open(f"{src}/deploy/test.sh").read()
    need("deploy/test.sh" in ci_run, ".ci/run does not run deploy/test.sh")
    need("deploy/install-deps.sh" in test_sh and "deploy/build.sh" in test_sh,
         "deploy/test.sh does not run deploy/install-deps.sh and deploy/build.sh")


def main():
    src = sys.argv[1]
    opts = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    check_mpijob(opts.get("--mpijob", f"{src}/deploy/k8s/mpijob.yaml"))
    check_elastic(opts.get("--elastic", f"{src}/deploy/k8s/elastic.yaml"))
    check_dockerfile(opts.get("--dockerfile", f"{src}/deploy/Dockerfile"), src)
    for p in problems:
        print("check_deploy:", p)
    if not problems:
        print("check_deploy: MPIJob, elastic manifests and Dockerfile ok")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, yaml.YAMLError) as e:
        print("check_deploy:", str(e).replace("\n", " "))
        sys.exit(1)
