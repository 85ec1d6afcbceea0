"""Turn `terraform output -json` of an infra/terraform/envs/<env> root into the
terraform-outputs.env of infra/k8s/overlays/<env>: the keys the Kubernetes layer reads, one
`key=value` a line (kustomize's env-file format), in a fixed order so that a re-run diffs
cleanly.

    terraform -chdir=infra/terraform/envs/prod output -json \\
      | python3 infra/k8s/terraform_outputs_env.py > infra/k8s/overlays/prod/terraform-outputs.env

`--vpc-cidr` overrides the root's `vpc_cidr` output. A missing or non-scalar output is an
error, not an empty value: an empty role ARN would render a service account without IRSA and
fail only at run time.
"""

from __future__ import annotations

import argparse
import json
import sys

# Kept in step with components/terraform-outputs and the configMapKeyRefs in base/
# (tests/infra/test_k8s.py checks every overlay's file has exactly these).
KEYS = (
    "region",
    "cluster_name",
    "vpc_cidr",
    "db_address",
    "db_port",
    "db_name",
    "db_master_user_secret_arn",
    "mlflow_artifacts_destination",
    "dvc_remote_url",
    "mlflow_role_arn",
    "training_role_arn",
    "prefect_worker_role_arn",
    "external_secrets_role_arn",
)


def to_env(outputs: dict, vpc_cidr: str | None = None, source: str = "terraform") -> str:
    """The env file for `outputs` (the parsed `terraform output -json`)."""
    values = {k: v.get("value") for k, v in outputs.items()}
    if vpc_cidr:
        values["vpc_cidr"] = vpc_cidr
    missing = [k for k in KEYS if values.get(k) in (None, "")]
    if missing:
        raise SystemExit(f"terraform outputs missing: {', '.join(missing)}")
    bad = [k for k in KEYS if not isinstance(values[k], (str, int))]
    if bad:
        raise SystemExit(f"terraform outputs not a string or number: {', '.join(bad)}")
    lines = [f"# written by infra/k8s/terraform_outputs_env.py from {source}; do not edit"]
    lines += [f"{k}={values[k]}" for k in KEYS]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vpc-cidr", help="override the vpc_cidr output")
    args = parser.parse_args(argv)
    sys.stdout.write(to_env(json.load(sys.stdin), args.vpc_cidr, "`terraform output -json`"))


if __name__ == "__main__":
    main()
