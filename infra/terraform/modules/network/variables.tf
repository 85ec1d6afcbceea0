# Inputs of the network module: one VPC spread over availability zones.

variable "name" {
  type        = string
  description = "Name prefix of every resource, e.g. amalia-vl-prod."
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC; /16 to /19 (each private subnet gets an eighth of it)."

  validation {
    condition = (
      can(cidrhost(var.vpc_cidr, 0))
      && can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+/1[6-9]$", var.vpc_cidr))
      && try(cidrsubnet(var.vpc_cidr, 0, 0) == var.vpc_cidr, false)
    )
    error_message = "vpc_cidr must be a valid IPv4 network CIDR (no host bits set) with a prefix between /16 and /19 (public subnets get a /27 or more, load balancers need it), e.g. 10.40.0.0/16."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Availability zones to spread the subnets over (2 to 6; EKS needs at least 2)."

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6
    error_message = "availability_zones must list 2 to 6 zones (EKS needs subnets in at least two)."
  }
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway for all AZs (cheaper, dev) instead of one per AZ (zone-failure tolerant, prod)."
}

variable "cluster_name" {
  type        = string
  description = "EKS cluster name, used in the subnet tags the AWS load balancer controller discovers."
}

variable "flow_log_retention_days" {
  type        = number
  description = "Days the VPC flow logs are kept in CloudWatch Logs."

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be one of the retention periods CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
