#!/usr/bin/env bash
# Validates deploy/ offline: the Kubernetes manifests against the schemas
# that ship inside the kubernetes-validate package, the systemd units with
# `systemd-analyze verify`, and that the files agree with each other (socket
# path, grace periods, volume and object names, the conflist).
#
# Then it proves that each check bites: it breaks copies of the files in a
# temporary folder and fails unless every broken copy is rejected.
#
# Usage, as root on Debian (installs what is missing): bash .ci/validate-deploy.sh
# Nothing here contacts a cluster or starts a unit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The package carries the schemas of a range of Kubernetes versions; pinning
# it keeps the versions below available.
kubernetes_validate_package="kubernetes-validate==1.37.0"
# The oldest Kubernetes release still commonly run, and the newest the
# package knows.
kubernetes_versions=(1.29.0 1.37.0)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

install_tools() {
    if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
        echo "== installing $kubernetes_validate_package"
        bash "$(dirname "${BASH_SOURCE[0]}")/pip-install.sh" "$kubernetes_validate_package"
    fi
    if ! command -v systemd-analyze >/dev/null; then
        echo "== installing systemd (for systemd-analyze)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
    fi
}

# kubernetes-validate exits 0 when it has no schema for a resource (a
# misspelled kind or apiVersion) and only prints a WARN line, so any line
# other than INFO counts as a failure here, and so does a file with no
# resource in it.
validate_manifests() {
    local folder="$1" manifest output status versions=()
    for version in "${kubernetes_versions[@]}"; do
        versions+=(--kubernetes-version "$version")
    done

    for manifest in "$folder"/*.yaml; do
        status=0
        output="$(python3 -m kubernetes_validate --strict "${versions[@]}" "$manifest" 2>&1)" ||
            status=$?
        printf '%s\n' "$output"
        if [ "$status" -ne 0 ] || grep -qv '^INFO ' <<<"$output" || ! grep -q '^INFO ' <<<"$output"; then
            echo "FAIL: $manifest does not validate" >&2
            return 1
        fi
    done
}

# `systemd-analyze verify` checks that ExecStart's binary exists and is
# executable, and /usr/local/bin/cniserverd is not installed on a CI
# machine. Rather than edit the units, it runs them unchanged under --root:
# a temporary root holding the standard units (for sockets.target and the
# like), our units, and at /usr/local/bin/cniserverd the daemon cargo built
# (release, else debug) or, before any build, a placeholder executable. The
# check stays whole: a unit naming another binary still fails.
#
# verify also only warns, exiting 0, on an unknown setting or a value it
# cannot parse (`KillMode=mixd`); any diagnostic counts as a failure here.
verify_units() {
    local folder="$1" root="$work/root" unit_dir binary built="" status=0 diagnostics units=()
    rm -rf "$root"
    unit_dir="$root/etc/systemd/system"
    mkdir -p "$unit_dir" "$root/usr/lib/systemd" "$root/usr/local/bin" || return 1
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/" || return 1
    cp "$folder"/*.socket "$folder"/*.service "$unit_dir/" || return 1

    for binary in target/release/cniserverd target/debug/cniserverd; do
        if [ -x "$binary" ]; then
            built="$binary"
            break
        fi
    done
    if [ -n "$built" ]; then
        cp "$built" "$root/usr/local/bin/cniserverd" || return 1
    else
        printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/cniserverd" || return 1
        chmod 0755 "$root/usr/local/bin/cniserverd" || return 1
    fi
    echo "verifying units with /usr/local/bin/cniserverd = ${built:-a placeholder}"

    for unit in "$unit_dir"/*.socket "$unit_dir"/*.service; do
        units+=("$unit")
    done
    diagnostics="$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1)" || status=$?
    if [ "$status" -ne 0 ] || [ -n "$diagnostics" ]; then
        printf '%s\n' "$diagnostics"
        echo "FAIL: systemd-analyze verify rejects the units in $folder" >&2
        return 1
    fi
    echo "systemd-analyze verify: ${units[*]##*/} ok"
}

# What neither schema nor systemd can see: the files must agree.
check_consistency() {
    python3 - "$1" <<'EOF'
import json
import os
import re
import sys

import yaml

folder = sys.argv[1]
problems = []


def check(ok, what):
    if not ok:
        problems.append(what)


def flag(args, name):
    """The value after `name` in an argument list, or None."""
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            return args[i + 1]
    return None


def canonical(path):
    """/var/run is a symlink to /run on every systemd host."""
    return re.sub(r"^/var/run/", "/run/", path)


with open(os.path.join(folder, "daemonset.yaml")) as f:
    objects = [o for o in yaml.safe_load_all(f) if o]
by_kind = {}
for o in objects:
    by_kind.setdefault(o["kind"], []).append(o)
with open(os.path.join(folder, "10-podnet.conflist")) as f:
    conflist = json.load(f)
socket_path = conflist["plugins"][0]["socket"]

# The ConfigMap carries the same conflist as the file.
(config_map,) = by_kind["ConfigMap"]
(daemon_set,) = by_kind["DaemonSet"]
(account,) = by_kind["ServiceAccount"]
for name, text in config_map["data"].items():
    check(json.loads(text) == conflist, f"ConfigMap key {name} differs from 10-podnet.conflist")
check(len({o["metadata"]["namespace"] for o in objects}) == 1, "objects in different namespaces")

# The pod uses the objects of this file and mounts every volume it names.
pod = daemon_set["spec"]["template"]["spec"]
(container,) = pod["containers"]
check(pod["serviceAccountName"] == account["metadata"]["name"], "serviceAccountName unknown")
volumes = {v["name"]: v for v in pod["volumes"]}
mounts = {m["name"]: m for m in container["volumeMounts"]}
check(set(volumes) == set(mounts), f"volumes {sorted(volumes)} vs mounts {sorted(mounts)}")
for volume in volumes.values():
    if "configMap" in volume:
        check(volume["configMap"]["name"] == config_map["metadata"]["name"], "configMap unknown")

# One socket path everywhere, in a mounted folder; grace above the drain.
args = container["args"]
check(flag(args, "--socket") == socket_path, "--socket differs from the conflist's socket")
for probe in ("livenessProbe", "readinessProbe"):
    command = container[probe]["exec"]["command"]
    check(flag(command, "--socket") == socket_path, f"{probe} --socket differs")
check(
    any(os.path.dirname(socket_path) == m["mountPath"] for m in mounts.values()),
    "socket folder not mounted",
)
conflist_arg = flag(args, "--conflist")
check(
    any(os.path.dirname(conflist_arg) == mounts[n]["mountPath"]
        for n, v in volumes.items() if "configMap" in v)
    and os.path.basename(conflist_arg) in config_map["data"],
    "--conflist is not a file of the mounted ConfigMap",
)
grace = float(flag(args, "--shutdown-grace"))
check(pod["terminationGracePeriodSeconds"] > grace, "terminationGracePeriodSeconds not above grace")


def unit_settings(name):
    """Key, value pairs of a unit file, continuation lines joined."""
    with open(os.path.join(folder, name)) as f:
        text = re.sub(r"\\\n\s*", " ", f.read())
    return [tuple(s.strip() for s in line.split("=", 1))
            for line in text.splitlines() if "=" in line and not line.startswith("#")]


socket_unit = dict(unit_settings("cniserverd.socket"))
service = dict(unit_settings("cniserverd.service"))
exec_start = service["ExecStart"].split()
check(canonical(socket_unit["ListenStream"]) == canonical(socket_path), "ListenStream differs")
check(flag(exec_start, "--socket") == socket_unit["ListenStream"], "ExecStart --socket differs")
check(socket_unit["SocketMode"] == "0600" and socket_unit["DirectoryMode"] == "0700", "socket modes")
check(float(service["TimeoutStopSec"]) > float(flag(exec_start, "--shutdown-grace")),
      "TimeoutStopSec not above grace")

for problem in problems:
    print(f"FAIL: {folder}: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"consistency of {folder}: ok")
EOF
}

# Bash ignores `set -e` inside a function called from a condition, so each
# step returns its own status.
validate_all() {
    validate_manifests "$1" || return 1
    verify_units "$1" || return 1
    check_consistency "$1"
}

# Each case breaks one thing in a fresh copy of deploy/; every one must be
# rejected, for the reason given, or the checks above prove nothing.
expect_rejected() {
    local name="$1" file="$2" expression="$3" reason="$4" copy="$work/broken"
    rm -rf "$copy"
    cp -r deploy "$copy"
    sed -i -e "$expression" "$copy/$file"
    if cmp -s "deploy/$file" "$copy/$file"; then
        echo "FAIL: self-test '$name' changed nothing in $file" >&2
        return 1
    fi
    if validate_all "$copy" >"$work/broken.log" 2>&1; then
        cat "$work/broken.log"
        echo "FAIL: self-test '$name': the broken copy was accepted" >&2
        return 1
    fi
    if ! grep -qF -- "$reason" "$work/broken.log"; then
        cat "$work/broken.log"
        echo "FAIL: self-test '$name' was rejected, but not for: $reason" >&2
        return 1
    fi
    echo "rejected as expected: $name: $(grep -m1 -F -- "$reason" "$work/broken.log")"
}

install_tools
echo "== kubernetes-validate $(python3 -m kubernetes_validate --version), systemd-analyze $(systemd-analyze --version | head -n1)"

echo "== deploy/"
validate_manifests deploy
verify_units deploy
check_consistency deploy

echo "== self-test: broken copies must be rejected"
expect_rejected "unknown pod field" daemonset.yaml \
    's/^      hostNetwork: true/      hostNetwrok: true/' \
    "Additional properties are not allowed ('hostNetwrok' was unexpected)"
expect_rejected "string for an integer" daemonset.yaml \
    's/terminationGracePeriodSeconds: 45/terminationGracePeriodSeconds: "45"/' \
    "terminationGracePeriodSeconds: '45' is not of type 'integer'"
expect_rejected "unknown kind" daemonset.yaml \
    's/^kind: DaemonSet/kind: DaemonSett/' \
    "Couldn't find schema for kind DaemonSett"
expect_rejected "YAML syntax" daemonset.yaml \
    's/^spec:/spec: [/' \
    "Couldn't parse YAML"
expect_rejected "pod grace below the daemon's" daemonset.yaml \
    's/terminationGracePeriodSeconds: 45/terminationGracePeriodSeconds: 10/' \
    "terminationGracePeriodSeconds not above grace"
expect_rejected "ConfigMap and conflist file differ" daemonset.yaml \
    's|"subnet": "10.244.0.0/24"|"subnet": "10.245.0.0/24"|' \
    "differs from 10-podnet.conflist"
expect_rejected "bad KillMode" cniserverd.service \
    's/^KillMode=mixed/KillMode=mixd/' \
    "Failed to parse kill mode specification"
expect_rejected "unknown unit setting" cniserverd.service \
    's/^Restart=on-failure/Restart=on-failure\nRestrat=always/' \
    "Unknown key 'Restrat'"
expect_rejected "ExecStart binary missing" cniserverd.service \
    's|^ExecStart=/usr/local/bin/cniserverd|ExecStart=/usr/local/bin/cniserverd-missing|' \
    "is not executable"
expect_rejected "bad SocketMode" cniserverd.socket \
    's/^SocketMode=0600/SocketMode=0x600/' \
    "Failed to parse mode value"
expect_rejected "socket path differs" cniserverd.socket \
    's|^ListenStream=/run/openshift-sdn/|ListenStream=/run/other/|' \
    "ListenStream differs"

echo "deploy/ is valid"
