# Terraform and provider versions of the environment roots (envs/<env>/ link this file). The lock file (.terraform.lock.hcl) that
# `terraform init` writes next to this file pins the exact provider build: commit it.
terraform {
  required_version = ">= 1.10, < 2.0" # 1.10: S3 backend locking without DynamoDB (use_lockfile)

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}
