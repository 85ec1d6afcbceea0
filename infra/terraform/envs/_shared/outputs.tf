# Outputs of an environment root (envs/<env>/ links this file), consumed by the Kubernetes layer: the infra/k8s overlay of this
# environment takes them from `terraform output -json` (run in this directory) for
#   - kubeconfig / cluster access            cluster_name, cluster_endpoint, cluster_certificate_authority_data
#   - ServiceAccount eks.amazonaws.com/role-arn annotations
#                                            training_role_arn, mlflow_role_arn, prefect_worker_role_arn,
#                                            external_secrets_role_arn, cluster_autoscaler_role_arn
#   - ExternalSecret remoteRef keys          db_master_user_secret_arn, app_secret_names
#   - NetworkPolicy egress to PostgreSQL     vpc_cidr
#   - MLflow server and Prefect server DB    db_address, db_port, db_name
#   - MLflow --artifacts-destination, DVC    mlflow_artifacts_destination, dvc_remote_url
#   - Job nodeSelector / tolerations         gpu_pool_node_selectors, gpu_taint
# Renaming an output here breaks those overlays: change both together.

output "region" {
  description = "AWS region of the environment."
  value       = var.region
}

output "vpc_cidr" {
  description = "IPv4 CIDR of the VPC (NetworkPolicy egress to the database, which lives in it)."
  value       = module.network.vpc_cidr
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = module.cluster.cluster_name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint (private unless cluster_endpoint_public_access)."
  value       = module.cluster.cluster_endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the Kubernetes API."
  value       = module.cluster.cluster_certificate_authority_data
}

output "cluster_oidc_issuer_url" {
  description = "OIDC issuer of the cluster that the IRSA roles trust."
  value       = module.cluster.oidc_issuer_url
}

output "gpu_pool_node_selectors" {
  description = "nodeSelector per GPU pool, e.g. h100 = {\"amalia-vl/pool\" = \"h100\"} (gpu-job-template.json node_selector)."
  value       = module.gpu_node_pools.node_selectors
}

output "gpu_taint" {
  description = "Taint of every GPU node (tolerate with key nvidia.com/gpu, operator Exists, effect NoSchedule)."
  value       = module.gpu_node_pools.gpu_taint
}

output "dvc_bucket_name" {
  description = "Bucket of the DVC remote."
  value       = module.storage.dvc_bucket_name
}

output "dvc_remote_url" {
  description = "DVC remote URL (dvc remote add -d s3 <url>)."
  value       = "s3://${module.storage.dvc_bucket_name}"
}

output "mlflow_artifact_bucket_name" {
  description = "Bucket of the MLflow artifact store."
  value       = module.storage.mlflow_bucket_name
}

output "mlflow_artifacts_destination" {
  description = "MLflow server --artifacts-destination; training Jobs may write under it directly."
  value       = "s3://${module.storage.mlflow_bucket_name}/${var.mlflow_artifact_prefix}"
}

output "db_address" {
  description = "Private DNS name of the PostgreSQL instance (MLflow and Prefect backend stores)."
  value       = module.database.address
}

output "db_port" {
  description = "PostgreSQL port."
  value       = module.database.port
}

output "db_name" {
  description = "Database created with the instance (MLflow's); the Prefect database is created beside it."
  value       = module.database.database_name
}

output "db_master_user_secret_arn" {
  description = "Secrets Manager secret with the database master credentials (JSON username/password), rotated by RDS."
  value       = module.database.master_user_secret_arn
}

output "app_secret_names" {
  description = "Secrets Manager names of the application secrets (e.g. mlflow/server => amalia-vl-prod/mlflow/server); operators set their values."
  value       = module.app_secrets.secret_names
}

output "app_secret_arns" {
  description = "ARNs of the application secrets, which External Secrets may read."
  value       = module.app_secrets.secret_arns
}

output "training_role_arn" {
  description = "IRSA role of the training Jobs' service account (amalia-vl/amalia-vl-worker)."
  value       = module.iam.role_arns["training"]
}

output "mlflow_role_arn" {
  description = "IRSA role of the MLflow server's service account."
  value       = module.iam.role_arns["mlflow"]
}

output "prefect_worker_role_arn" {
  description = "IRSA role of the Prefect Kubernetes worker's service account."
  value       = module.iam.role_arns["prefect_worker"]
}

output "external_secrets_role_arn" {
  description = "IRSA role of the External Secrets operator's service account."
  value       = module.iam.role_arns["external_secrets"]
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role of the cluster autoscaler's service account (scales GPU pools from zero)."
  value       = module.iam.role_arns["autoscaler"]
}

output "service_accounts" {
  description = "Namespace and name of the service account each role trusts (keys as in the *_role_arn outputs)."
  value       = module.iam.service_accounts
}
