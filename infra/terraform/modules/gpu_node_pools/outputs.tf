# What the Kubernetes layer needs to schedule onto the GPU pools.

output "node_group_names" {
  description = "EKS node group name of each pool."
  value       = { for name, g in aws_eks_node_group.gpu : name => g.node_group_name }
}

output "autoscaling_group_names" {
  description = "Auto Scaling group of each pool (what the cluster autoscaler scales)."
  value       = { for name, g in aws_eks_node_group.gpu : name => g.resources[0].autoscaling_groups[0].name }
}

output "node_selectors" {
  description = "nodeSelector of each pool, e.g. {\"amalia-vl/pool\" = \"h100\"}."
  value       = { for name, g in aws_eks_node_group.gpu : name => g.labels }
}

output "gpu_taint" {
  description = "Taint on every GPU node; Jobs tolerate it with operator Exists."
  value       = local.gpu_taint
}
