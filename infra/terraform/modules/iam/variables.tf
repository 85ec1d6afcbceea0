# Inputs of the IAM module: IRSA roles, one per Kubernetes service account, each with only
# the AWS rights that service account's pods use.

variable "name" {
  type        = string
  description = "Name prefix of the roles, e.g. amalia-vl-prod."
}

variable "cluster_name" {
  type        = string
  description = "EKS cluster name (scopes the autoscaler's and the Prefect worker's rights)."
}

variable "cluster_arn" {
  type        = string
  description = "ARN of the EKS cluster the Prefect worker may describe."
}

variable "oidc_provider_arn" {
  type        = string
  description = "ARN of the cluster's IAM OIDC provider (modules/cluster output oidc_provider_arn)."
}

variable "oidc_issuer_url" {
  type        = string
  description = "OIDC issuer URL of the cluster, https://oidc.eks.REGION.amazonaws.com/id/ID."
}

variable "service_accounts" {
  type = object({
    training         = optional(object({ namespace = string, name = string }), { namespace = "amalia-vl", name = "amalia-vl-worker" })
    mlflow           = optional(object({ namespace = string, name = string }), { namespace = "amalia-vl", name = "mlflow" })
    prefect_worker   = optional(object({ namespace = string, name = string }), { namespace = "amalia-vl", name = "prefect-worker" })
    external_secrets = optional(object({ namespace = string, name = string }), { namespace = "external-secrets", name = "external-secrets" })
    autoscaler       = optional(object({ namespace = string, name = string }), { namespace = "kube-system", name = "cluster-autoscaler" })
  })
  description = <<-EOT
    Namespace and name of the Kubernetes service account each role is for (its IRSA trust
    allows that one service account only). training is the service account of the training
    Jobs (infra/k8s/base/training.yaml, infra/prefect/gpu-job-template.json: amalia-vl-worker).
  EOT
  default     = {}
  nullable    = false

  validation {
    condition = alltrue([
      for sa in values(var.service_accounts) :
      can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", sa.namespace)) && can(regex("^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", sa.name))
    ])
    error_message = "service_accounts: namespaces and names must be Kubernetes DNS names (lowercase letters, digits, dashes)."
  }
}

variable "dvc_bucket_arn" {
  type        = string
  description = "ARN of the DVC remote bucket (training Jobs read it)."
}

variable "mlflow_bucket_arn" {
  type        = string
  description = "ARN of the MLflow artifact bucket (the MLflow server reads and writes it all)."
}

variable "mlflow_artifact_prefix" {
  type        = string
  description = "Key prefix under which training Jobs may read and write MLflow artifacts directly, without slashes at either end."

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.mlflow_artifact_prefix))
    error_message = "mlflow_artifact_prefix must be a non-empty S3 key prefix without leading or trailing slash, e.g. artifacts."
  }
}

variable "data_kms_key_arn" {
  type        = string
  description = "KMS key of the DVC and MLflow buckets."
}

variable "secret_arns" {
  type        = list(string)
  description = "Secrets Manager secrets External Secrets may read (and nothing else): the RDS master-user secret and the app_secrets."

  validation {
    condition     = length(var.secret_arns) >= 1
    error_message = "secret_arns must name at least one secret: External Secrets gets read access to exactly these."
  }
}

variable "secret_kms_key_arns" {
  type        = list(string)
  description = "KMS keys those secrets are encrypted with (decrypt through Secrets Manager only)."

  validation {
    condition     = length(var.secret_kms_key_arns) >= 1
    error_message = "secret_kms_key_arns must name the key(s) of secret_arns."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
