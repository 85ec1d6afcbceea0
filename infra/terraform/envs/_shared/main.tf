# One environment of the amalia-vl platform (envs/dev, envs/prod link these files): network, EKS with CPU system nodes and GPU
# pools, data buckets, the MLflow/Prefect database, application secrets and the IRSA roles,
# wired together.
# envs/dev and envs/prod are the same wiring; what differs between them is in their tfvars.

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({
      project     = var.project
      environment = var.environment
      managed-by  = "terraform"
      source      = "infra/terraform/envs/${var.environment}"
    }, var.tags)
  }
}

locals {
  name = "${var.project}-${var.environment}"
}

module "network" {
  source = "../../modules/network"

  name                    = local.name
  vpc_cidr                = var.vpc_cidr
  availability_zones      = var.availability_zones
  single_nat_gateway      = var.single_nat_gateway
  cluster_name            = local.name
  flow_log_retention_days = var.log_retention_days
}

module "cluster" {
  source = "../../modules/cluster"

  name                         = local.name
  kubernetes_version           = var.kubernetes_version
  subnet_ids                   = module.network.private_subnet_ids
  endpoint_public_access       = var.cluster_endpoint_public_access
  endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  log_retention_days           = var.log_retention_days
  system_node_group            = var.system_node_group
  cluster_admin_arns           = var.cluster_admin_arns
}

module "gpu_node_pools" {
  source = "../../modules/gpu_node_pools"

  cluster_name  = module.cluster.cluster_name
  node_role_arn = module.cluster.node_role_arn
  subnet_ids    = module.network.private_subnet_ids
  pools         = var.gpu_pools
}

module "storage" {
  source = "../../modules/storage"

  name                               = local.name
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  access_log_retention_days          = var.access_log_retention_days
  force_destroy                      = var.storage_force_destroy
}

module "database" {
  source = "../../modules/database"

  name                       = local.name
  environment                = var.environment
  vpc_id                     = module.network.vpc_id
  subnet_ids                 = module.network.private_subnet_ids
  allowed_security_group_ids = [module.cluster.cluster_security_group_id]
  engine_version             = var.db_engine_version
  instance_class             = var.db_instance_class
  allocated_storage_gib      = var.db_allocated_storage_gib
  max_allocated_storage_gib  = var.db_max_allocated_storage_gib
  multi_az                   = var.db_multi_az
  backup_retention_days      = var.db_backup_retention_days
  deletion_protection        = var.db_deletion_protection
  log_retention_days         = var.log_retention_days
}

module "app_secrets" {
  source = "../../modules/app_secrets"

  name = local.name
}

module "iam" {
  source = "../../modules/iam"

  name                   = local.name
  cluster_name           = module.cluster.cluster_name
  cluster_arn            = module.cluster.cluster_arn
  oidc_provider_arn      = module.cluster.oidc_provider_arn
  oidc_issuer_url        = module.cluster.oidc_issuer_url
  dvc_bucket_arn         = module.storage.dvc_bucket_arn
  mlflow_bucket_arn      = module.storage.mlflow_bucket_arn
  mlflow_artifact_prefix = var.mlflow_artifact_prefix
  data_kms_key_arn       = module.storage.kms_key_arn
  secret_arns = concat(
    [module.database.master_user_secret_arn],
    values(module.app_secrets.secret_arns),
    var.extra_secret_arns,
  )
  secret_kms_key_arns = [module.database.kms_key_arn, module.app_secrets.kms_key_arn]
}
