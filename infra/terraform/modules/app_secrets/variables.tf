# Inputs of the app_secrets module: Secrets Manager secrets whose values operators set by hand.

variable "name" {
  type        = string
  description = "Name prefix of the secrets, the cluster name (e.g. amalia-vl-prod): secrets are PREFIX/NAME."
}

variable "secrets" {
  type        = map(string)
  description = <<-EOT
    Secrets to create, name (under the prefix) => what it holds. The infra/k8s ExternalSecrets
    read <cluster_name>/mlflow/server and <cluster_name>/mlflow/training.
  EOT
  default = {
    "mlflow/server"   = "MLflow server bootstrap admin and Flask secret key: JSON {admin_username, admin_password, flask_secret_key}"
    "mlflow/training" = "MLflow user the training pods log as: JSON {username, password}"
  }
  nullable = false

  validation {
    condition     = alltrue([for k in keys(var.secrets) : can(regex("^[A-Za-z0-9_+=.@-]+(/[A-Za-z0-9_+=.@-]+)*$", k))])
    error_message = "secrets: names must be Secrets Manager name segments (letters, digits, _+=.@-) separated by /."
  }
}

variable "recovery_window_days" {
  type        = number
  description = "Days a deleted secret can still be restored (7-30)."
  default     = 30

  validation {
    condition     = var.recovery_window_days >= 7 && var.recovery_window_days <= 30
    error_message = "recovery_window_days must be between 7 and 30."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
