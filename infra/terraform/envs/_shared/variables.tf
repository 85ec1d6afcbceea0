# Inputs of an environment root (envs/<env>/ links this file). Values live in <env>.tfvars;
# every variable is typed, described and, where a wrong value would only fail at apply time
# (or worse, succeed), validated.

variable "environment" {
  type        = string
  description = "Environment this root deploys: dev or prod (names every resource: PROJECT-ENV)."

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be one of: dev, prod."
  }
}

variable "project" {
  type        = string
  description = "Project name, the first part of every resource name."
  default     = "amalia-vl"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.project))
    error_message = "project must be 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "AWS region of every resource, e.g. eu-north-1 (check GPU instance offerings there first)."

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-north-1."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Availability zones of the region to use (2 to 6); GPU pools may start nodes in any of them."

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6
    error_message = "availability_zones must list 2 to 6 zones (EKS needs subnets in at least two)."
  }

  validation {
    condition     = alltrue([for az in var.availability_zones : startswith(az, var.region)])
    error_message = "availability_zones must all be zones of var.region (e.g. eu-north-1a for eu-north-1)."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC, /16 to /19; must not overlap networks it will be peered with."

  validation {
    condition = (
      can(cidrhost(var.vpc_cidr, 0))
      && can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+/1[6-9]$", var.vpc_cidr))
      && try(cidrsubnet(var.vpc_cidr, 0, 0) == var.vpc_cidr, false)
    )
    error_message = "vpc_cidr must be a valid IPv4 network CIDR (no host bits set) with a prefix between /16 and /19 (public subnets get a /27 or more, load balancers need it), e.g. 10.40.0.0/16."
  }
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway shared by all AZs (dev: cheaper) instead of one per AZ (prod: survives an AZ outage)."
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the EKS control plane, e.g. 1.34."

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must be a Kubernetes minor version such as 1.34."
  }
}

variable "cluster_endpoint_public_access" {
  type        = bool
  description = "Expose the Kubernetes API publicly too (restricted to cluster_endpoint_public_access_cidrs). Off by default: reach it from the VPC (VPN, bastion, CI runners)."
  default     = false
}

variable "cluster_endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the public API endpoint when it is on; never 0.0.0.0/0."
  default     = []

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "cluster_endpoint_public_access_cidrs must be valid IPv4 CIDRs and must not include 0.0.0.0/0."
  }

  validation {
    condition     = !var.cluster_endpoint_public_access || length(var.cluster_endpoint_public_access_cidrs) > 0
    error_message = "cluster_endpoint_public_access = true needs cluster_endpoint_public_access_cidrs (the API would otherwise be open to the internet)."
  }
}

variable "cluster_admin_arns" {
  type        = list(string)
  description = "IAM roles/users given cluster-admin through EKS access entries (platform operators, CI deploy role)."
  default     = []

  validation {
    condition     = alltrue([for a in var.cluster_admin_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "cluster_admin_arns must be IAM role or user ARNs (arn:aws:iam::123456789012:role/NAME)."
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
  description = "CPU node group for the platform services (MLflow, Prefect server and worker, External Secrets, autoscaler)."
  nullable    = false

  validation {
    condition     = var.system_node_group.min_size >= 1 && var.system_node_group.min_size <= var.system_node_group.desired_size && var.system_node_group.desired_size <= var.system_node_group.max_size
    error_message = "system_node_group needs 1 <= min_size <= desired_size <= max_size (CoreDNS and the autoscaler must always have a node)."
  }
}

variable "gpu_pools" {
  type = map(object({
    instance_types = list(string)
    gpus_per_node  = number
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = optional(number, 0)
    max_size       = number
    desired_size   = optional(number, 0)
    disk_size_gib  = optional(number, 500)
  }))
  description = <<-EOT
    GPU node pools keyed by pool name, which becomes the node label amalia-vl/pool (the
    Prefect job template selects amalia-vl/pool=h100) and must name the GPU of the instance
    types: h100 = p5, h200 = p5e/p5en, b200 = p6-b200, a100 = p4d/p4de, l40s = g6e,
    l4 = g6, a10g = g5. Nodes are tainted nvidia.com/gpu=true:NoSchedule; min_size 0 lets a
    pool scale to zero; capacity_type is SPOT or ON_DEMAND.
  EOT
  nullable    = false

  validation {
    condition     = length(var.gpu_pools) > 0
    error_message = "gpu_pools must define at least one GPU pool."
  }

  validation {
    condition = alltrue(flatten([
      for name, p in var.gpu_pools : [
        for t in p.instance_types : can(regex("^(p6-b200|p5en|p5e|p5|p4de|p4d|g6e|g6|g5)\\.[0-9]*xlarge$", t))
      ]
    ]))
    error_message = "gpu_pools: every instance type must be of a known GPU family (p6-b200, p5, p5e, p5en, p4d, p4de, g6e, g6, g5), e.g. p5.48xlarge; not one of: ${join(", ", flatten([for name, p in var.gpu_pools : [for t in p.instance_types : "${name}=${t}" if !can(regex("^(p6-b200|p5en|p5e|p5|p4de|p4d|g6e|g6|g5)\\.[0-9]*xlarge$", t))]]))}."
  }

  validation {
    condition = alltrue(flatten([
      for name, p in var.gpu_pools : [
        for t in p.instance_types : contains(lookup({
          h100 = ["p5"], h200 = ["p5e", "p5en"], b200 = ["p6-b200"], a100 = ["p4d", "p4de"],
          l40s = ["g6e"], l4 = ["g6"], a10g = ["g5"],
        }, name, []), split(".", t)[0])
      ]
    ]))
    error_message = "gpu_pools: a pool's name is its amalia-vl/pool label and must name the GPU of its instance types (h100 = p5, h200 = p5e/p5en, b200 = p6-b200, a100 = p4d/p4de, l40s = g6e, l4 = g6, a10g = g5), so a Job selecting h100 never lands on another GPU."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : length(p.instance_types) >= 1])
    error_message = "gpu_pools: every pool needs at least one instance type."
  }

  validation {
    condition = alltrue([
      for name, p in var.gpu_pools : alltrue([
        for n in [p.min_size, p.max_size, p.desired_size] : n >= 0 && floor(n) == n
      ])
    ])
    error_message = "gpu_pools: min_size, max_size and desired_size must be whole numbers >= 0 (offending pools: ${join(", ", [for name, p in var.gpu_pools : name if !alltrue([for n in [p.min_size, p.max_size, p.desired_size] : n >= 0 && floor(n) == n])])})."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : p.min_size <= p.max_size])
    error_message = "gpu_pools: min_size must be <= max_size (offending pools: ${join(", ", [for name, p in var.gpu_pools : name if p.min_size > p.max_size])})."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : p.min_size <= p.desired_size && p.desired_size <= p.max_size])
    error_message = "gpu_pools: desired_size must be between min_size and max_size (offending pools: ${join(", ", [for name, p in var.gpu_pools : name if p.desired_size < p.min_size || p.desired_size > p.max_size])})."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : p.max_size >= 1])
    error_message = "gpu_pools: max_size must be >= 1 (EKS refuses a node group that can never have a node; remove the pool instead)."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : contains(["SPOT", "ON_DEMAND"], p.capacity_type)])
    error_message = "gpu_pools: capacity_type must be SPOT or ON_DEMAND (offending pools: ${join(", ", [for name, p in var.gpu_pools : name if !contains(["SPOT", "ON_DEMAND"], p.capacity_type)])})."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : contains([1, 2, 4, 8], p.gpus_per_node)])
    error_message = "gpu_pools: gpus_per_node must be 1, 2, 4 or 8 (the GPUs of one instance of the pool's type)."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : p.disk_size_gib >= 100 && p.disk_size_gib <= 16384])
    error_message = "gpu_pools: disk_size_gib must be between 100 and 16384 (CUDA images alone take tens of GiB)."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days CloudWatch keeps EKS control-plane, VPC flow and PostgreSQL logs."
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the retention periods CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days an overwritten or deleted DVC object / MLflow artifact version stays recoverable."

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number >= 1."
  }
}

variable "access_log_retention_days" {
  type        = number
  description = "Days the S3 server access logs of the data buckets are kept."

  validation {
    condition     = var.access_log_retention_days >= 1 && floor(var.access_log_retention_days) == var.access_log_retention_days
    error_message = "access_log_retention_days must be a whole number >= 1."
  }
}

variable "storage_force_destroy" {
  type        = bool
  description = "Let terraform destroy delete non-empty buckets. Only for throw-away environments; never in prod."
  default     = false

  validation {
    condition     = !var.storage_force_destroy || var.environment != "prod"
    error_message = "storage_force_destroy must be false in prod: the DVC remote and MLflow artifacts are the platform's data."
  }
}

variable "mlflow_artifact_prefix" {
  type        = string
  description = "Key prefix of the MLflow artifact bucket that training Jobs read and write directly (s3://BUCKET/PREFIX)."
  default     = "artifacts"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", var.mlflow_artifact_prefix))
    error_message = "mlflow_artifact_prefix must be a non-empty S3 key prefix without leading or trailing slash, e.g. artifacts."
  }
}

variable "db_engine_version" {
  type        = string
  description = "PostgreSQL version of the MLflow/Prefect database: major (17) or major.minor (17.4)."

  validation {
    condition     = can(regex("^1[4-8](\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be a PostgreSQL version 14 to 18, e.g. 17 or 17.4."
  }
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class, e.g. db.t4g.medium (dev) or db.r7g.large (prod)."

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must be an RDS instance class such as db.r7g.large."
  }
}

variable "db_allocated_storage_gib" {
  type        = number
  description = "Initial database storage in GiB (gp3, >= 20)."

  validation {
    condition     = var.db_allocated_storage_gib >= 20
    error_message = "db_allocated_storage_gib must be >= 20 (the gp3 minimum)."
  }
}

variable "db_max_allocated_storage_gib" {
  type        = number
  description = "Upper bound of database storage autoscaling in GiB (>= db_allocated_storage_gib)."

  validation {
    condition     = var.db_max_allocated_storage_gib >= var.db_allocated_storage_gib
    error_message = "db_max_allocated_storage_gib must be >= db_allocated_storage_gib."
  }
}

variable "db_multi_az" {
  type        = bool
  description = "Synchronous standby in a second AZ; must be true in prod."

  validation {
    condition     = var.db_multi_az || var.environment != "prod"
    error_message = "db_multi_az must be true in prod: the MLflow registry and Prefect state must survive an AZ failure."
  }
}

variable "db_backup_retention_days" {
  type        = number
  description = "Days of automated backups / point-in-time recovery (1-35)."

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 1 and 35 (0 would turn backups off)."
  }
}

variable "db_deletion_protection" {
  type        = bool
  description = "Refuse to delete the database; must be true in prod."

  validation {
    condition     = var.db_deletion_protection || var.environment != "prod"
    error_message = "db_deletion_protection must be true in prod."
  }
}

variable "extra_secret_arns" {
  type        = list(string)
  description = "Secrets Manager secrets besides the database's and modules/app_secrets' that External Secrets may read (encrypted with the aws/secretsmanager key)."
  default     = []

  validation {
    condition     = alltrue([for a in var.extra_secret_arns : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", a))])
    error_message = "extra_secret_arns must be Secrets Manager secret ARNs (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-xxxxxx), never a wildcard-only ARN."
  }
}

variable "tags" {
  type        = map(string)
  description = "Extra tags on every resource (merged into the provider's default_tags)."
  default     = {}
}
