# Inputs of the GPU node pools: one EKS managed node group per entry of `pools`.

variable "cluster_name" {
  type        = string
  description = "EKS cluster the node groups join."
}

variable "node_role_arn" {
  type        = string
  description = "IAM role of the nodes (modules/cluster output node_role_arn)."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets the GPU nodes may start in (every AZ given widens the search for GPU capacity)."

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "subnet_ids must list at least one private subnet."
  }
}

variable "pools" {
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
    GPU node pools keyed by pool name. The name becomes the node label amalia-vl/pool
    (infra/prefect/gpu-job-template.json selects amalia-vl/pool=h100) and must name the GPU of
    the instance types: h100 = p5, h200 = p5e/p5en, b200 = p6-b200, a100 = p4d/p4de,
    l40s = g6e, l4 = g6, a10g = g5. Every node is tainted nvidia.com/gpu=true:NoSchedule.
    min_size 0 lets a pool scale to zero; capacity_type is SPOT or ON_DEMAND.
  EOT
  nullable    = false

  validation {
    condition     = length(var.pools) > 0
    error_message = "pools must define at least one GPU pool."
  }

  validation {
    condition = alltrue(flatten([
      for name, p in var.pools : [
        for t in p.instance_types : can(regex("^(p6-b200|p5en|p5e|p5|p4de|p4d|g6e|g6|g5)\\.[0-9]*xlarge$", t))
      ]
    ]))
    error_message = "pools: every instance type must be of a known GPU family (p6-b200, p5, p5e, p5en, p4d, p4de, g6e, g6, g5), e.g. p5.48xlarge; not one of: ${join(", ", flatten([for name, p in var.pools : [for t in p.instance_types : "${name}=${t}" if !can(regex("^(p6-b200|p5en|p5e|p5|p4de|p4d|g6e|g6|g5)\\.[0-9]*xlarge$", t))]]))}."
  }

  validation {
    condition = alltrue(flatten([
      for name, p in var.pools : [
        for t in p.instance_types : contains(lookup({
          h100 = ["p5"], h200 = ["p5e", "p5en"], b200 = ["p6-b200"], a100 = ["p4d", "p4de"],
          l40s = ["g6e"], l4 = ["g6"], a10g = ["g5"],
        }, name, []), split(".", t)[0])
      ]
    ]))
    error_message = "pools: a pool's name is its amalia-vl/pool label and must name the GPU of its instance types (h100 = p5, h200 = p5e/p5en, b200 = p6-b200, a100 = p4d/p4de, l40s = g6e, l4 = g6, a10g = g5), so a Job selecting h100 never lands on another GPU."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : length(p.instance_types) >= 1])
    error_message = "pools: every pool needs at least one instance type."
  }

  validation {
    condition = alltrue([
      for name, p in var.pools : alltrue([
        for n in [p.min_size, p.max_size, p.desired_size] : n >= 0 && floor(n) == n
      ])
    ])
    error_message = "pools: min_size, max_size and desired_size must be whole numbers >= 0 (offending pools: ${join(", ", [for name, p in var.pools : name if !alltrue([for n in [p.min_size, p.max_size, p.desired_size] : n >= 0 && floor(n) == n])])})."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : p.min_size <= p.max_size])
    error_message = "pools: min_size must be <= max_size (offending pools: ${join(", ", [for name, p in var.pools : name if p.min_size > p.max_size])})."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : p.min_size <= p.desired_size && p.desired_size <= p.max_size])
    error_message = "pools: desired_size must be between min_size and max_size (offending pools: ${join(", ", [for name, p in var.pools : name if p.desired_size < p.min_size || p.desired_size > p.max_size])})."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : p.max_size >= 1])
    error_message = "pools: max_size must be >= 1 (EKS refuses a node group that can never have a node; remove the pool instead)."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : contains(["SPOT", "ON_DEMAND"], p.capacity_type)])
    error_message = "pools: capacity_type must be SPOT or ON_DEMAND (offending pools: ${join(", ", [for name, p in var.pools : name if !contains(["SPOT", "ON_DEMAND"], p.capacity_type)])})."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : contains([1, 2, 4, 8], p.gpus_per_node)])
    error_message = "pools: gpus_per_node must be 1, 2, 4 or 8 (the GPUs of one instance of the pool's type)."
  }

  validation {
    condition     = alltrue([for name, p in var.pools : p.disk_size_gib >= 100 && p.disk_size_gib <= 16384])
    error_message = "pools: disk_size_gib must be between 100 and 16384 (CUDA images alone take tens of GiB)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (on top of the provider's default_tags)."
  default     = {}
}
