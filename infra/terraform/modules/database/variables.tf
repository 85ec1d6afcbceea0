# Inputs of the database module: one PostgreSQL instance holding the MLflow and Prefect databases.

variable "name" {
  type        = string
  description = "Identifier prefix of the instance and its companions, e.g. amalia-vl-prod."
}

variable "environment" {
  type        = string
  description = "dev or prod; prod refuses settings that can lose data (no deletion protection, single AZ)."

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be one of: dev, prod."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the instance's security group."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets of the DB subnet group (at least two AZs, an RDS requirement)."

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two private subnets in different AZs (RDS requirement)."
  }
}

variable "allowed_security_group_ids" {
  type        = list(string)
  description = "Security groups allowed to connect on 5432: the EKS cluster security group (nodes and pods)."

  validation {
    condition     = length(var.allowed_security_group_ids) >= 1
    error_message = "allowed_security_group_ids must name at least one security group (the cluster's); nothing else may reach the database."
  }
}

variable "engine_version" {
  type        = string
  description = "PostgreSQL version: a major (17, minor upgrades automatic) or major.minor (17.4)."

  validation {
    condition     = can(regex("^1[4-8](\\.[0-9]+)?$", var.engine_version))
    error_message = "engine_version must be a PostgreSQL version 14 to 18, e.g. 17 or 17.4."
  }
}

variable "instance_class" {
  type        = string
  description = "RDS instance class, e.g. db.t4g.medium (dev) or db.r7g.large (prod)."

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.instance_class))
    error_message = "instance_class must be an RDS instance class such as db.r7g.large."
  }
}

variable "allocated_storage_gib" {
  type        = number
  description = "Initial storage in GiB (gp3)."

  validation {
    condition     = var.allocated_storage_gib >= 20
    error_message = "allocated_storage_gib must be >= 20 (the gp3 minimum)."
  }
}

variable "max_allocated_storage_gib" {
  type        = number
  description = "Upper bound of storage autoscaling in GiB (>= allocated_storage_gib)."

  validation {
    condition     = var.max_allocated_storage_gib >= var.allocated_storage_gib
    error_message = "max_allocated_storage_gib must be >= allocated_storage_gib."
  }
}

variable "multi_az" {
  type        = bool
  description = "Synchronous standby in a second AZ (required in prod)."

  validation {
    condition     = var.multi_az || var.environment != "prod"
    error_message = "multi_az must be true in prod: the MLflow registry and Prefect state must survive an AZ failure."
  }
}

variable "backup_retention_days" {
  type        = number
  description = "Days of automated backups and point-in-time recovery (1-35)."

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35 (0 would turn backups off)."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the instance (required in prod)."

  validation {
    condition     = var.deletion_protection || var.environment != "prod"
    error_message = "deletion_protection must be true in prod."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days the PostgreSQL logs exported to CloudWatch are kept."

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the retention periods CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "database_name" {
  type        = string
  description = "Database created with the instance (MLflow's); the Prefect database is created next to it by the Kubernetes layer."
  default     = "mlflow"
}

variable "master_username" {
  type        = string
  description = "Master user; its password is generated, stored and rotated by RDS in Secrets Manager."
  default     = "amalia_admin"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.master_username)) && !contains(["admin", "postgres", "rdsadmin"], var.master_username)
    error_message = "master_username must be a lowercase PostgreSQL identifier and not a reserved name (admin, postgres, rdsadmin)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
