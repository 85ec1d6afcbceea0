# Storage of the platform: the DVC remote (datasets), the MLflow artifact store (checkpoints,
# registered models) and the bucket their S3 server access logs go to, with one KMS key for
# the data buckets. Access is granted per service account in modules/iam.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
}

data "aws_iam_policy_document" "key_policy" {
  # checkov:skip=CKV_AWS_109:KMS key policy, not an IAM policy: resource "*" is this key only; the account-root admin statement is the AWS default that lets IAM grant use of the key
  # checkov:skip=CKV_AWS_111:KMS key policy, not an IAM policy: resource "*" is this key only; writes are limited by principal: this account (log keys also the CloudWatch Logs service, for one log group)
  # checkov:skip=CKV_AWS_356:KMS key policy, not an IAM policy: resource "*" is the only valid resource in a key policy and means this key
  # Key policy (not an IAM policy): "*" resources mean this key only. Use of the key is
  # granted by IAM policies (modules/iam), which this statement makes possible.
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

resource "aws_kms_key" "data" {
  description             = "${var.name} DVC remote and MLflow artifacts"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key_policy.json

  tags = var.tags
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

module "dvc_bucket" {
  source = "../s3_bucket"

  bucket                             = "${var.name}-dvc-${local.account_id}"
  kms_key_arn                        = aws_kms_key.data.arn
  log_bucket                         = aws_s3_bucket.logs.id
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  force_destroy                      = var.force_destroy
  tags                               = var.tags
}

module "mlflow_bucket" {
  source = "../s3_bucket"

  bucket                             = "${var.name}-mlflow-artifacts-${local.account_id}"
  kms_key_arn                        = aws_kms_key.data.arn
  log_bucket                         = aws_s3_bucket.logs.id
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  force_destroy                      = var.force_destroy
  tags                               = var.tags
}

# --- Access-log bucket ---------------------------------------------------------------------

resource "aws_s3_bucket" "logs" {
  # checkov:skip=CKV_AWS_18:this is the access-log target; logging it to itself would log its own log writes forever
  # checkov:skip=CKV_AWS_145:S3 server access logging only delivers to SSE-S3 (AES256) target buckets, not SSE-KMS
  # checkov:skip=CKV_AWS_144:access logs are audit data of this region; replicating them is out of this platform's single-region scope
  bucket        = "${var.name}-s3-access-logs-${local.account_id}"
  force_destroy = var.force_destroy

  tags = var.tags
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    object_ownership = "BucketOwnerEnforced" # log delivery is granted by bucket policy, not ACL
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket = aws_s3_bucket.logs.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256" # the only default encryption server access logging delivers to
    }
  }
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.access_log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.logs]
}

resource "aws_s3_bucket_notification" "logs" {
  bucket      = aws_s3_bucket.logs.id
  eventbridge = true
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "S3ServerAccessLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    # Only this account's buckets may deliver logs here.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.logs.arn,
      "${aws_s3_bucket.logs.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket = aws_s3_bucket.logs.id
  policy = data.aws_iam_policy_document.logs.json

  depends_on = [aws_s3_bucket_public_access_block.logs]
}
