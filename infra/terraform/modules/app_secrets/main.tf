# Application secrets in Secrets Manager that the Kubernetes layer's ExternalSecrets read
# (MLflow server admin and Flask key, the MLflow user of the training pods). Terraform creates
# the empty, KMS-encrypted secrets, so their exact ARNs can be granted to External Secrets
# (modules/iam); operators put the values (README.md), so they never pass through Terraform
# state.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
}

data "aws_iam_policy_document" "key_policy" {
  # checkov:skip=CKV_AWS_109:KMS key policy, not an IAM policy: resource "*" is this key only; the account-root admin statement is the AWS default that lets IAM grant use of the key
  # checkov:skip=CKV_AWS_111:KMS key policy, not an IAM policy: resource "*" is this key only; writes are limited by principal: this account
  # checkov:skip=CKV_AWS_356:KMS key policy, not an IAM policy: resource "*" is the only valid resource in a key policy and means this key
  # Key policy (not an IAM policy): "*" resources mean this key only. Use of the key is
  # granted by IAM policies (External Secrets: decrypt through Secrets Manager only).
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "secrets" {
  description             = "${var.name} application secrets"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key_policy.json

  tags = var.tags
}

resource "aws_kms_alias" "secrets" {
  name          = "alias/${var.name}-app-secrets"
  target_key_id = aws_kms_key.secrets.key_id
}

resource "aws_secretsmanager_secret" "this" {
  # checkov:skip=CKV2_AWS_57:values are MLflow credentials set by operators; rotating them means changing the MLflow user too, for which no rotation Lambda exists (the RDS master secret is rotated by RDS)
  for_each = var.secrets

  name                    = "${var.name}/${each.key}"
  description             = each.value
  kms_key_id              = aws_kms_key.secrets.arn
  recovery_window_in_days = var.recovery_window_days

  tags = var.tags
}
