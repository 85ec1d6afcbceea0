# Remote state of the prod root in S3, locked with an S3 lock object (use_lockfile, Terraform
# 1.10+; no DynamoDB table). Partial configuration: the state bucket and its region are given
# at init time, so the same code works in any account and `terraform init -backend=false`
# works offline (see ../../README.md):
#   terraform init -backend-config=prod.s3.tfbackend
terraform {
  backend "s3" {
    key          = "amalia-vl/prod/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }
}
