# IAM roles for service accounts (IRSA). Each role trusts the cluster's OIDC provider for one
# namespace/service account only, and carries one inline policy with the least it needs:
#   training          read the DVC remote; read/write MLflow artifacts under one prefix
#   mlflow            read/write/delete the MLflow artifact bucket (artifact proxy, GC)
#   prefect_worker    describe the cluster only: it starts Jobs through Kubernetes RBAC, no S3
#   external_secrets  read the named Secrets Manager secrets, nothing else
#   autoscaler        scale this cluster's node groups (GPU pools scale to zero)
# The Kubernetes layer puts each ARN in its service account's eks.amazonaws.com/role-arn.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  region      = data.aws_region.current.region
  oidc_issuer = trimprefix(var.oidc_issuer_url, "https://")

  policies = {
    training         = data.aws_iam_policy_document.training.json
    mlflow           = data.aws_iam_policy_document.mlflow.json
    prefect_worker   = data.aws_iam_policy_document.prefect_worker.json
    external_secrets = data.aws_iam_policy_document.external_secrets.json
    autoscaler       = data.aws_iam_policy_document.autoscaler.json
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = var.service_accounts

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${each.value.namespace}:${each.value.name}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = var.service_accounts

  name                 = "${var.name}-${replace(each.key, "_", "-")}"
  description          = "IRSA role of ${each.value.namespace}/${each.value.name}"
  assume_role_policy   = data.aws_iam_policy_document.assume[each.key].json
  max_session_duration = 3600

  tags = merge(var.tags, { "amalia-vl/service-account" = "${each.value.namespace}.${each.value.name}" })
}

resource "aws_iam_role_policy" "this" {
  for_each = var.service_accounts

  name   = replace(each.key, "_", "-")
  role   = aws_iam_role.this[each.key].id
  policy = local.policies[each.key]
}

# --- Training Jobs -------------------------------------------------------------------------

data "aws_iam_policy_document" "training" {
  statement {
    sid       = "ListDvcRemote"
    actions   = ["s3:ListBucket"]
    resources = [var.dvc_bucket_arn]
  }

  statement {
    sid       = "ReadDvcRemote"
    actions   = ["s3:GetObject"]
    resources = ["${var.dvc_bucket_arn}/*"]
  }

  statement {
    sid       = "ListMlflowArtifactPrefix"
    actions   = ["s3:ListBucket"]
    resources = [var.mlflow_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.mlflow_artifact_prefix, "${var.mlflow_artifact_prefix}/*"]
    }
  }

  statement {
    sid = "ReadWriteMlflowArtifactPrefix"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${var.mlflow_bucket_arn}/${var.mlflow_artifact_prefix}/*"]
  }

  statement {
    sid       = "UseDataKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.data_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

# --- MLflow server -------------------------------------------------------------------------

data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListArtifactBucket"
    actions   = ["s3:ListBucket"]
    resources = [var.mlflow_bucket_arn]
  }

  statement {
    sid = "ReadWriteArtifacts"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${var.mlflow_bucket_arn}/*"]
  }

  statement {
    sid       = "UseDataKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.data_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

# --- Prefect worker ------------------------------------------------------------------------

# The worker creates Jobs through the Kubernetes API (RBAC in infra/k8s), so on AWS it needs
# no more than reading the cluster's endpoint and CA, and nothing on S3.
data "aws_iam_policy_document" "prefect_worker" {
  statement {
    sid       = "DescribeOwnCluster"
    actions   = ["eks:DescribeCluster"]
    resources = [var.cluster_arn]
  }
}

# --- External Secrets ----------------------------------------------------------------------

data "aws_iam_policy_document" "external_secrets" {
  statement {
    sid       = "ReadNamedSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = var.secret_arns
  }

  statement {
    sid       = "DecryptSecretsThroughSecretsManager"
    actions   = ["kms:Decrypt"]
    resources = var.secret_kms_key_arns

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

# --- Cluster autoscaler --------------------------------------------------------------------

data "aws_iam_policy_document" "autoscaler" {
  # Describe calls have no resource-level permissions in IAM: "*" is the only valid resource.
  statement {
    sid = "DiscoverNodeGroups"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "DescribeOwnNodeGroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${local.region}:${local.account_id}:nodegroup/${var.cluster_name}/*/*"]
  }

  # Only groups EKS tagged as owned by this cluster.
  statement {
    sid       = "ScaleOwnNodeGroups"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = ["arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.cluster_name}"
      values   = ["owned"]
    }
  }
}
