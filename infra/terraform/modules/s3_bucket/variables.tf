# Inputs of one hardened, private S3 bucket.

variable "bucket" {
  type        = string
  description = "Globally unique bucket name."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket)) && !can(regex("\\.\\.", var.bucket))
    error_message = "bucket must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots or dashes."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key for default SSE-KMS encryption."
}

variable "log_bucket" {
  type        = string
  description = "Bucket receiving the S3 server access logs of this bucket."
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a replaced or deleted object version is kept before it expires (undo window)."

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number >= 1."
  }
}

variable "abort_incomplete_multipart_days" {
  type        = number
  description = "Days after which unfinished multipart uploads (crashed checkpoint or DVC pushes) are aborted."
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days must be >= 1."
  }
}

variable "force_destroy" {
  type        = bool
  description = "Let terraform destroy delete a non-empty bucket (never for data that cannot be recreated)."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
