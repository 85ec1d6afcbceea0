# dev: one NAT gateway, single-AZ database without deletion protection, small spot GPU pools.
# terraform plan -var-file=dev.tfvars

environment = "dev"
region      = "eu-north-1"
# GPU capacity differs per AZ: check `aws ec2 describe-instance-type-offerings
# --location-type availability-zone --filters Name=instance-type,Values=p5.48xlarge`.
availability_zones = ["eu-north-1a", "eu-north-1b", "eu-north-1c"]
vpc_cidr           = "10.40.0.0/16"
single_nat_gateway = true

kubernetes_version = "1.34"
# Reach the API from the VPC (VPN/bastion). To open it to an office range instead:
# cluster_endpoint_public_access       = true
# cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]
cluster_endpoint_public_access = false

system_node_group = {
  instance_types = ["m7i.xlarge", "m6i.xlarge"]
  min_size       = 2
  max_size       = 4
  desired_size   = 2
}

# Both pools scale to zero; spot is fine for dev runs (checkpoints make them resumable).
gpu_pools = {
  h100 = {
    instance_types = ["p5.48xlarge"]
    gpus_per_node  = 8
    capacity_type  = "SPOT"
    min_size       = 0
    max_size       = 1
  }
  l40s = {
    instance_types = ["g6e.12xlarge"]
    gpus_per_node  = 4
    capacity_type  = "SPOT"
    min_size       = 0
    max_size       = 2
  }
}

log_retention_days                 = 365
noncurrent_version_expiration_days = 30
access_log_retention_days          = 90
storage_force_destroy              = false

db_engine_version            = "17"
db_instance_class            = "db.t4g.medium"
db_allocated_storage_gib     = 20
db_max_allocated_storage_gib = 100
db_multi_az                  = false
db_backup_retention_days     = 7
db_deletion_protection       = false

mlflow_artifact_prefix = "artifacts"
