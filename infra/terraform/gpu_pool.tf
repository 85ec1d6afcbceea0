# GPU node pool for training Jobs (EKS managed node group). Nodes carry the label and taint
# that infra/prefect/gpu-job-template.json selects and tolerates.
variable "cluster_name" { type = string }
variable "subnet_ids" { type = list(string) }
variable "node_role_arn" { type = string }
variable "instance_type" {
  type    = string
  default = "p5.48xlarge" # 8x H100
}
variable "max_nodes" {
  type    = number
  default = 4
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = var.cluster_name
  node_group_name = "amalia-vl-h100"
  node_role_arn   = var.node_role_arn
  subnet_ids      = var.subnet_ids
  instance_types  = [var.instance_type]
  ami_type        = "AL2023_x86_64_NVIDIA"
  capacity_type   = "ON_DEMAND"
  scaling_config {
    desired_size = 0
    min_size     = 0
    max_size     = var.max_nodes
  }
  labels = { "amalia-vl/pool" = "h100" }
  taint {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }
}
