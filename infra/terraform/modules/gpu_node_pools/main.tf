# GPU node pools for training Jobs: one EKS managed node group per pool, each labelled
# amalia-vl/pool=<name> and tainted nvidia.com/gpu=true:NoSchedule, which is exactly what
# infra/prefect/gpu-job-template.json selects (nodeSelector) and tolerates (Exists). Pools
# scale from zero: the cluster autoscaler learns a pool's labels, taint and GPU count from the
# node-template tags on its Auto Scaling group, since there is no node to look at.

locals {
  gpu_taint = {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  # Cluster-autoscaler node templates, one set per pool. EKS already puts the auto-discovery
  # tags (k8s.io/cluster-autoscaler/enabled, .../<cluster>) on the group.
  autoscaler_tags = merge([
    for name, p in var.pools : {
      for key, value in {
        "k8s.io/cluster-autoscaler/node-template/label/amalia-vl/pool"                 = name
        "k8s.io/cluster-autoscaler/node-template/taint/${local.gpu_taint.key}"         = "${local.gpu_taint.value}:NoSchedule"
        "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"             = tostring(p.gpus_per_node)
        "k8s.io/cluster-autoscaler/node-template/label/eks.amazonaws.com/capacityType" = p.capacity_type
      } : "${name}|${key}" => { pool = name, key = key, value = value }
    }
  ]...)
}

resource "aws_launch_template" "gpu" {
  for_each = var.pools

  name_prefix = "${var.cluster_name}-gpu-${each.key}-"
  description = "GPU pool ${each.key} of ${var.cluster_name}: IMDSv2 only, encrypted gp3 root volume."

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1 # pods get AWS rights from IRSA, never from the node role
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      # CUDA images and checkpoints being written out; datasets stream from S3.
      volume_size           = each.value.disk_size_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.cluster_name}-gpu-${each.key}" })
  }

  tags = var.tags
}

resource "aws_eks_node_group" "gpu" {
  for_each = var.pools

  cluster_name = var.cluster_name
  # A prefix, so changing instance types (which replaces the group) can create the new group
  # before the old one goes.
  node_group_name_prefix = "gpu-${each.key}-"
  node_role_arn          = var.node_role_arn
  subnet_ids             = var.subnet_ids
  instance_types         = each.value.instance_types
  ami_type               = "AL2023_x86_64_NVIDIA" # NVIDIA driver and container toolkit baked in
  capacity_type          = each.value.capacity_type

  scaling_config {
    min_size     = each.value.min_size
    max_size     = each.value.max_size
    desired_size = each.value.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  launch_template {
    id      = aws_launch_template.gpu[each.key].id
    version = aws_launch_template.gpu[each.key].latest_version
  }

  labels = {
    "amalia-vl/pool" = each.key
  }

  # Only pods that tolerate the GPU taint (training Jobs, the NVIDIA device plugin) land here.
  taint {
    key    = local.gpu_taint.key
    value  = local.gpu_taint.value
    effect = local.gpu_taint.effect
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
    # The cluster autoscaler owns the current size (0 when no training Job is pending).
    ignore_changes = [scaling_config[0].desired_size]
  }
}

resource "aws_autoscaling_group_tag" "autoscaler" {
  for_each = local.autoscaler_tags

  autoscaling_group_name = aws_eks_node_group.gpu[each.value.pool].resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.value.key
    value               = each.value.value
    propagate_at_launch = false # read by the autoscaler from the group, not needed on instances
  }
}
