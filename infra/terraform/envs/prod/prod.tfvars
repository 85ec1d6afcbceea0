# prod: a NAT gateway per AZ, multi-AZ database with deletion protection, private API only,
# on-demand H100s for the main runs plus spot A100 / L40S pools, all scaling to zero.
# terraform plan -var-file=prod.tfvars

environment = "prod"
region      = "eu-north-1"
# GPU capacity differs per AZ: check `aws ec2 describe-instance-type-offerings
# --location-type availability-zone --filters Name=instance-type,Values=p5.48xlarge`.
availability_zones = ["eu-north-1a", "eu-north-1b", "eu-north-1c"]
vpc_cidr           = "10.50.0.0/16"
single_nat_gateway = false

kubernetes_version             = "1.34"
cluster_endpoint_public_access = false

system_node_group = {
  instance_types = ["m7i.2xlarge", "m6i.2xlarge"]
  min_size       = 3
  max_size       = 6
  desired_size   = 3
}

gpu_pools = {
  h100 = {
    instance_types = ["p5.48xlarge"]
    gpus_per_node  = 8
    capacity_type  = "ON_DEMAND"
    min_size       = 0
    max_size       = 4
    disk_size_gib  = 1000
  }
  a100 = {
    instance_types = ["p4d.24xlarge"]
    gpus_per_node  = 8
    capacity_type  = "SPOT"
    min_size       = 0
    max_size       = 4
    disk_size_gib  = 1000
  }
  l40s = {
    instance_types = ["g6e.48xlarge"]
    gpus_per_node  = 8
    capacity_type  = "SPOT"
    min_size       = 0
    max_size       = 2
  }
}

log_retention_days                 = 365
noncurrent_version_expiration_days = 90
access_log_retention_days          = 365
storage_force_destroy              = false

db_engine_version            = "17"
db_instance_class            = "db.r7g.large"
db_allocated_storage_gib     = 100
db_max_allocated_storage_gib = 1000
db_multi_az                  = true
db_backup_retention_days     = 30
db_deletion_protection       = true

mlflow_artifact_prefix = "artifacts"
