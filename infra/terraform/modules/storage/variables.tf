# Inputs of the storage module: the DVC remote, the MLflow artifact store and their access-log bucket.

variable "name" {
  type        = string
  description = "Name prefix of the buckets, e.g. amalia-vl-prod (the account ID is appended for global uniqueness)."
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a replaced or deleted DVC object or MLflow artifact version stays recoverable."

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be >= 1."
  }
}

variable "access_log_retention_days" {
  type        = number
  description = "Days the S3 server access logs are kept."

  validation {
    condition     = var.access_log_retention_days >= 1
    error_message = "access_log_retention_days must be >= 1."
  }
}

variable "force_destroy" {
  type        = bool
  description = "Let terraform destroy delete non-empty buckets (throw-away environments only)."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
