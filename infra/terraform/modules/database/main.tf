# PostgreSQL (RDS) for the MLflow tracking/registry store and the Prefect server: private
# subnets only, reachable on 5432 from the EKS cluster security group and nothing else,
# encrypted with a customer-managed key, TLS enforced, master password generated and rotated
# by RDS in Secrets Manager (never in Terraform state), IAM database auth on, backups, logs,
# Performance Insights and enhanced monitoring.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id     = data.aws_caller_identity.current.account_id
  partition      = data.aws_partition.current.partition
  region         = data.aws_region.current.region
  identifier     = "${var.name}-postgres"
  engine_major   = split(".", var.engine_version)[0]
  log_group_name = "/aws/rds/instance/${local.identifier}/postgresql"
}

# --- KMS key: storage, snapshots, Performance Insights, master-user secret, logs -----------

data "aws_iam_policy_document" "key_policy" {
  # checkov:skip=CKV_AWS_109:KMS key policy, not an IAM policy: resource "*" is this key only; the account-root admin statement is the AWS default that lets IAM grant use of the key
  # checkov:skip=CKV_AWS_111:KMS key policy, not an IAM policy: resource "*" is this key only; writes are limited by principal: this account (log keys also the CloudWatch Logs service, for one log group)
  # checkov:skip=CKV_AWS_356:KMS key policy, not an IAM policy: resource "*" is the only valid resource in a key policy and means this key
  # Key policy (not an IAM policy): "*" resources mean this key only.
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsUsesKeyForPostgresLogsOnly"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"]
    }
  }
}

resource "aws_kms_key" "db" {
  description             = "${var.name} PostgreSQL storage, backups and master-user secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key_policy.json

  tags = var.tags
}

resource "aws_kms_alias" "db" {
  name          = "alias/${var.name}-postgres"
  target_key_id = aws_kms_key.db.key_id
}

# --- Network access ------------------------------------------------------------------------

resource "aws_db_subnet_group" "this" {
  name        = local.identifier
  description = "Private subnets of ${local.identifier}"
  subnet_ids  = var.subnet_ids

  tags = var.tags
}

# No egress rules: the database never opens connections.
resource "aws_security_group" "this" {
  name        = "${local.identifier}-sg"
  description = "PostgreSQL of ${var.name}: 5432 from the EKS cluster only"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${local.identifier}-sg" })
}

# count, not for_each: the cluster security group ID is only known after the cluster exists,
# and for_each keys must be known at plan time.
resource "aws_vpc_security_group_ingress_rule" "from_cluster" {
  count = length(var.allowed_security_group_ids)

  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from EKS nodes and pods (MLflow, Prefect)"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = var.allowed_security_group_ids[count.index]
}

# --- Engine settings -----------------------------------------------------------------------

resource "aws_db_parameter_group" "this" {
  name_prefix = "${local.identifier}-"
  family      = "postgres${local.engine_major}"
  description = "TLS-only PostgreSQL with DDL and slow-query logging"

  parameter {
    name  = "rds.force_ssl"
    value = "1" # clients without TLS are refused
  }

  # DDL only: schema migrations of MLflow/Prefect are worth an audit trail, every query is not.
  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000" # ms: log slow queries
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "postgresql" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.db.arn

  tags = var.tags
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  name               = "${local.identifier}-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

# --- Instance ------------------------------------------------------------------------------

resource "aws_db_instance" "this" {
  # checkov:skip=CKV_AWS_157:multi_az is a variable that prod must set true (validated in variables.tf); dev runs single-AZ for cost
  # checkov:skip=CKV_AWS_293:deletion_protection is a variable that prod must set true (validated in variables.tf); dev can be torn down
  identifier = local.identifier

  engine                      = "postgres"
  engine_version              = var.engine_version
  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false
  instance_class              = var.instance_class

  storage_type          = "gp3"
  allocated_storage     = var.allocated_storage_gib
  max_allocated_storage = var.max_allocated_storage_gib
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.db.arn

  db_name  = var.database_name
  username = var.master_username
  # RDS generates the password, keeps it in Secrets Manager (encrypted with our key) and
  # rotates it; External Secrets copies it into the cluster (modules/iam).
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = aws_kms_key.db.arn
  iam_database_authentication_enabled = true

  multi_az               = var.multi_az
  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.identifier}-final"

  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.db.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.monitoring.arn

  tags = var.tags

  depends_on = [aws_cloudwatch_log_group.postgresql, aws_iam_role_policy_attachment.monitoring]
}
