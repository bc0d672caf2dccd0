#!/usr/bin/env bash
# Installs every Debian package mimicps needs to build, test and run. Idempotent:
# packages already present are not touched and apt is not even asked.
# Usage: deploy/install-deps.sh [--bench] [--test] [--image]
#   --bench adds python3-torch for bench/;
#   --test adds what the operations tests drive (tests/ops/: a real Prometheus server and
#   headless Chromium via Selenium; deploy/test.sh and so CI pass it);
#   --image adds what the container image (deploy/Dockerfile) needs to run under the
#   Kubeflow MPI Operator: sshd and ssh, and ip (deploy/rank.sh with MIMIC_BIND_IFACE).
# python3-numpy is always installed: test_scale_model checks the cost model of
# bench/scale_model.py; python3-yaml: test_deploy parses the Kubernetes manifests (the
# product itself never runs Python).
set -euo pipefail
pkgs=(build-essential cmake pkg-config
      libopenblas-dev libopenblas0-openmp libopenmpi-dev openmpi-bin
      libzmq3-dev libmsgpack-dev libdnnl-dev libturbojpeg0-dev libjpeg62-turbo-dev
      libinih-dev zlib1g-dev libmicrohttpd-dev
      dataset-fashion-mnist clang libclang-rt-14-dev libomp-14-dev
      python3-numpy)
# jansson: the JSON parser of formats/json.c; python3-yaml: test_deploy's manifest checks
pkgs+=(libjansson-dev python3-yaml)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(python3-torch) ;;
    --test) pkgs+=(prometheus chromium chromium-driver python3-selenium) ;;
    --image) pkgs+=(openssh-server openssh-client iproute2) ;;
    *) echo "install-deps: unknown option $arg (--bench, --test, --image)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
