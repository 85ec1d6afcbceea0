# Inputs of the cluster module: the EKS control plane, its CPU system node group and the
# IAM OIDC provider that IRSA roles trust.

variable "name" {
  type        = string
  description = "EKS cluster name, e.g. amalia-vl-prod."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}$", var.name))
    error_message = "name must be 2-39 lowercase letters, digits or dashes, starting with a letter (node group and role names are derived from it)."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the control plane, e.g. 1.34."

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must be a Kubernetes minor version such as 1.34."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets (at least two AZs) for the control-plane ENIs and the system nodes."

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two subnets in different AZs (EKS requirement)."
  }
}

variable "endpoint_public_access" {
  type        = bool
  description = "Also expose the Kubernetes API on a public endpoint (the private endpoint is always on)."
  default     = false
}

variable "endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the public API endpoint when it is enabled; never 0.0.0.0/0."
  default     = []

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "endpoint_public_access_cidrs must be valid IPv4 CIDRs and must not include 0.0.0.0/0."
  }

  validation {
    condition     = !var.endpoint_public_access || length(var.endpoint_public_access_cidrs) > 0
    error_message = "endpoint_public_access = true needs endpoint_public_access_cidrs (the API would otherwise be open to the internet)."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days the control-plane logs are kept in CloudWatch Logs."

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the retention periods CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "system_node_group" {
  type = object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    disk_size_gib  = optional(number, 100)
  })
  description = "CPU node group for platform services (MLflow, Prefect, External Secrets, cluster autoscaler, CoreDNS)."
  nullable    = false

  validation {
    condition     = var.system_node_group.min_size >= 1 && var.system_node_group.min_size <= var.system_node_group.desired_size && var.system_node_group.desired_size <= var.system_node_group.max_size
    error_message = "system_node_group needs 1 <= min_size <= desired_size <= max_size (CoreDNS and the autoscaler must always have a node)."
  }
}

variable "cluster_admin_arns" {
  type        = list(string)
  description = "IAM role/user ARNs given cluster-admin through EKS access entries (platform operators, CI)."
  default     = []

  validation {
    condition     = alltrue([for a in var.cluster_admin_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "cluster_admin_arns must be IAM role or user ARNs (arn:aws:iam::123456789012:role/NAME)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
